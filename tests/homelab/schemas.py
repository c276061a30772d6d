"""Object schemas: Kubernetes kinds against the Kubernetes JSON schemas (kubernetes-validate,
strict), custom resources against their CRD's openAPIV3Schema from the upstream fixtures, with
unknown fields rejected where the schema does not preserve them and the CRD's CEL validation
rules evaluated (cel_rules)."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils

import cel_rules
from flux_tree import Tree
from model import Finding, Obj, Report, fixture_docs

KUBERNETES_VERSION = "1.37.0"

# Kinds whose CRD comes from a chart at run time and is not among the upstream fixtures. They
# are listed in the report as not schema-checked; any other kind without a schema is an error.
CHARTED_KINDS: dict[tuple[str, str], str] = {}


def _strict(schema: Any) -> Any:
    """OpenAPI v3 structural schema -> JSON schema that rejects unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if k not in ("x-kubernetes-validations",)}
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if "properties" in out and "metadata" in out["properties"]:
        # ObjectMeta is checked by the API server, not by the CRD schema.
        out["properties"]["metadata"] = {"type": "object"}
    return out


@dataclass
class CrdIndex:
    """Custom resource schemas by (group, version, kind), and the groups they cover."""

    schemas: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    raw: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    origin: dict[tuple[str, str, str], str] = field(default_factory=dict)
    served: dict[tuple[str, str, str], bool] = field(default_factory=dict)

    def add(self, crd: dict[str, Any], origin: str) -> None:
        spec = crd.get("spec") or {}
        group = spec.get("group", "")
        kind = (spec.get("names") or {}).get("kind", "")
        for version in spec.get("versions") or []:
            schema = ((version.get("schema") or {}).get("openAPIV3Schema")) or {}
            key = (group, version.get("name", ""), kind)
            self.schemas[key] = _strict(schema)
            self.raw[key] = schema
            self.origin[key] = origin
            self.served[key] = bool(version.get("served", True))

    def groups(self) -> set[str]:
        return {g for g, _, _ in self.schemas}

    def kinds(self) -> set[tuple[str, str]]:
        return {(g, k) for g, _, k in self.schemas}

    def kinds_in(self, group: str) -> list[str]:
        return sorted({f"{k} ({v})" for g, v, k in self.schemas if g == group})


class FixturesMissing(RuntimeError):
    pass




def crd_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in fixture_docs(path) if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"]


@functools.lru_cache(maxsize=4)
def _load_crds(fixtures: str) -> CrdIndex:
    directory = Path(fixtures)
    files = sorted(directory.glob("*.crds.yaml")) + sorted(directory.glob("kyverno-*.yaml"))
    if not list(directory.glob("*.crds.yaml")):
        raise FixturesMissing(
            f"no upstream CRDs (*.crds.yaml) in {directory}: the suite needs the shared fixtures beside "
            "the repository (../shared/fixtures/upstream); clone shared/ next to the repository or set "
            "HOMELAB_CRD_FIXTURES"
        )
    index = CrdIndex()
    for path in files:
        for doc in crd_documents(path):
            index.add(doc, path.name)
    return index


def default_fixtures(root: Path) -> Path:
    env = os.environ.get("HOMELAB_CRD_FIXTURES")
    if env:
        return Path(env)
    return (root / ".." / "shared" / "fixtures" / "upstream").resolve()


def crd_index(fixtures: Path, tree: Tree) -> CrdIndex:
    base = _load_crds(str(fixtures))
    index = CrdIndex(dict(base.schemas), dict(base.raw), dict(base.origin), dict(base.served))
    for obj in tree.objects:
        if obj.kind == "CustomResourceDefinition":
            index.add(obj.body, obj.source)
    return index


@functools.lru_cache(maxsize=1)
def builtin_kinds() -> frozenset[tuple[str, str]]:
    """(group, kind) of every Kubernetes kind, from the OpenAPI definitions kubernetes-validate
    ships for KUBERNETES_VERSION (their x-kubernetes-group-version-kind)."""
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict" / "_definitions.json"
    defs = json.loads(base.read_text()).get("$defs", {})
    return frozenset((g["group"], g["kind"]) for d in defs.values() for g in d.get("x-kubernetes-group-version-kind") or [])


