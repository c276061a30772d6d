"""Offline validation of the homelab tree: kubernetes/ (Flux), terraform/, secrets.

Every check returns a list of `Finding`s, each naming the file and the problem.
A clean tree gives no findings. What cannot be checked offline (kinds without a
CRD at hand, paths inside external Flux sources) is reported as `Note`s, so the
output lists it instead of passing it silently.

Run it directly for a report:  python3 tests/homelab/homelab_check.py [ROOT]
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import hcl2
import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.37.0"

# Kinds whose CRDs arrive with a Helm chart at run time and are not among the
# upstream fixtures. They are listed in the report as not schema-checked; any
# other kind without a schema is an error.
CHARTED_KINDS = {
    ("kyverno.io", "ClusterPolicy"): "CRD ships inside the Kyverno chart (infrastructure/kyverno)",
    ("kyverno.io", "Policy"): "CRD ships inside the Kyverno chart (infrastructure/kyverno)",
}

FLUX_SOURCE_KINDS = {"GitRepository", "OCIRepository", "HelmRepository", "Bucket", "HelmChart", "ExternalArtifact"}
SOPS_VALUE = re.compile(r"^ENC\[AES256_GCM,data:[A-Za-z0-9+/=]*,iv:[A-Za-z0-9+/=]+,tag:[A-Za-z0-9+/=]+,type:[a-z]+\]$")
AGE_RECIPIENT = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")
EXACT_VERSION = re.compile(r"^=?\s*v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")


@dataclass(frozen=True, order=True)
class Finding:
    """A problem: the file it is in and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True, order=True)
class Note:
    """Something the offline suite cannot check, listed rather than passed silently."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: not checked: {self.message}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def extend(self, other: "Report") -> None:
        self.findings.extend(other.findings)
        self.notes.extend(other.notes)

    def render(self) -> str:
        lines = [f"ERROR {f}" for f in sorted(set(self.findings))]
        lines += [f"NOTE  {n}" for n in sorted(set(self.notes))]
        return "\n".join(lines)


@dataclass
class Obj:
    """One Kubernetes object from a kustomize build, with the file it came from."""

    body: dict[str, Any]
    source: str

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def api_version(self) -> str:
        return str(self.body.get("apiVersion", ""))

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name", ""))

    @property
    def namespace(self) -> str:
        return str((self.body.get("metadata") or {}).get("namespace", ""))

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.body.get("spec")
        return spec if isinstance(spec, dict) else {}

    def ident(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {ns}{self.name}"


def rel(root: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


# --------------------------------------------------------------------------
# kustomize builds


def kustomization_dirs(root: Path) -> list[Path]:
    base = root / "kubernetes"
    return sorted(p.parent for p in base.rglob("kustomization.yaml"))


def _source_index(root: Path) -> dict[tuple[str, str, str, str], str]:
    """(apiVersion, kind, namespace, name) -> the file that defines it."""
    index: dict[tuple[str, str, str, str], str] = {}
    for path in sorted((root / "kubernetes").rglob("*.y*ml")):
        if path.name == "kustomization.yaml":
            continue
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
        for doc in docs:
            if isinstance(doc, dict) and "kind" in doc:
                meta = doc.get("metadata") or {}
                key = (str(doc.get("apiVersion", "")), str(doc["kind"]), str(meta.get("namespace", "")), str(meta.get("name", "")))
                index.setdefault(key, rel(root, path))
    return index


def build(root: Path, directory: Path, index: dict[tuple[str, str, str, str], str] | None = None) -> tuple[list[Obj], list[Finding]]:
    """`kubectl kustomize DIR`, each object tagged with the file it came from."""
    where = rel(root, directory / "kustomization.yaml")
    proc = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        detail = proc.stderr.strip().replace(str(directory.resolve()) + "/", "").replace(str(root.resolve()) + "/", "")
        return [], [Finding(where, f"kustomize build failed: {detail}")]
    if index is None:
        index = _source_index(root)
    objects = []
    for doc in yaml.safe_load_all(proc.stdout):
        if not isinstance(doc, dict):
            continue
        meta = doc.get("metadata") or {}
        key = (str(doc.get("apiVersion", "")), str(doc.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", "")))
        objects.append(Obj(doc, index.get(key, where)))
    return objects, []


@dataclass
class Tree:
    """Every object of every kustomization under kubernetes/, deduplicated."""

    objects: list[Obj]
    findings: list[Finding]


def load_tree(root: Path) -> Tree:
    """Builds every kustomization (a few kubectl processes in parallel)."""
    index = _source_index(root)
    directories = kustomization_dirs(root)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda d: build(root, d, index), directories))
    seen: dict[tuple[str, str, str, str], Obj] = {}
    findings: list[Finding] = []
    for objects, problems in results:
        findings += problems
        for obj in objects:
            seen.setdefault((obj.api_version, obj.kind, obj.namespace, obj.name), obj)
    return Tree(list(seen.values()), findings)


# --------------------------------------------------------------------------
# schemas


def _strict(schema: Any) -> Any:
    """OpenAPI v3 structural schema -> JSON schema that rejects unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if k not in ("x-kubernetes-validations",)}
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if "properties" in out and "metadata" in out["properties"]:
        # ObjectMeta is checked by the API server, not by the CRD schema.
        out["properties"]["metadata"] = {"type": "object"}
    return out


