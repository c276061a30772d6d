"""The tree as Flux applies it: one layer per Flux Kustomization, each built with kustomize and
post-build substituted as kustomize-controller does, starting from the `flux-system`
Kustomization that `flux bootstrap` (and the bootstrap agent) creates."""

from __future__ import annotations

import base64
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import substitution
from model import Finding, Note, Obj, dig, fixture_docs, rel

FLUX_KUSTOMIZE_GROUP = "kustomize.toolkit.fluxcd.io"
ROOT_KEY = ("flux-system", "flux-system")

# Layers whose path lies in another source: what they apply, from the upstream fixtures
# (../shared/fixtures/upstream). Keyed by the source URL and the path, so that renaming the
# Flux objects does not lose them.
EXTERNAL_CONTENT = {
    ("https://github.com/kubernetes-sigs/gateway-api", "./config/crd/standard"): "gateway-api.standard.crds.yaml",
}


@dataclass
class Layer:
    """One Flux Kustomization and what it applies."""

    obj: Obj
    objects: list[Obj] = field(default_factory=list)
    external: str = ""  # the source, when the path is not in this repository
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.obj.namespace, self.obj.name)

    @property
    def name(self) -> str:
        return f"{self.obj.namespace}/{self.obj.name}"

    @property
    def path(self) -> str:
        return str(self.obj.spec.get("path") or "./")

    def depends_on(self) -> list[tuple[str, str]]:
        return [(str(d.get("namespace") or self.obj.namespace), str(d.get("name", ""))) for d in self.obj.spec.get("dependsOn") or [] if isinstance(d, dict)]


@dataclass
class Tree:
    """Every object Flux applies from this repository, deduplicated by identity, plus the layers."""

    objects: list[Obj]
    findings: list[Finding]
    notes: list[Note] = field(default_factory=list)
    layers: dict[tuple[str, str], Layer] = field(default_factory=dict)

    def produced(self) -> list[Obj]:
        """Every object of every layer, duplicates included (for the ownership check)."""
        return [o for layer in self.layers.values() for o in layer.objects]

    def by_kind(self, kind: str, group: str | None = None) -> list[Obj]:
        return [o for o in self.objects if o.kind == kind and (group is None or o.group == group)]

    def get(self, kind: str, namespace: str, name: str, group: str | None = None) -> Obj | None:
        for o in self.objects:
            if o.kind == kind and o.namespace == namespace and o.name == name and (group is None or o.group == group):
                return o
        return None


def _source_index(root: Path) -> dict[tuple[str, str, str, str], str]:
    """(apiVersion, kind, namespace, name) as written -> the file that defines it."""
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


