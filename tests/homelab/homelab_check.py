"""Offline validation of the homelab tree: kubernetes/ (Flux), terraform/, secrets.

The tree is loaded as Flux applies it (flux_tree: one layer per Flux Kustomization, built with
kustomize, post-build substituted), then every check returns `Finding`s, each naming the file,
the object and the problem. A clean tree gives no findings. What cannot be checked offline
(paths inside external Flux sources without a fixture, charts without a values fixture) is
reported as `Note`s, so the output lists it instead of passing it silently.

Checks (module):
- kustomize builds, post-build substitution (flux_tree, substitution)
- Kubernetes and CRD schemas, strict unknown fields, CRD CEL rules (schemas, cel_rules)
- Flux graph: sourceRef, dependsOn, path, cycles; reachability (here)
- references between objects (references)
- layer ordering against CRD installation, ownership, decryption (layering)
- HelmRelease values against chart schemas (chart_values)
- versions pinned in several places; compatibility (versions, compatibility.yaml)
- conventions (conventions)
- SOPS files and .sops.yaml, key material, Terraform (here)

Run it directly for a report:  python3 tests/homelab/homelab_check.py [ROOT]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

import chart_values
import conventions
import layering
import references
import schemas
import versions
from flux_tree import Tree, load_tree
from model import Finding, Note, Obj, Report, hcl, rel
from schemas import FixturesMissing, crd_index, default_fixtures

__all__ = ["Finding", "Note", "Obj", "Report", "FixturesMissing", "check_all", "default_fixtures", "sops_envelope_problems"]

FLUX_SOURCE_KINDS = {"GitRepository", "OCIRepository", "HelmRepository", "Bucket", "HelmChart", "ExternalArtifact"}
SOPS_VALUE = re.compile(r"^ENC\[AES256_GCM,data:[A-Za-z0-9+/=]*,iv:[A-Za-z0-9+/=]+,tag:[A-Za-z0-9+/=]+,type:[a-z]+\]$")
AGE_RECIPIENT = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")
EXACT_VERSION = re.compile(r"^=?\s*v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")


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


SOPS_METADATA_KEYS = {
    "age", "pgp", "kms", "gcp_kms", "azure_kv", "hc_vault", "lastmodified", "mac", "version",
    "encrypted_regex", "unencrypted_regex", "encrypted_suffix", "unencrypted_suffix",
    "encrypted_comment_regex", "unencrypted_comment_regex", "mac_only_encrypted", "shamir_threshold", "key_groups",
}


def sops_rules(root: Path) -> list[dict[str, Any]]:
    path = root / ".sops.yaml"
    if not path.is_file():
        return []
    return list((yaml.safe_load(path.read_text()) or {}).get("creation_rules") or [])


def sops_rule_for(root: Path, name: str) -> dict[str, Any] | None:
    """The creation rule sops applies to a file: the first whose path_regex matches its path
    relative to .sops.yaml (getsops/sops config/config.go, `parseCreationRuleForFile`)."""
    for rule in sops_rules(root):
        if re.search(str(rule.get("path_regex", "")), name):
            return rule
    return None


def _recipients(value: Any) -> set[str]:
    if isinstance(value, list):
        return {str(v).strip() for v in value if str(v).strip()}
    return {r.strip() for r in str(value or "").split(",") if r.strip()}


def sops_file_problems(root: Path, path: Path, doc: dict[str, Any]) -> list[str]:
    """The file's SOPS metadata against the creation rule that encrypts it, and sops's own parse."""
    name = rel(root, path)
    meta = doc.get("sops") if isinstance(doc.get("sops"), dict) else {}
    problems = []
    unknown = sorted(set(meta) - SOPS_METADATA_KEYS)
    if unknown:
        problems.append(f"sops metadata has keys sops does not write: {', '.join(unknown)}")
    rule = sops_rule_for(root, name)
    if rule is None:
        problems.append("no creation rule of .sops.yaml matches this file: sops cannot re-encrypt it (add a path_regex)")
        return problems
    want = _recipients(rule.get("age"))
    have = {str(e.get("recipient", "")) for e in meta.get("age") or [] if isinstance(e, dict)}
    if want and have != want:
        missing, extra = sorted(want - have), sorted(have - want)
        detail = "; ".join(x for x in (f"missing {', '.join(missing)}" if missing else "", f"not in .sops.yaml: {', '.join(extra)}" if extra else "") if x)
        problems.append(f"encrypted to other age recipients than its .sops.yaml rule ({detail}): re-create or `sops updatekeys` it")
    for key in ("encrypted_regex", "unencrypted_regex", "encrypted_suffix", "unencrypted_suffix"):
        if rule.get(key) != meta.get(key):
            problems.append(f"sops metadata {key} is {meta.get(key)!r}, its .sops.yaml rule says {rule.get(key)!r}")
    if bool(rule.get("mac_only_encrypted")) != bool(meta.get("mac_only_encrypted")):
        problems.append(f"sops metadata mac_only_encrypted is {bool(meta.get('mac_only_encrypted'))}, its .sops.yaml rule says {bool(rule.get('mac_only_encrypted'))}: re-encrypt it")
    proc = subprocess.run(["sops", "filestatus", str(path)], capture_output=True, text=True, timeout=60)
    status = {}
    try:
        status = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        pass
    if proc.returncode != 0 or status.get("encrypted") is not True:
        problems.append(f"sops does not read it as an encrypted file (`sops filestatus`: {(proc.stderr or proc.stdout).strip()[:200]})")
    return problems


def check_secrets(root: Path, tree: Tree) -> Report:
    report = Report()
    for obj in tree.objects:
        if obj.kind != "Secret" or obj.api_version != "v1":
            continue
        if not re.search(r"\.enc\.(json|yaml)$", obj.source):
            report.find(obj.source, f"{obj.ident()} is a Secret outside a *.enc.yaml file: plaintext secrets are not allowed; move it to NAME.enc.yaml and encrypt it with sops")
        if "sops" not in obj.body:
            report.find(obj.source, f"{obj.ident()} is not SOPS-encrypted (plaintext Secret); encrypt it: sops encrypt -i {obj.source}")
            continue
        for problem in sops_envelope_problems(obj.body, ("data", "stringData")):
            report.find(obj.source, f"{obj.ident()}: {problem}")
    for path in sorted(root.rglob("*.enc.*")):
        if not re.search(r"\.enc\.(json|yaml)$", path.name) or _ignored(root, path):
            continue
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as err:
            report.find(rel(root, path), f"not valid YAML/JSON: {err}")
            continue
        for doc in docs:
            keys = ("data", "stringData") if isinstance(doc, dict) and doc.get("kind") == "Secret" else None
            ident = f"{doc.get('kind')} {(doc.get('metadata') or {}).get('namespace', '')}/{(doc.get('metadata') or {}).get('name', '')}: " if isinstance(doc, dict) and doc.get("kind") else ""
            problems = sops_envelope_problems(doc, keys) if isinstance(doc, dict) else ["not a mapping"]
            if isinstance(doc, dict) and not problems:
                problems = sops_file_problems(root, path, doc)
            for problem in problems:
                report.find(rel(root, path), f"{ident}{problem}")
    return report


def check_sops_config(root: Path) -> Report:
    report = Report()
    path = root / ".sops.yaml"
    if not path.is_file():
        return Report([Finding(".sops.yaml", "missing: SOPS creation rules for \\.enc\\.(json|yaml)$")])
    rules = sops_rules(root)
    if not any(r.get("path_regex", "").endswith(r"\.enc\.(json|yaml)$") for r in rules):
        report.find(".sops.yaml", "no creation rule with path_regex \\.enc\\.(json|yaml)$")
    for i, rule in enumerate(rules):
        if rule.get("mac_only_encrypted") is not True:
            report.find(
                ".sops.yaml",
                f"creation_rules[{i}] ({rule.get('path_regex')}): mac_only_encrypted is not true: the MAC then covers the plain fields too, "
                "so editing a comment, a name or a namespace without the key breaks the file",
            )
        for recipient in sorted(_recipients(rule.get("age"))):
            if not AGE_RECIPIENT.match(recipient):
                report.find(".sops.yaml", f"creation_rules[{i}]: age recipient {recipient!r} is not an age X25519 recipient (age1...): put your key's public half here")
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
            parsed[path] = hcl(text)
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
    crds = schemas._load_crds(str(fixtures))  # fails early and clearly without the fixtures
    del crds
    report = Report()
    tree = load_tree(root, fixtures)
    report.findings.extend(tree.findings)
    report.notes.extend(tree.notes)
    kubernetes = schemas.schema_version(versions.kubernetes_minor(root))
    report.extend(schemas.check_schemas(tree, crd_index(fixtures, tree), kubernetes))
    report.extend(check_flux_graph(root, tree))
    report.extend(check_reachability(root, tree))
    report.extend(references.check_references(tree))
    report.extend(layering.check_ordering(root, tree, fixtures))
    report.extend(layering.check_ownership(tree))
    report.extend(layering.check_decryption(root, tree))
    report.extend(chart_values.check_values(tree, fixtures))
    report.extend(versions.check_versions(root, tree))
    report.extend(versions.check_compatibility(root, tree, fixtures))
    report.extend(conventions.check_conventions(tree))
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