@dataclass
class CrdIndex:
    """Custom resource schemas by (group, version, kind), and the groups they cover."""

    schemas: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    origin: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def add(self, crd: dict[str, Any], origin: str) -> None:
        spec = crd.get("spec") or {}
        group = spec.get("group", "")
        kind = (spec.get("names") or {}).get("kind", "")
        for version in spec.get("versions") or []:
            schema = ((version.get("schema") or {}).get("openAPIV3Schema")) or {}
            key = (group, version.get("name", ""), kind)
            self.schemas[key] = _strict(schema)
            self.origin[key] = origin

    def groups(self) -> set[str]:
        return {g for g, _, _ in self.schemas}

    def kinds_in(self, group: str) -> list[str]:
        return sorted({f"{k} ({v})" for g, v, k in self.schemas if g == group})


class FixturesMissing(RuntimeError):
    pass


@functools.lru_cache(maxsize=4)
def _load_crds(fixtures: str) -> CrdIndex:
    directory = Path(fixtures)
    files = sorted(directory.glob("*.crds.yaml"))
    if not files:
        raise FixturesMissing(
            f"no upstream CRDs (*.crds.yaml) in {directory}: the suite needs the shared fixtures beside "
            "the repository (../shared/fixtures/upstream); clone shared/ next to the repository or set "
            "HOMELAB_CRD_FIXTURES"
        )
    index = CrdIndex()
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                index.add(doc, path.name)
    return index


def default_fixtures(root: Path) -> Path:
    env = os.environ.get("HOMELAB_CRD_FIXTURES")
    if env:
        return Path(env)
    return (root / ".." / "shared" / "fixtures" / "upstream").resolve()


def crd_index(root: Path, fixtures: Path, tree: Tree) -> CrdIndex:
    base = _load_crds(str(fixtures))
    index = CrdIndex(dict(base.schemas), dict(base.origin))
    for obj in tree.objects:
        if obj.kind == "CustomResourceDefinition":
            index.add(obj.body, obj.source)
    return index


def _schema_error(err: Exception) -> str:
    path = "/".join(str(p) for p in getattr(err, "absolute_path", []) or [])
    message = getattr(err, "message", None) or str(err).splitlines()[0]
    return f"{message} (at {path})" if path else str(message)