def is_custom(obj: Obj) -> bool:
    return (obj.group, obj.kind) not in builtin_kinds()


def _schema_error(err: Exception) -> str:
    path = "/".join(str(p) for p in getattr(err, "absolute_path", []) or [])
    message = getattr(err, "message", None) or str(err).splitlines()[0]
    return f"{message} (at {path})" if path else str(message)


def custom_resource_problems(obj: Obj, crds: CrdIndex) -> list[str]:
    """What is wrong with a custom resource against its CRD (schema, then CEL rules)."""
    version = obj.api_version.rpartition("/")[2]
    key = (obj.group, version, obj.kind)
    body = {k: v for k, v in obj.body.items() if k != "sops"}
    validator = jsonschema.Draft7Validator(crds.schemas[key])
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    problems = [f"{_schema_error(err)} [CRD schema from {crds.origin[key]}]" for err in errors[:5]]
    if not crds.served.get(key, True):
        problems.append(f"{obj.api_version} is not served by the CRD ({crds.origin[key]}): the API server rejects it")
    if not errors:
        defaulted = cel_rules.apply_defaults(crds.raw[key], body)
        for failure in cel_rules.failures(crds.raw[key], defaulted):
            problems.append(f"{failure.path}: {failure.message} [CEL validation rule of the CRD from {crds.origin[key]}]")
    return problems


def schema_version(kubernetes_minor: str) -> str:
    """The Kubernetes schema version to validate against: the cluster's minor when
    kubernetes-validate ships it, else the newest it has."""
    if kubernetes_minor and f"{kubernetes_minor}.0" in kubernetes_validate.utils.all_versions():
        return f"{kubernetes_minor}.0"
    return KUBERNETES_VERSION


def check_schemas(tree: Tree, crds: CrdIndex, kubernetes_version: str = KUBERNETES_VERSION) -> Report:
    report = Report()
    for obj in tree.objects:
        body = {k: v for k, v in obj.body.items() if k != "sops"}
        if not obj.kind or not obj.api_version:
            report.find(obj.source, "object without apiVersion/kind")
            continue
        version = obj.api_version.rpartition("/")[2]
        key = (obj.group, version, obj.kind)
        if key in crds.schemas:
            for problem in custom_resource_problems(obj, crds):
                report.find(obj.source, f"{obj.ident()}: {problem}")
            continue
        try:
            kubernetes_validate.validate(body, kubernetes_version, strict=True)
            continue
        except kubernetes_validate.SchemaNotFoundError:
            pass
        except kubernetes_validate.ValidationError as err:
            report.find(obj.source, f"{obj.ident()}: {_schema_error(err)} [Kubernetes {kubernetes_version} schema]")
            continue
        except kubernetes_validate.InvalidSchemaError as err:  # pragma: no cover - library data problem
            report.find(obj.source, f"{obj.ident()}: schema unusable: {err}")
            continue
        charted = CHARTED_KINDS.get((obj.group, obj.kind))
        if charted:
            report.note(obj.source, f"{obj.ident()} ({obj.api_version}): no CRD at hand: {charted}")
        elif obj.group in crds.groups():
            report.find(
                obj.source,
                f"{obj.ident()}: unknown kind {obj.kind} in {obj.api_version}; the CRDs at hand for {obj.group} define: {', '.join(crds.kinds_in(obj.group))}",
            )
        else:
            report.find(
                obj.source,
                f"{obj.ident()}: unknown kind {obj.api_version} {obj.kind}: neither a Kubernetes {kubernetes_version} kind nor a CRD at hand "
                "(if its CRD comes from a chart, list it in schemas.CHARTED_KINDS with the reason)",
            )
    return report


def validate_with(schema: dict[str, Any], value: Any) -> list[Finding | str]:
    """Errors of `value` against a JSON schema in the schema's own dialect ($schema)."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return [_schema_error(e) for e in sorted(cls(schema).iter_errors(value), key=lambda e: list(e.absolute_path))]
