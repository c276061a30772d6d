"""Flux's post-build variable substitution (`spec.postBuild`), as kustomize-controller does it.

Upstream (fluxcd/pkg): kustomize/kustomize_varsub.go `SubstituteVariables` serialises each
built object to YAML, skips objects labelled or annotated
`kustomize.toolkit.fluxcd.io/substitute: disabled`, loads the variables from every
`substituteFrom` ConfigMap/Secret (in the Kustomization's namespace; a missing one fails the
apply unless `optional`), then the inline `substitute` map over them, and runs envsubst only
when at least one variable is defined (`substituteStrategy: Always` forces it). Without the
StrictPostBuildSubstitutions feature gate a variable that is not defined becomes the empty
string (`varSubstitution`). envsubst (envsubst/README.md) only knows the `${var}` form; `$${`
escapes.

The suite supports `${var}`, `${var:-default}`, `${var:=default}`, `${var-default}` and
`${var=default}`. Any other operator is reported, and so is every variable that is not defined:
Flux would silently write an empty string there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

DISABLED_KEY = "kustomize.toolkit.fluxcd.io/substitute"
VAR_NAME = re.compile(r"^[_A-Za-z][_A-Za-z0-9]*$")
EXPRESSION = re.compile(r"\$\$\{|\$\{([^}]*)\}")
SIMPLE = re.compile(r"^(?P<name>[_A-Za-z][_A-Za-z0-9]*)(?:(?P<op>:-|:=|-|=)(?P<default>.*))?$")


@dataclass
class Outcome:
    body: dict[str, Any]
    undefined: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)


def _expand(text: str, variables: dict[str, str], outcome: Outcome) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        inner = match.group(1)
        parsed = SIMPLE.match(inner)
        if not parsed:
            outcome.unsupported.append("${" + inner + "}")
            return match.group(0)
        name, op, default = parsed.group("name"), parsed.group("op"), parsed.group("default")
        value = variables.get(name)
        if op in (":-", ":=") and not value:
            return default or ""
        if op in ("-", "=") and value is None:
            return default or ""
        if value is None:
            outcome.undefined.append(name)
            return ""
        return value

    return EXPRESSION.sub(replace, text)


def substitute(body: dict[str, Any], variables: dict[str, str], always: bool = False) -> Outcome:
    meta = body.get("metadata") or {}
    if (meta.get("labels") or {}).get(DISABLED_KEY) == "disabled" or (meta.get("annotations") or {}).get(DISABLED_KEY) == "disabled":
        return Outcome(body)
    if not variables and not always:
        return Outcome(body)
    outcome = Outcome(body)
    text = yaml.safe_dump(body, sort_keys=False, width=1 << 20)
    expanded = _expand(text, variables, outcome)
    loaded = yaml.safe_load(expanded)
    outcome.body = loaded if isinstance(loaded, dict) else body
    return outcome


def references(body: dict[str, Any]) -> list[str]:
    """Every `${...}` expression left in an object (for objects no Kustomization substitutes)."""
    text = yaml.safe_dump(body, sort_keys=False, width=1 << 20)
    return ["${" + m.group(1) + "}" for m in EXPRESSION.finditer(text) if m.group(0) != "$${"]