def check_schemas(root: Path, tree: Tree, crds: CrdIndex) -> Report:
    report = Report()
    for obj in tree.objects:
        body = {k: v for k, v in obj.body.items() if k != "sops"}
        if not obj.kind or not obj.api_version:
            report.findings.append(Finding(obj.source, "object without apiVersion/kind"))
            continue
        version = obj.api_version.rpartition("/")[2]
        key = (obj.group, version, obj.kind)
        if key in crds.schemas:
            validator = jsonschema.Draft7Validator(crds.schemas[key])
            errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
            for err in errors[:5]:
                report.findings.append(Finding(obj.source, f"{obj.ident()}: {_schema_error(err)} [CRD schema from {crds.origin[key]}]"))
            continue
        try:
            kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)
            continue
        except kubernetes_validate.SchemaNotFoundError:
            pass
        except kubernetes_validate.ValidationError as err:
            report.findings.append(Finding(obj.source, f"{obj.ident()}: {_schema_error(err)} [Kubernetes {KUBERNETES_VERSION} schema]"))
            continue
        except kubernetes_validate.InvalidSchemaError as err:  # pragma: no cover - library data problem
            report.findings.append(Finding(obj.source, f"{obj.ident()}: schema unusable: {err}"))
            continue
        charted = CHARTED_KINDS.get((obj.group, obj.kind))
        if charted:
            report.notes.append(Note(obj.source, f"{obj.ident()} ({obj.api_version}): no CRD at hand: {charted}"))
        elif obj.group in crds.groups():
            report.findings.append(
                Finding(
                    obj.source,
                    f"{obj.ident()}: unknown kind {obj.kind} in {obj.api_version}; the CRDs at hand for "
                    f"{obj.group} define: {', '.join(crds.kinds_in(obj.group))}",
                )
            )
        else:
            report.findings.append(
                Finding(
                    obj.source,
                    f"{obj.ident()}: unknown kind {obj.api_version} {obj.kind}: neither a Kubernetes "
                    f"{KUBERNETES_VERSION} kind nor a CRD at hand (if its CRD comes from a chart, list it in "
                    "CHARTED_KINDS with the reason)",
                )
            )
    return report


# --------------------------------------------------------------------------
# Flux references and dependsOn graph


def _ref_ns(obj: Obj, ref: dict[str, Any]) -> str:
    return str(ref.get("namespace") or obj.namespace)