def build(root: Path, directory: Path, index: dict[tuple[str, str, str, str], str]) -> tuple[list[Obj], list[Finding]]:
    """`kubectl kustomize DIR`, each object tagged with the file it came from."""
    where = rel(root, directory / "kustomization.yaml") if (directory / "kustomization.yaml").is_file() else rel(root, directory)
    proc = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        detail = proc.stderr.strip().replace(str(directory.resolve()) + "/", "").replace(str(root.resolve()) + "/", "")
        return [], [Finding(where, f"kustomize build failed: {detail}")]
    objects = []
    for doc in yaml.safe_load_all(proc.stdout):
        if not isinstance(doc, dict):
            continue
        meta = doc.get("metadata") or {}
        key = (str(doc.get("apiVersion", "")), str(doc.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", "")))
        objects.append(Obj(doc, index.get(key, where)))
    return objects, []


def _is_flux_kustomization(obj: Obj) -> bool:
    return obj.kind == "Kustomization" and obj.group == FLUX_KUSTOMIZE_GROUP


def _source_of(obj: Obj) -> tuple[str, str, str]:
    ref = obj.spec.get("sourceRef") or {}
    return (str(ref.get("kind", "")), str(ref.get("namespace") or obj.namespace), str(ref.get("name", "")))


def on_this_repository(obj: Obj) -> bool:
    """A Flux Kustomization whose source is the repository itself (GitRepository flux-system)."""
    return _source_of(obj) == ("GitRepository", "flux-system", "flux-system")


def _root_kustomization(root: Path) -> Obj | None:
    for path in sorted((root / "kubernetes").rglob("*.y*ml")):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
        for doc in docs:
            if isinstance(doc, dict):
                obj = Obj(doc, rel(root, path))
                if _is_flux_kustomization(obj) and (obj.namespace, obj.name) == ROOT_KEY and on_this_repository(obj):
                    return obj
    return None


def _external_objects(layer: Layer, sources: dict[tuple[str, str, str], Obj], fixtures: Path) -> tuple[list[Obj], str]:
    kind, ns, name = _source_of(layer.obj)
    source = sources.get((kind, ns, name))
    label = f"{kind} {ns}/{name}"
    if source is None:
        return [], label
    url = str(source.spec.get("url", "")).removesuffix(".git").rstrip("/")
    path = "./" + layer.path.removeprefix("./").rstrip("/")
    fixture = EXTERNAL_CONTENT.get((url, path))
    if not fixture or not (fixtures / fixture).is_file():
        return [], label
    objs = [Obj(d, f"{label}:{path} ({fixture})", layer.name, external=True) for d in fixture_docs(fixtures / fixture) if isinstance(d, dict)]
    return objs, label


def _variables(layer: Layer, raw: list[Obj], findings: list[Finding]) -> dict[str, str]:
    post = layer.obj.spec.get("postBuild") or {}
    variables: dict[str, str] = {}
    for ref in post.get("substituteFrom") or []:
        kind, name = str(ref.get("kind", "")), str(ref.get("name", ""))
        found = next((o for o in raw if o.kind == kind and o.api_version == "v1" and o.namespace == layer.obj.namespace and o.name == name), None)
        if found is None:
            if not ref.get("optional"):
                findings.append(
                    Finding(
                        layer.obj.source,
                        f"Kustomization {layer.name}: postBuild.substituteFrom {kind} {layer.obj.namespace}/{name} does not exist in the tree "
                        "(Flux fails the apply: 'substitute from' error); create it or mark the reference optional",
                    )
                )
            continue
        if kind == "ConfigMap":
            variables.update({str(k): str(v).replace("\n", "") for k, v in (found.body.get("data") or {}).items()})
        else:  # Secret: SOPS-encrypted values are not known offline, their names are
            for key, value in (found.body.get("stringData") or {}).items():
                variables[str(key)] = "<encrypted>" if "sops" in found.body else str(value)
            for key, value in (found.body.get("data") or {}).items():
                if "sops" in found.body:
                    variables[str(key)] = "<encrypted>"
                else:
                    try:
                        variables[str(key)] = base64.b64decode(str(value)).decode()
                    except (ValueError, UnicodeDecodeError):
                        variables[str(key)] = ""
    for key, value in (post.get("substitute") or {}).items():
        variables[str(key)] = str(value).replace("\n", "")
    return variables


def load_tree(root: Path, fixtures: Path) -> Tree:
    """Builds the flux-system layer, then every layer it defines (a few kubectl processes in
    parallel), and applies each layer's post-build substitution."""
    index = _source_index(root)
    tree = Tree([], [])
    top = _root_kustomization(root)
    if top is None:
        tree.findings.append(
            Finding(
                "kubernetes",
                "no Flux Kustomization flux-system/flux-system on GitRepository flux-system: nothing tells Flux where the tree starts "
                "(kubernetes/flux-system/gotk-sync.yaml, as flux bootstrap writes it)",
            )
        )
        return tree
    pending = [top]
    raw_layers: dict[tuple[str, str], tuple[Layer, list[Obj]]] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        while pending:
            batch = [k for k in pending if (k.namespace, k.name) not in raw_layers]
            pending = []
            local = [k for k in batch if on_this_repository(k)]
            builds = list(pool.map(lambda k: build(root, (root / str(k.spec.get("path") or "./")).resolve(), index) if (root / str(k.spec.get("path") or "./")).is_dir() else ([], []), local))
            for kobj, (objects, problems) in zip(local, builds):
                tree.findings.extend(problems)
                layer = Layer(kobj)
                raw_layers[layer.key] = (layer, objects)
                pending += [o for o in objects if _is_flux_kustomization(o) and (o.namespace, o.name) != layer.key]
            for kobj in batch:
                if not on_this_repository(kobj):
                    raw_layers[(kobj.namespace, kobj.name)] = (Layer(kobj), [])
    everything = [o for _, objs in raw_layers.values() for o in objs]
    sources = {(o.kind, o.namespace, o.name): o for o in everything if o.group == "source.toolkit.fluxcd.io"}
    for key, (layer, objects) in raw_layers.items():
        if not on_this_repository(layer.obj):
            layer.objects, layer.external = _external_objects(layer, sources, fixtures)
            if not layer.objects:
                tree.notes.append(Note(layer.obj.source, f"Kustomization {layer.name}: path {layer.path} inside external source {layer.external or _source_of(layer.obj)} is fetched at run time and no fixture describes it"))
            tree.layers[key] = layer
            continue
        layer.variables = _variables(layer, everything, tree.findings)
        always = (layer.obj.spec.get("postBuild") or {}).get("substituteStrategy") == "Always"
        for obj in objects:
            outcome = substitution.substitute(obj.body, layer.variables, always)
            for name in sorted(set(outcome.undefined)):
                tree.findings.append(
                    Finding(
                        obj.source,
                        f"{obj.ident()}: ${{{name}}} is not defined by the postBuild of Kustomization {layer.name} "
                        f"(defined: {', '.join(sorted(layer.variables)) or 'none'}); Flux would write an empty string",
                    )
                )
            for expr in sorted(set(outcome.unsupported)):
                tree.findings.append(Finding(obj.source, f"{obj.ident()}: substitution {expr} uses an envsubst operator the suite does not model"))
            if not layer.variables and not always:
                for expr in sorted(set(substitution.references(obj.body))):
                    tree.findings.append(
                        Finding(
                            obj.source,
                            f"{obj.ident()}: {expr} is never substituted: Kustomization {layer.name} has no postBuild variables "
                            "(add postBuild.substituteFrom the cluster-settings ConfigMap)",
                        )
                    )
            layer.objects.append(Obj(outcome.body, obj.source, layer.name))
        tree.layers[key] = layer
    seen: dict[tuple[str, str, str, str], Obj] = {}
    for layer in tree.layers.values():
        for obj in layer.objects:
            if not obj.external:
                seen.setdefault(obj.key(), obj)
    tree.objects = list(seen.values())
    return tree


def layer_of(tree: Tree, obj: Obj) -> Layer | None:
    for layer in tree.layers.values():
        if layer.name == obj.layer:
            return layer
    return None


def closure(tree: Tree, key: tuple[str, str]) -> set[tuple[str, str]]:
    """Every layer `key` depends on, directly or not (not itself)."""
    out: set[tuple[str, str]] = set()
    stack = list(tree.layers[key].depends_on()) if key in tree.layers else []
    while stack:
        dep = stack.pop()
        if dep in out or dep == key:
            continue
        out.add(dep)
        if dep in tree.layers:
            stack.extend(tree.layers[dep].depends_on())
    return out


def value(obj: Obj, *keys: Any, default: Any = None) -> Any:
    return dig(obj.body, *keys, default=default)
