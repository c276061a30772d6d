"""CRD validation rules (`x-kubernetes-validations`), evaluated as the API server evaluates them
on create.

The evaluator is cel-python (`celpy`, PyPI `cel-python`), a complete CEL implementation, with
the few functions of the Kubernetes CEL libraries that the CRDs at hand use added here
(`split` and `substring` of the strings extension, `isIP` of the IP library). A rule that calls
any other function the environment lacks is reported as a finding, never passed.

What the API server does, and this module does the same (kubernetes
staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel/validation.go, `validate`
and `validateExpressions`; structural defaulting in .../schema/defaulting/algorithm.go):
- defaults from the schema are applied before validation;
- a rule is evaluated where its schema node has a value, with `self` bound to that value;
  rules of absent optional fields are not evaluated;
- transition rules (those that use `oldSelf`) are evaluated only on update, when there is an
  old object ("transition rules are evaluated only if there is a comparable existing value");
  the suite models create, so they are skipped;
- the failure message is `message` (or the rule text), placed at the node's path plus
  `fieldPath`.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
from dataclasses import dataclass
from typing import Any, Iterator

import celpy
from celpy import celtypes


def _split(value: Any, sep: Any, limit: Any = None) -> Any:
    parts = str(value).split(str(sep)) if limit is None or int(limit) < 0 else str(value).split(str(sep), max(int(limit) - 1, 0))
    return celtypes.ListType([celtypes.StringType(p) for p in parts])


def _substring(value: Any, start: Any, end: Any = None) -> Any:
    text = str(value)
    return celtypes.StringType(text[int(start):] if end is None else text[int(start):int(end)])


def _is_ip(value: Any) -> Any:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _lower_ascii(value: Any) -> Any:
    return celtypes.StringType(str(value).lower())


# Kubernetes CEL library functions implemented here (the names the CRDs at hand call).
KUBERNETES_FUNCTIONS = {
    "split": _split,
    "substring": _substring,
    "isIP": _is_ip,
    "lowerAscii": _lower_ascii,
}


@dataclass(frozen=True)
class RuleFailure:
    """One rule that evaluated to false (or could not be evaluated)."""

    path: str
    message: str


@functools.lru_cache(maxsize=None)
def _environment() -> celpy.Environment:
    return celpy.Environment()


@functools.lru_cache(maxsize=4096)
def _program(rule: str) -> Any:
    env = _environment()
    return env.program(env.compile(rule), functions=KUBERNETES_FUNCTIONS)


def _uses_old_self(rule: str) -> bool:
    return "oldSelf" in rule


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: missing fields of present objects get their schema `default`."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        out = dict(value)
        for key, sub in props.items():
            if key not in out and isinstance(sub, dict) and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = apply_defaults(sub, out[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in out:
                if key not in props:
                    out[key] = apply_defaults(extra, out[key])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def _evaluate(rule: dict[str, Any], value: Any, path: str) -> RuleFailure | None:
    text = str(rule.get("rule", ""))
    if not text or _uses_old_self(text):
        return None
    where = path + str(rule.get("fieldPath") or "")
    try:
        result = _program(text).evaluate({"self": celpy.json_to_cel(value)})
    except Exception as err:  # celpy raises its own and lark's exception types
        return RuleFailure(where or ".", f"validation rule {text!r} could not be evaluated: {_short(err)}")
    if isinstance(result, celpy.CELEvalError):
        return RuleFailure(where or ".", f"validation rule {text!r} could not be evaluated: {_short(result)}")
    if result is True or (isinstance(result, celtypes.BoolType) and bool(result)):
        return None
    message = rule.get("message") or f"failed rule: {text}"
    return RuleFailure(where or ".", str(message))


def _short(err: Any) -> str:
    args = getattr(err, "args", None) or (str(err),)
    text = str(args[0])
    if "undeclared reference to" in text:
        name = text.split("undeclared reference to", 1)[1].split("(", 1)[0].strip().strip("'")
        return f"the function or variable {name!r} is not in the suite's CEL environment (cel_rules.KUBERNETES_FUNCTIONS)"
    return text.splitlines()[0][:200]


def failures(schema: dict[str, Any], value: Any, path: str = "") -> Iterator[RuleFailure]:
    """Every rule of `schema` (an openAPIV3Schema with its x-kubernetes-validations) that `value`
    (already defaulted) fails."""
    if not isinstance(schema, dict):
        return
    for rule in schema.get("x-kubernetes-validations") or []:
        failure = _evaluate(rule, value, path)
        if failure:
            yield failure
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key in value and value[key] is not None:
                yield from failures(sub, value[key], f"{path}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                if key not in props and item is not None:
                    yield from failures(extra, item, f"{path}[{key!r}]")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            if item is not None:
                yield from failures(schema["items"], item, f"{path}[{index}]")


def rules_count(schema: Any) -> int:
    """How many validation rules a schema holds (for the report)."""
    if isinstance(schema, dict):
        return len(schema.get("x-kubernetes-validations") or []) + sum(rules_count(v) for v in schema.values())
    if isinstance(schema, list):
        return sum(rules_count(v) for v in schema)
    return 0