def check_flux_graph(root: Path, tree: Tree) -> Report:
    report = Report()
    by_kind: dict[str, dict[tuple[str, str], Obj]] = {}
    for obj in tree.objects:
        by_kind.setdefault(obj.kind, {})[(obj.namespace, obj.name)] = obj
    kustomizations = {k: o for k, o in by_kind.get("Kustomization", {}).items() if o.group == "kustomize.toolkit.fluxcd.io"}
    releases = {k: o for k, o in by_kind.get("HelmRelease", {}).items() if o.group == "helm.toolkit.fluxcd.io"}

    def source_exists(kind: str, ns: str, name: str) -> bool:
        return kind in FLUX_SOURCE_KINDS and (ns, name) in by_kind.get(kind, {})

    # sourceRefs and paths
    for (ns, name), obj in sorted(kustomizations.items()):
        ref = obj.spec.get("sourceRef") or {}
        kind, ref_ns, ref_name = str(ref.get("kind", "")), _ref_ns(obj, ref), str(ref.get("name", ""))
        if not source_exists(kind, ref_ns, ref_name):
            report.findings.append(Finding(obj.source, f"Kustomization {ns}/{name}: sourceRef {kind} {ref_ns}/{ref_name} does not exist in the tree"))
            continue
        source = by_kind[kind][(ref_ns, ref_name)]
        path = str(obj.spec.get("path") or "./")
        if _is_this_repository(source):
            target = (root / path).resolve()
            if not target.is_dir():
                report.findings.append(Finding(obj.source, f"Kustomization {ns}/{name}: path {path} does not exist in the repository"))
                continue
            encrypted = sorted(rel(root, p) for p in target.rglob("*.enc.*"))
            if encrypted and not (obj.spec.get("decryption") or {}).get("provider") == "sops":
                report.findings.append(
                    Finding(obj.source, f"Kustomization {ns}/{name}: path {path} holds SOPS-encrypted files ({', '.join(encrypted)}) but spec.decryption is not set to provider sops")
                )
        else:
            report.notes.append(Note(obj.source, f"Kustomization {ns}/{name}: path {path} inside external source {kind} {ref_ns}/{ref_name} is fetched at run time"))
    for (ns, name), obj in sorted(releases.items()):
        chart = ((obj.spec.get("chart") or {}).get("spec")) or {}
        ref = chart.get("sourceRef") or {}
        if ref:
            kind, ref_ns, ref_name = str(ref.get("kind", "")), _ref_ns(obj, ref), str(ref.get("name", ""))
            if not source_exists(kind, ref_ns, ref_name):
                report.findings.append(Finding(obj.source, f"HelmRelease {ns}/{name}: chart sourceRef {kind} {ref_ns}/{ref_name} does not exist in the tree"))
            if not re.match(r"^v?\d+\.\d+\.\d+", str(chart.get("version", ""))):
                report.findings.append(Finding(obj.source, f"HelmRelease {ns}/{name}: chart version {chart.get('version')!r} is not pinned to an exact version"))
        elif obj.spec.get("chartRef"):
            ref = obj.spec["chartRef"]
            kind, ref_ns, ref_name = str(ref.get("kind", "")), _ref_ns(obj, ref), str(ref.get("name", ""))
            if not source_exists(kind, ref_ns, ref_name):
                report.findings.append(Finding(obj.source, f"HelmRelease {ns}/{name}: chartRef {kind} {ref_ns}/{ref_name} does not exist in the tree"))
        else:
            report.findings.append(Finding(obj.source, f"HelmRelease {ns}/{name}: neither spec.chart nor spec.chartRef"))
        if obj.spec.get("values"):
            report.notes.append(Note(obj.source, f"HelmRelease {ns}/{name}: values are checked by the chart's own schema at install time"))

    # dependsOn: existence and cycles, per graph (Kustomizations; HelmReleases)
    for label, nodes in (("Kustomization", kustomizations), ("HelmRelease", releases)):
        edges: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for (ns, name), obj in nodes.items():
            edges[(ns, name)] = []
            for dep in obj.spec.get("dependsOn") or []:
                if dep.get("kind") and dep.get("kind") != label:
                    report.notes.append(Note(obj.source, f"{label} {ns}/{name}: dependsOn {dep.get('kind')} {dep.get('name')} is not a {label}"))
                    continue
                target = (_ref_ns(obj, dep), str(dep.get("name", "")))
                if target not in nodes:
                    report.findings.append(Finding(obj.source, f"{label} {ns}/{name}: dependsOn {target[0]}/{target[1]}, which does not exist in the tree"))
                    continue
                edges[(ns, name)].append(target)
        for cycle in _cycles(edges):
            chain = " -> ".join(f"{n}/{m}" for n, m in cycle + [cycle[0]])
            first = nodes[cycle[0]]
            report.findings.append(Finding(first.source, f"{label} dependsOn cycle: {chain}"))
    return report


def _is_this_repository(source: Obj) -> bool:
    return source.kind == "GitRepository" and source.name == "flux-system" and source.namespace == "flux-system"


def _cycles(edges: dict[tuple[str, str], list[tuple[str, str]]]) -> list[list[tuple[str, str]]]:
    """Each distinct cycle once (by its node set), found by depth-first search."""
    found: list[list[tuple[str, str]]] = []
    seen_sets: set[frozenset[tuple[str, str]]] = set()
    state: dict[tuple[str, str], int] = {}
    stack: list[tuple[str, str]] = []

    def visit(node: tuple[str, str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):]
                key = frozenset(cycle)
                if key not in seen_sets:
                    seen_sets.add(key)
                    found.append(list(cycle))
            elif state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if state.get(node) is None:
            visit(node)
    return found


