"""The subset of Terraform the machine-configuration patches go through, evaluated offline.

Two parts, both strict (anything outside the subset is an error naming file, line and what is
unsupported, never a silent guess):

- ``render_template``: Terraform's ``templatefile`` for templates that use only ``${name}`` and
  ``${jsonencode(name)}``. Directives (``%{ ... }``), escapes (``$${``, ``%%{``), strip markers
  (``~``) and every other expression are refused: the templates in terraform/patches/ do not need
  them, and a test cannot vouch for what it does not implement.
- ``Evaluator``: the HCL expressions ``terraform/main.tf`` uses to build the patches' inputs:
  literals, string templates, ``var.*`` (defaults from variables.tf, overridable), ``local.*``
  (evaluated lazily, so locals that read resources are never touched), ``path.module``,
  conditionals, ``==``/``!=``, ``!``/``&&``/``||`` (bool operands only, as Terraform: anything
  else is "Unsuitable value … bool required"), ``[for x in xs : expr]``, the functions listed in FUNCTIONS, and
  ``TYPE.NAME.ATTR`` of a resource whose values are known only after apply: the caller gives
  them (``resources``), as a plan would show them once applied; an attribute not given is an
  error naming it.

Behaviour follows Terraform 1.11 (the version .mise.toml pins): interpolating a number or bool
renders it as a string and a list or object is an error ("Cannot include the given value in a
string template: string required"); ``templatefile`` fails when the template references a name
the vars map does not hold ("vars map does not contain key"); ``jsonencode`` writes object keys
sorted and escapes ``<``, ``>``, ``&``, U+2028 and U+2029 as Go's encoding/json does.
``yamlencode`` is compared by meaning only (its output is parsed again before any check).
Where the real ``terraform`` binary is installed, test_talos_config.py renders the same templates
with it and compares.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import hcl2
import yaml


class TfError(Exception):
    """A Terraform-subset error: where (file:line) and what."""


# ----------------------------------------------------------------------------- jsonencode


def _json_string(s: str) -> str:
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or ch in "<>&" or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def jsonencode(value: Any) -> str:
    """Terraform's jsonencode: compact, object keys sorted, Go's string escaping."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            raise TfError(f"jsonencode: {value} is not a number JSON can hold")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, list):
        return "[" + ",".join(jsonencode(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json_string(k)}:{jsonencode(value[k])}" for k in sorted(value)) + "}"
    raise TfError(f"jsonencode: unsupported value {value!r}")


def yamlencode(value: Any) -> str:
    """Same meaning as Terraform's yamlencode (the bytes differ; callers parse it again)."""
    return yaml.safe_dump(value, sort_keys=True, default_flow_style=False, allow_unicode=True)