def check_reachability(root: Path, tree: Tree) -> Report:
    """Every manifest is applied by something: listed in its kustomization.yaml, whose directory is
    listed by its parent or is the path of a Flux Kustomization on this repository."""
    report = Report()
    base = root / "kubernetes"
    referenced: set[Path] = set()
    for kfile in base.rglob("kustomization.yaml"):
        try:
            doc = yaml.safe_load(kfile.read_text()) or {}
        except yaml.YAMLError:
            continue  # reported by the build
        entries = list(doc.get("resources") or []) + list(doc.get("components") or [])
        entries += list(doc.get("patchesStrategicMerge") or [])
        entries += [p.get("path") for p in doc.get("patches") or [] if isinstance(p, dict) and p.get("path")]
        for generator in list(doc.get("configMapGenerator") or []) + list(doc.get("secretGenerator") or []):
            entries += [f.split("=", 1)[-1] for f in generator.get("files") or []]
        for entry in entries:
            if isinstance(entry, str) and "://" not in entry:
                referenced.add((kfile.parent / entry).resolve())
    flux_paths: set[Path] = set()
    for obj in tree.objects:
        if obj.kind == "Kustomization" and obj.group == "kustomize.toolkit.fluxcd.io":
            ref = obj.spec.get("sourceRef") or {}
            if ref.get("kind") == "GitRepository" and ref.get("name") == "flux-system" and _ref_ns(obj, ref) == "flux-system":
                flux_paths.add((root / str(obj.spec.get("path") or "./")).resolve())
    for kfile in sorted(base.rglob("kustomization.yaml")):
        directory = kfile.parent.resolve()
        if directory not in referenced and directory not in flux_paths:
            report.findings.append(
                Finding(rel(root, kfile), "not listed in the parent kustomization.yaml and not the path of a Flux Kustomization: Flux never applies it")
            )
    for path in sorted(list(base.rglob("*.yaml")) + list(base.rglob("*.yml")) + list(base.rglob("*.json"))):
        if path.name == "kustomization.yaml":
            continue
        directory = path.parent
        if (directory / "kustomization.yaml").is_file():
            if path.resolve() not in referenced:
                report.findings.append(Finding(rel(root, path), f"not listed in {rel(root, directory / 'kustomization.yaml')}: Flux never applies it"))
        elif directory.resolve() not in flux_paths:
            report.findings.append(Finding(rel(root, path), "in a directory without kustomization.yaml that no Flux Kustomization points at: Flux never applies it"))
    return report


# --------------------------------------------------------------------------
# SOPS


def sops_envelope_problems(doc: dict[str, Any], value_keys: Iterable[str] | None = None) -> list[str]:
    """What is wrong with a SOPS-encrypted document (empty list: a valid age envelope)."""
    problems = []
    meta = doc.get("sops")
    if not isinstance(meta, dict):
        return ["no `sops` metadata: the file is not SOPS-encrypted"]
    recipients = meta.get("age") or []
    if not recipients:
        problems.append("sops metadata has no age recipients")
    for entry in recipients:
        if not AGE_RECIPIENT.match(str(entry.get("recipient", ""))):
            problems.append(f"sops age recipient {entry.get('recipient')!r} is not an age X25519 recipient")
        if "-----BEGIN AGE ENCRYPTED FILE-----" not in str(entry.get("enc", "")):
            problems.append("sops age entry has no age-armored data key")
    if not SOPS_VALUE.match(str(meta.get("mac", ""))):
        problems.append("sops metadata has no encrypted MAC")
    if not meta.get("lastmodified") or not meta.get("version"):
        problems.append("sops metadata lacks lastmodified/version")

    def walk(value: Any, path: str) -> Iterator[str]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield from walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from walk(v, f"{path}[{i}]")
        elif not SOPS_VALUE.match(str(value)):
            yield path

    keys = list(value_keys) if value_keys is not None else [k for k in doc if k != "sops"]
    for key in keys:
        if key in doc:
            for path in walk(doc[key], key):
                problems.append(f"value {path} is in plain text")
    return problems


def check_secrets(root: Path, tree: Tree) -> Report:
    report = Report()
    for obj in tree.objects:
        if obj.kind != "Secret" or obj.api_version != "v1":
            continue
        if not re.search(r"\.enc\.(json|yaml)$", obj.source):
            report.findings.append(
                Finding(obj.source, f"{obj.ident()} is a Secret outside a *.enc.yaml file: plaintext secrets are not allowed; move it to NAME.enc.yaml and encrypt it with sops")
            )
        if "sops" not in obj.body:
            report.findings.append(Finding(obj.source, f"{obj.ident()} is not SOPS-encrypted (plaintext Secret); encrypt it: sops encrypt -i {obj.source}"))
            continue
        for problem in sops_envelope_problems(obj.body, ("data", "stringData")):
            report.findings.append(Finding(obj.source, f"{obj.ident()}: {problem}"))
    for path in sorted(root.rglob("*.enc.*")):
        if not re.search(r"\.enc\.(json|yaml)$", path.name) or _ignored(root, path):
            continue
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as err:
            report.findings.append(Finding(rel(root, path), f"not valid YAML/JSON: {err}"))
            continue
        for doc in docs:
            keys = ("data", "stringData") if isinstance(doc, dict) and doc.get("kind") == "Secret" else None
            problems = sops_envelope_problems(doc, keys) if isinstance(doc, dict) else ["not a mapping"]
            for problem in problems:
                report.findings.append(Finding(rel(root, path), problem))
    return report