def _template_string(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return jsonencode(value)
    if isinstance(value, str):
        return value
    if value is None:
        raise TfError(f"{where}: the value is null; Terraform refuses a null in a string template")
    raise TfError(f"{where}: Cannot include the given value in a string template: string required (got {type(value).__name__})")


# ----------------------------------------------------------------------------- templatefile

_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_PLAIN = re.compile(rf"^\s*({_NAME})\s*$")
_JSONENCODE = re.compile(rf"^\s*jsonencode\(\s*({_NAME})\s*\)\s*$")


@dataclass
class Rendered:
    text: str
    used: set[str]


def render_template(path: Path, variables: dict[str, Any], *, label: str | None = None) -> str:
    """templatefile(path, variables) for the strict subset described in the module docstring."""
    label = label or str(path)
    text = path.read_text()
    rendered = _render(text, variables, label)
    unused = sorted(set(variables) - rendered.used)
    if unused:
        # Terraform ignores unused keys; here they are a mistake worth naming.
        raise TfError(f"{label}: variables passed but never used by the template: {', '.join(unused)}")
    return rendered.text


def _line(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _render(text: str, variables: dict[str, Any], label: str) -> Rendered:
    out: list[str] = []
    used: set[str] = set()
    i = 0
    while True:
        dollar = text.find("${", i)
        percent = text.find("%{", i)
        candidates = [p for p in (dollar, percent) if p != -1]
        if not candidates:
            out.append(text[i:])
            break
        start = min(candidates)
        where = f"{label}:{_line(text, start)}"
        if start > 0 and text[start - 1] == text[start]:
            raise TfError(f"{where}: escape sequence {text[start - 1:start + 2]!r} is not in the supported template subset")
        if start == percent:
            raise TfError(f"{where}: template directive %{{ ... }} is not in the supported template subset (only ${{name}} and ${{jsonencode(name)}})")
        end = text.find("}", start + 2)
        if end == -1:
            raise TfError(f"{where}: unterminated template interpolation")
        inner = text[start + 2:end]
        if "{" in inner:
            raise TfError(f"{where}: nested braces in ${{{inner}}} are not in the supported template subset")
        if inner.startswith("~") or inner.endswith("~"):
            raise TfError(f"{where}: strip marker in ${{{inner}}} is not in the supported template subset")
        out.append(text[i:start])
        if m := _PLAIN.match(inner):
            name = m.group(1)
            out.append(_template_string(_lookup(variables, name, where), where))
        elif m := _JSONENCODE.match(inner):
            name = m.group(1)
            out.append(jsonencode(_lookup(variables, name, where)))
        else:
            raise TfError(f"{where}: ${{{inner}}} is not in the supported template subset (only ${{name}} and ${{jsonencode(name)}})")
        used.add(name)
        i = end + 1
    return Rendered("".join(out), used)


def _lookup(variables: dict[str, Any], name: str, where: str) -> Any:
    if name not in variables:
        raise TfError(f'{where}: Invalid function argument: vars map does not contain key "{name}"')
    return variables[name]


# ----------------------------------------------------------------------------- HCL expressions

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>\d+(\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_-]*)
  | (?P<op>==|!=|&&|\|\||[?:.,()\[\]{}=!<>+*/%-])
  | (?P<quote>")
    """,
    re.X,
)


@dataclass
class Tok:
    kind: str
    value: Any
    pos: int


def _scan_string(src: str, pos: int, where: str) -> tuple[list[Any], int]:
    """A quoted template starting after the opening quote: literal parts and ('expr', text)."""
    parts: list[Any] = []
    buf: list[str] = []
    i = pos
    while i < len(src):
        ch = src[i]
        if ch == '"':
            parts.append("".join(buf))
            return parts, i + 1
        if ch == "\\":
            nxt = src[i + 1:i + 2]
            mapping = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
            if nxt in mapping:
                buf.append(mapping[nxt])
                i += 2
                continue
            raise TfError(f"{where}: escape \\{nxt} is not in the supported subset")
        if src.startswith("${", i):
            parts.append("".join(buf))
            buf = []
            depth = 0
            j = i + 2
            in_str = False
            while j < len(src):
                c = src[j]
                if in_str:
                    if c == "\\":
                        j += 2
                        continue
                    if c == '"':
                        in_str = False
                elif c == '"':
                    in_str = True
                elif c == "{":
                    depth += 1
                elif c == "}":
                    if depth == 0:
                        break
                    depth -= 1
                j += 1
            else:
                raise TfError(f"{where}: unterminated interpolation in a string")
            parts.append(("expr", src[i + 2:j]))
            i = j + 1
            continue
        if src.startswith("%{", i):
            raise TfError(f"{where}: template directives in strings are not in the supported subset")
        buf.append(ch)
        i += 1
    raise TfError(f"{where}: unterminated string")


def _tokenize(src: str, where: str) -> list[Tok]:
    toks: list[Tok] = []
    i = 0
    while i < len(src):
        m = _TOKEN.match(src, i)
        if not m:
            raise TfError(f"{where}: unexpected {src[i:i + 20]!r} in expression")
        kind = m.lastgroup
        if kind == "ws":
            i = m.end()
            continue
        if kind == "quote":
            parts, i = _scan_string(src, m.end(), where)
            toks.append(Tok("string", parts, m.start()))
            continue
        value: Any = m.group(kind)
        if kind == "number":
            value = float(value) if "." in value else int(value)
        toks.append(Tok(kind, value, m.start()))
        i = m.end()
    toks.append(Tok("eof", None, len(src)))
    return toks


FUNCTIONS: dict[str, Callable[..., Any]] = {}


class Evaluator:
    """Evaluates main.tf's locals with the given variables (defaults from variables.tf)."""

    def __init__(
        self,
        terraform_dir: Path,
        overrides: dict[str, Any] | None = None,
        resources: dict[str, dict[str, Any]] | None = None,
    ):
        self.dir = terraform_dir
        self.variables: dict[str, Any] = {}
        # "TYPE.NAME" -> attributes, for resources the evaluated expressions read.
        self.resources: dict[str, dict[str, Any]] = dict(resources or {})
        self.locals_src: dict[str, tuple[Any, str]] = {}
        self._locals: dict[str, Any] = {}
        self._evaluating: set[str] = set()
        # Every templatefile(path, vars) evaluated, in order (for the cross-check with terraform).
        self.template_calls: list[tuple[Path, dict[str, Any]]] = []
        for path in sorted(terraform_dir.glob("*.tf")):
            doc = hcl2.loads(path.read_text())
            for block in doc.get("variable", []):
                for name, body in block.items():
                    name = name.strip('"')
                    if "default" in body:
                        self.variables[name] = self._literal(body["default"], f"{path.name}: variable {name}")
            for block in doc.get("locals", []):
                for name, value in block.items():
                    if not name.startswith("__"):
                        self.locals_src[name] = (value, f"{path.name}: local {name}")
        self.variables.update(overrides or {})

    # -- values as python-hcl2 gives them

    def _literal(self, value: Any, where: str) -> Any:
        return self._value(value, where)

    def _value(self, value: Any, where: str) -> Any:
        if isinstance(value, dict):
            return {k.strip('"'): self._value(v, f"{where}.{k}") for k, v in value.items() if not k.startswith("__")}
        if isinstance(value, list):
            return [self._value(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str):
            return self.expression(value, where)
        return value

    def expression(self, text: str, where: str) -> Any:
        """A python-hcl2 string: `${expr}` for an expression, `"..."` for a string template."""
        stripped = text.strip()
        if stripped.startswith("${") and stripped.endswith("}") and _single_interpolation(stripped):
            return self._parse_eval(stripped[2:-1], where)
        if stripped.startswith('"') and stripped.endswith('"'):
            return self._parse_eval(stripped, where)
        return self._parse_eval(stripped, where)

    def _parse_eval(self, src: str, where: str) -> Any:
        parser = _Parser(_tokenize(src, where), where, self)
        value = parser.expr()
        parser.expect("eof")
        return value

    def local(self, name: str) -> Any:
        if name in self._locals:
            return self._locals[name]
        if name not in self.locals_src:
            raise TfError(f"local.{name} is not declared in {self.dir}")
        if name in self._evaluating:
            raise TfError(f"local.{name} refers to itself")
        self._evaluating.add(name)
        value, where = self.locals_src[name]
        self._locals[name] = self._value(value, where)
        self._evaluating.discard(name)
        return self._locals[name]

    def var(self, name: str, where: str) -> Any:
        if name not in self.variables:
            raise TfError(f"{where}: var.{name} has no default and no value was given")
        return self.variables[name]

    def resource(self, address: str, attr: str, where: str) -> Any:
        attrs = self.resources.get(address)
        if attrs is None or attr not in attrs:
            raise TfError(f"{where}: {address}.{attr} is known only after apply and no value was given for it")
        return attrs[attr]


def _single_interpolation(s: str) -> bool:
    depth = 0
    in_str = False
    i = 2
    while i < len(s):
        c = s[i]
        if in_str:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                return i == len(s) - 1
            depth -= 1
        i += 1
    return False


class _Parser:
    def __init__(self, toks: list[Tok], where: str, ev: Evaluator):
        self.toks = toks
        self.i = 0
        self.where = where
        self.ev = ev
        self.scope: list[dict[str, Any]] = []

    # -- token helpers

    def peek(self, offset: int = 0) -> Tok:
        return self.toks[self.i + offset]

    def take(self) -> Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def at(self, kind: str, value: Any = None) -> bool:
        tok = self.peek()
        return tok.kind == kind and (value is None or tok.value == value)

    def expect(self, kind: str, value: Any = None) -> Tok:
        if not self.at(kind, value):
            tok = self.peek()
            raise TfError(f"{self.where}: expected {value or kind}, found {tok.value!r}")
        return self.take()

    # -- grammar (evaluating as it parses; a skipped branch is parsed with evaluation off)

    def expr(self, live: bool = True) -> Any:
        cond = self.or_(live)
        if self.at("op", "?"):
            self.take()
            if not live:
                self.expr(False)
                self.expect("op", ":")
                self.expr(False)
                return None
            if not isinstance(cond, bool):
                raise TfError(f"{self.where}: condition is not a bool: {cond!r}")
            a = self.expr(cond)
            self.expect("op", ":")
            b = self.expr(not cond)
            return a if cond else b
        return cond

    def boolean(self, value: Any, operand: str, op: str, live: bool) -> Any:
        """Terraform's logical operators take bools only (no truthiness, no null)."""
        if live and not isinstance(value, bool):
            raise TfError(f"{self.where}: Unsuitable value for {operand} of {op}: bool required (got {value!r})")
        return value

    def or_(self, live: bool) -> Any:
        value = self.and_(live)
        while self.at("op", "||"):
            self.take()
            left = self.boolean(value, "left operand", "||", live)
            right = self.boolean(self.and_(live), "right operand", "||", live)
            value = (left or right) if live else None
        return value

    def and_(self, live: bool) -> Any:
        value = self.eq(live)
        while self.at("op", "&&"):
            self.take()
            left = self.boolean(value, "left operand", "&&", live)
            right = self.boolean(self.eq(live), "right operand", "&&", live)
            value = (left and right) if live else None
        return value

    def eq(self, live: bool) -> Any:
        value = self.unary(live)
        while self.at("op", "==") or self.at("op", "!="):
            op = self.take().value
            right = self.unary(live)
            if live:
                value = (value == right) if op == "==" else (value != right)
        return value

    def unary(self, live: bool) -> Any:
        if self.at("op", "!"):
            self.take()
            value = self.boolean(self.unary(live), "the operand", "!", live)
            return (not value) if live else None
        return self.postfix(live)

    def postfix(self, live: bool) -> Any:
        value = self.primary(live)
        while True:
            if self.at("op", ".") and self.peek(1).kind == "ident":
                self.take()
                attr = self.take().value
                if live:
                    if not isinstance(value, dict) or attr not in value:
                        raise TfError(f"{self.where}: no attribute {attr!r}")
                    value = value[attr]
            elif self.at("op", "["):
                self.take()
                index = self.expr(live)
                self.expect("op", "]")
                if live:
                    try:
                        value = value[index]
                    except (KeyError, IndexError, TypeError) as err:
                        raise TfError(f"{self.where}: invalid index {index!r}") from err
            else:
                return value

    def primary(self, live: bool) -> Any:
        tok = self.take()
        if tok.kind == "number":
            return tok.value
        if tok.kind == "string":
            return self.template(tok.value, live)
        if tok.kind == "op" and tok.value == "(":
            value = self.expr(live)
            self.expect("op", ")")
            return value
        if tok.kind == "op" and tok.value == "[":
            return self.tuple_(live)
        if tok.kind == "op" and tok.value == "{":
            return self.object_(live)
        if tok.kind == "ident":
            name = tok.value
            if name in ("true", "false"):
                return name == "true"
            if name == "null":
                return None
            if self.at("op", "("):
                return self.call(name, live)
            for frame in reversed(self.scope):
                if name in frame:
                    return frame[name]
            if name in ("var", "local", "path"):
                self.expect("op", ".")
                attr = self.expect("ident").value
                if not live:
                    return None
                if name == "var":
                    return self.ev.var(attr, self.where)
                if name == "local":
                    return self.ev.local(attr)
                if attr == "module":
                    return str(self.ev.dir)
                raise TfError(f"{self.where}: path.{attr} is not supported")
            if self.at("op", ".") and self.peek(1).kind == "ident" and self.peek(2).kind == "op" and self.peek(2).value == "." and self.peek(3).kind == "ident":
                self.take()
                resource_name = self.take().value
                self.take()
                attr = self.take().value
                return self.ev.resource(f"{name}.{resource_name}", attr, self.where) if live else None
            if not live:
                return None
            raise TfError(f"{self.where}: reference {name!r} is not in the supported subset (var, local, path.module, TYPE.NAME.ATTR)")
        raise TfError(f"{self.where}: unexpected {tok.value!r}")

    def template(self, parts: list[Any], live: bool) -> Any:
        out = []
        for part in parts:
            if isinstance(part, tuple):
                inner = _Parser(_tokenize(part[1], self.where), self.where, self.ev)
                inner.scope = self.scope
                value = inner.expr(live)
                inner.expect("eof")
                if live:
                    out.append(_template_string(value, self.where))
            else:
                out.append(part)
        return "".join(out) if live else None

    def tuple_(self, live: bool) -> Any:
        if self.at("ident", "for"):
            return self.for_(live)
        items = []
        while not self.at("op", "]"):
            items.append(self.expr(live))
            if self.at("op", ","):
                self.take()
            elif not self.at("op", "]"):
                raise TfError(f"{self.where}: expected , or ] in a tuple")
        self.take()
        return items if live else None

    def for_(self, live: bool) -> Any:
        self.expect("ident", "for")
        name = self.expect("ident").value
        if self.at("op", ","):
            raise TfError(f"{self.where}: two-variable for expressions are not in the supported subset")
        self.expect("ident", "in")
        collection = self.expr(live)
        self.expect("op", ":")
        start = self.i
        results = []
        items = collection if live else [None]
        if live and not isinstance(collection, list):
            raise TfError(f"{self.where}: for over a non-list is not in the supported subset")
        for item in items or [None]:
            self.i = start
            self.scope.append({name: item})
            value = self.expr(live and bool(items))
            keep = True
            if self.at("ident", "if"):
                self.take()
                keep = self.expr(live and bool(items))
            self.scope.pop()
            if live and items and keep:
                results.append(value)
        self.expect("op", "]")
        return results if live else None

    def object_(self, live: bool) -> Any:
        obj: dict[str, Any] = {}
        while not self.at("op", "}"):
            key_tok = self.take()
            if key_tok.kind == "ident":
                key = key_tok.value
            elif key_tok.kind == "string" and all(isinstance(p, str) for p in key_tok.value):
                key = "".join(key_tok.value)
            else:
                raise TfError(f"{self.where}: object key {key_tok.value!r} is not in the supported subset")
            if not (self.at("op", "=") or self.at("op", ":")):
                raise TfError(f"{self.where}: expected = after object key {key!r}")
            self.take()
            obj[key] = self.expr(live)
            if self.at("op", ","):
                self.take()
        self.take()
        return obj if live else None

    def call(self, name: str, live: bool) -> Any:
        self.expect("op", "(")
        args = []
        while not self.at("op", ")"):
            args.append(self.expr(live))
            if self.at("op", ","):
                self.take()
            elif not self.at("op", ")"):
                raise TfError(f"{self.where}: expected , or ) in the arguments of {name}()")
        self.take()
        if not live:
            return None
        if name not in FUNCTIONS:
            raise TfError(f"{self.where}: function {name}() is not in the supported subset ({', '.join(sorted(FUNCTIONS))})")
        return FUNCTIONS[name](self, *args)


def _templatefile(parser: _Parser, path: str, variables: dict[str, Any]) -> str:
    p = Path(path)
    label = str(p.relative_to(parser.ev.dir.parent)) if p.is_relative_to(parser.ev.dir.parent) else str(p)
    parser.ev.template_calls.append((p, dict(variables)))
    return render_template(p, variables, label=label)


def _file(parser: _Parser, path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as err:
        raise TfError(f"{parser.where}: file({path!r}): {err}") from err


FUNCTIONS.update(
    {
        "templatefile": _templatefile,
        "file": _file,
        "yamldecode": lambda _p, s: yaml.safe_load(s),
        "jsonencode": lambda _p, v: jsonencode(v),
        "yamlencode": lambda _p, v: yamlencode(v),
        "lower": lambda _p, s: s.lower(),
        "trimspace": lambda _p, s: s.strip(" \t\n\r\v\f"),
    }
)