def check_sops_config(root: Path) -> Report:
    report = Report()
    path = root / ".sops.yaml"
    if not path.is_file():
        return Report([Finding(".sops.yaml", "missing: SOPS creation rules for \\.enc\\.(json|yaml)$")])
    config = yaml.safe_load(path.read_text()) or {}
    rules = config.get("creation_rules") or []
    if not any(r.get("path_regex", "").endswith(r"\.enc\.(json|yaml)$") for r in rules):
        report.findings.append(Finding(".sops.yaml", "no creation rule with path_regex \\.enc\\.(json|yaml)$"))
    for rule in rules:
        for recipient in str(rule.get("age", "")).split(","):
            recipient = recipient.strip()
            if recipient and not AGE_RECIPIENT.match(recipient):
                report.notes.append(Note(".sops.yaml", f"age recipient {recipient!r} is a placeholder: replace it with your age public key"))
    return report


# --------------------------------------------------------------------------
# plaintext key material (the rules of .gitleaks.toml, applied offline)

SKIP_DIRS = {".git", "target", "node_modules", ".terraform", "__pycache__", ".pytest_cache"}


def _ignored(root: Path, path: Path) -> bool:
    parts = path.relative_to(root).parts
    return any(p in SKIP_DIRS for p in parts)


def repository_files(root: Path) -> list[Path]:
    if (root / ".git").exists():
        proc = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=False,
        )
        if proc.returncode == 0:
            names = [n for n in proc.stdout.decode().split("\0") if n]
            return [root / n for n in names if (root / n).is_file() and not _ignored(root, root / n)]
    return [p for p in root.rglob("*") if p.is_file() and not _ignored(root, p)]


@dataclass
class LeakRule:
    id: str
    description: str
    regex: re.Pattern[str]


def leak_rules(root: Path) -> tuple[list[LeakRule], list[re.Pattern[str]]]:
    path = root / ".gitleaks.toml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the secret-scan rules (.gitleaks.toml) are missing")
    config = tomllib.loads(path.read_text())
    rules = []
    for rule in config.get("rules", []):
        rules.append(
            LeakRule(
                rule["id"],
                rule.get("description", rule["id"]),
                re.compile(rule["regex"]),
            )
        )
    allow = [re.compile(p) for p in (config.get("allowlist") or {}).get("paths", [])]
    return rules, allow


def check_leaks(root: Path) -> Report:
    report = Report()
    rules, allowed_paths = leak_rules(root)
    for path in repository_files(root):
        name = rel(root, path)
        if any(a.search(name) for a in allowed_paths):
            continue
        try:
            text = path.read_text(errors="strict")
        except (UnicodeDecodeError, OSError):
            continue
        lines = text.split("\n")
        for rule in rules:
            for match in rule.regex.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                if "gitleaks:allow" in lines[line - 1]:
                    continue  # the same inline opt-out gitleaks honours
                report.findings.append(Finding(f"{name}:{line}", f"plaintext key material ({rule.id}: {rule.description})"))
    return report


# --------------------------------------------------------------------------
# Terraform


VAR_REF = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)")
LOCAL_REF = re.compile(r"\blocal\.([A-Za-z_][A-Za-z0-9_-]*)")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def _unquote(name: str) -> str:
    return name.strip('"')


def _line_of(text: str, needle: re.Pattern[str]) -> int:
    for number, line in enumerate(text.splitlines(), 1):
        if needle.search(line.split("#", 1)[0]):
            return number
    return 0


def check_terraform(root: Path) -> Report:
    report = Report()
    directory = root / "terraform"
    files = sorted(directory.glob("*.tf"))
    if not files:
        return Report([Finding("terraform", "no *.tf files")])
    parsed: dict[Path, dict[str, Any]] = {}
    for path in files:
        text = path.read_text()
        try:
            parsed[path] = hcl2.loads(text)
        except Exception as err:  # lark raises several exception types for syntax errors
            message = str(err).splitlines()[0]
            line = getattr(err, "line", None)
            column = getattr(err, "column", None)
            where = f"{rel(root, path)}:{line}:{column}" if line else rel(root, path)
            report.findings.append(Finding(where, f"HCL syntax error: {message}"))
    if report.findings:
        return report

    declared_vars: set[str] = set()
    declared_locals: set[str] = set()
    providers: dict[str, dict[str, Any]] = {}
    required_version = False
    used_provider_prefixes: dict[str, str] = {}
    for path, doc in parsed.items():
        for block in doc.get("variable", []):
            declared_vars.update(_unquote(k) for k in block)
        for block in doc.get("locals", []):
            declared_locals.update(k for k in block if not k.startswith("__"))
        for block in doc.get("terraform", []):
            if "required_version" in block:
                required_version = True
            for req in block.get("required_providers", []):
                for name, spec in req.items():
                    if isinstance(spec, dict):
                        providers[name] = {**{k: _unquote(v) if isinstance(v, str) else v for k, v in spec.items()}, "_file": rel(root, path)}
        for kind in ("resource", "data", "ephemeral"):
            for block in doc.get(kind, []):
                for rtype in block:
                    used_provider_prefixes.setdefault(_unquote(rtype).split("_", 1)[0], rel(root, path))

    for path, doc in parsed.items():
        text = path.read_text()
        strings = list(_strings({k: v for k, v in doc.items()}))
        for name in sorted({m for s in strings for m in VAR_REF.findall(s)}):
            if name not in declared_vars:
                line = _line_of(text, re.compile(rf"\bvar\.{re.escape(name)}\b"))
                report.findings.append(Finding(f"{rel(root, path)}:{line}", f"variable {name!r} is used (var.{name}) but not declared in any variable block"))
        for name in sorted({m for s in strings for m in LOCAL_REF.findall(s)}):
            if name not in declared_locals:
                line = _line_of(text, re.compile(rf"\blocal\.{re.escape(name)}\b"))
                report.findings.append(Finding(f"{rel(root, path)}:{line}", f"local {name!r} is used (local.{name}) but not declared in any locals block"))

    if not required_version:
        report.findings.append(Finding("terraform", "no terraform { required_version } constraint"))
    for name, spec in sorted(providers.items()):
        version = _unquote(str(spec.get("version", "")))
        if not spec.get("source"):
            report.findings.append(Finding(spec["_file"], f"provider {name} has no source"))
        if not EXACT_VERSION.match(version):
            report.findings.append(Finding(spec["_file"], f"provider {name} is not pinned to an exact version (version = {version!r})"))
    for prefix, where in sorted(used_provider_prefixes.items()):
        if prefix not in providers and prefix not in ("terraform",):
            report.findings.append(Finding(where, f"resources of provider {prefix!r} are used but {prefix} is not in required_providers"))
    return report


# --------------------------------------------------------------------------


def check_all(root: Path, fixtures: Path | None = None) -> Report:
    root = root.resolve()
    fixtures = fixtures or default_fixtures(root)
    report = Report()
    tree = load_tree(root)
    report.findings.extend(tree.findings)
    report.extend(check_schemas(root, tree, crd_index(root, fixtures, tree)))
    report.extend(check_flux_graph(root, tree))
    report.extend(check_reachability(root, tree))
    report.extend(check_secrets(root, tree))
    report.extend(check_sops_config(root))
    report.extend(check_leaks(root))
    report.extend(check_terraform(root))
    return report


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2]
    report = check_all(root)
    print(report.render() or "no findings")
    print(f"{len(set(report.findings))} problem(s), {len(set(report.notes))} item(s) not checkable offline")
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
