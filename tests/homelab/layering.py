"""What the layers (Flux Kustomizations) may apply, and in which order.

- Ordering: kustomize-controller validates every object with a server-side dry-run before it
  applies any (fluxcd/kustomize-controller, the `apply` of a revision), so a custom resource
  whose CRD the same layer installs fails with "no matches for kind" until the CRD exists by
  other means: a deadlock. Every custom resource's kind must therefore be installed by a
  strictly earlier layer (one in its dependsOn closure). Flux's own kinds exist before any
  layer: the bootstrap (the agent's bundle, or `flux bootstrap`) installs them. The CRDs the
  agent also pre-installs (cert-manager, Gateway API) do not count: the tree must stand on its
  own, on a cluster bootstrapped without the agent or after a CRD is deleted.
- Ownership: an object applied by two Kustomizations flips between their versions and is
  pruned by whichever lets go of it first.
- Decryption: a layer decrypts exactly when its path holds SOPS-encrypted files; decryption
  elsewhere only makes the layer wait for the key (the flux-system Kustomization must sync
  before the key is sealed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from flux_tree import Layer, Tree, closure, on_this_repository
from model import Obj, Report, dig, rel
from schemas import crd_documents, is_custom
from versions import compatibility

FLUX_GROUP_SUFFIX = ".toolkit.fluxcd.io"
BUNDLE_LOCK = "agent/bundle/bundle.lock.yaml"

# CRDs a chart installs, by chart name: the fixtures holding them and the chart value that turns
# them on (path, default). cert-manager: `crds.enabled` (default false) or the older
# `installCRDs` (deploy/charts/cert-manager/values.yaml at v1.21.1); Kyverno: `crds.install`
# (default true; the `crds` and `kyverno-api` subcharts, charts/kyverno/Chart.yaml at
# kyverno-chart-3.9.0); the Kyverno fixtures are those of the app version compatibility.yaml names).
CHART_CRDS: dict[str, tuple[list[str], list[tuple[tuple[str, ...], bool]]]] = {
    "cert-manager": (["cert-manager.crds.yaml"], [(("crds", "enabled"), False), (("installCRDs",), False)]),
    "kyverno": (["kyverno-{app}.kyverno.io_clusterpolicies.yaml", "kyverno-{app}.policies.kyverno.io_imagevalidatingpolicies.yaml"], [(("crds", "install"), True)]),
}


def _chart(obj: Obj) -> str:
    return str(dig(obj.spec, "chart", "spec", "chart", default=""))


def _chart_installs(obj: Obj, fixtures: Path) -> set[tuple[str, str]]:
    entry = CHART_CRDS.get(_chart(obj))
    if not entry:
        return set()
    files, switches = entry
    values = obj.spec.get("values") or {}
    if not any(bool(dig(values, *path, default=default)) for path, default in switches):
        return set()
    kinds: set[tuple[str, str]] = set()
    app = str((compatibility().get(_chart(obj)) or {}).get("app", ""))
    for name in (f.format(app=app) for f in files):
        if (fixtures / name).is_file():
            for crd in crd_documents(fixtures / name):
                kinds.add((crd["spec"]["group"], crd["spec"]["names"]["kind"]))
    return kinds


def installed_kinds(layer: Layer, fixtures: Path) -> set[tuple[str, str]]:
    kinds: set[tuple[str, str]] = set()
    for obj in layer.objects:
        if obj.kind == "CustomResourceDefinition":
            kinds.add((str(dig(obj.body, "spec", "group", default="")), str(dig(obj.body, "spec", "names", "kind", default=""))))
        if obj.kind == "HelmRelease" and obj.group == "helm.toolkit.fluxcd.io":
            kinds |= _chart_installs(obj, fixtures)
    return kinds


def bundle_crd_artifacts(root: Path) -> list[str]:
    path = root / BUNDLE_LOCK
    if not path.is_file():
        return []
    doc = yaml.safe_load(path.read_text()) or {}
    return [f"{a.get('name')} {a.get('version')}" for a in doc.get("artifacts") or [] if isinstance(a, dict)]


def check_ordering(root: Path, tree: Tree, fixtures: Path) -> Report:
    report = Report()
    installers: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for key, layer in tree.layers.items():
        for kind in installed_kinds(layer, fixtures):
            installers.setdefault(kind, set()).add(key)
    bundle = ", ".join(bundle_crd_artifacts(root)) or "none"
    for key, layer in sorted(tree.layers.items()):
        before = closure(tree, key)
        for obj in layer.objects:
            if obj.external or not is_custom(obj) or obj.kind == "CustomResourceDefinition":
                continue
            if obj.group.endswith(FLUX_GROUP_SUFFIX):
                continue  # installed by the bootstrap, before any layer
            kind = (obj.group, obj.kind)
            sources = installers.get(kind, set())
            if sources & before:
                continue
            what = f"{obj.ident()} ({obj.api_version}) in layer {layer.name}"
            if key in sources:
                report.find(
                    obj.source,
                    f"{what}: its CRD is installed by the same layer, so Flux's server-side dry-run fails with 'no matches for kind {obj.kind}' "
                    "until the CRD exists: move it to a layer that depends on this one",
                )
            elif sources:
                names = ", ".join(sorted(f"{n}/{m}" for n, m in sources))
                chain = ", ".join(sorted(f"{n}/{m}" for n, m in before)) or "nothing"
                report.find(obj.source, f"{what}: its CRD is installed by layer {names}, which {layer.name} does not depend on (its dependsOn closure: {chain})")
            else:
                report.find(
                    obj.source,
                    f"{what}: no layer of the tree installs its CRD ({obj.group}); the bootstrap agent's bundle ({bundle}) may pre-install it, "
                    "but the tree must not rely on that",
                )
    return report


def chart_rendered(layer: Layer) -> list[Obj]:
    """Objects a chart renders that the tree may also define: Traefik's default GatewayClass and
    Gateway (traefik/templates/gatewayclass.yaml and gateway.yaml at v41.3.0: rendered when
    `gatewayClass.enabled` / `gateway.enabled`, both true by default in values.yaml, and
    `providers.kubernetesGateway.enabled`)."""
    out = []
    for hr in layer.objects:
        if hr.kind != "HelmRelease" or _chart(hr) != "traefik":
            continue
        values: dict[str, Any] = hr.spec.get("values") or {}
        if not dig(values, "providers", "kubernetesGateway", "enabled", default=False):
            continue
        ns = str(hr.spec.get("targetNamespace") or hr.namespace)
        where = f"{hr.source} (rendered by chart traefik of HelmRelease {hr.namespace}/{hr.name})"
        if dig(values, "gatewayClass", "enabled", default=True):
            name = dig(values, "gatewayClass", "name", default="") or "traefik"
            out.append(Obj({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": name}}, where, layer.name))
        if dig(values, "gateway", "enabled", default=True):
            name = dig(values, "gateway", "name", default="") or "traefik-gateway"
            gw_ns = dig(values, "gateway", "namespace", default="") or ns
            out.append(Obj({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": name, "namespace": gw_ns}}, where, layer.name))
    return out


def check_ownership(tree: Tree) -> Report:
    report = Report()
    owners: dict[tuple[str, str, str, str], list[Obj]] = {}
    for layer in tree.layers.values():
        for obj in layer.objects + chart_rendered(layer):
            owners.setdefault(obj.key(), []).append(obj)
    for (group, kind, ns, name), objs in sorted(owners.items()):
        layers = sorted({o.layer for o in objs})
        if len(layers) < 2 and len({o.source for o in objs}) < 2:
            continue
        ident = f"{kind} {ns + '/' if ns else ''}{name}"
        places = "; ".join(sorted(f"layer {o.layer}: {o.source}" for o in objs))
        if len(layers) > 1:
            report.find(objs[0].source, f"{ident} is applied by {len(layers)} Flux Kustomizations ({places}): each overwrites the other and prunes it when it lets go; keep one owner")
        else:
            report.find(objs[0].source, f"{ident} is produced twice in layer {layers[0]} ({places}): the chart and the tree both create it; keep one")
    return report


def check_decryption(root: Path, tree: Tree) -> Report:
    report = Report()
    for key, layer in sorted(tree.layers.items()):
        if not on_this_repository(layer.obj):
            continue
        target = (root / layer.path).resolve()
        if not target.is_dir():
            continue
        encrypted = sorted(rel(root, p) for p in target.rglob("*.enc.*"))
        decrypts = bool(layer.obj.spec.get("decryption"))
        provider = dig(layer.obj.spec, "decryption", "provider")
        if key == ("flux-system", "flux-system") and decrypts:
            report.find(
                layer.obj.source,
                f"Kustomization {layer.name}: spec.decryption is set, so Flux cannot update itself until flux-system/sops-age exists; "
                "nothing under its path may be encrypted and it must not decrypt (keep encrypted files in the layers that need them)",
            )
        if encrypted and provider != "sops":
            report.find(layer.obj.source, f"Kustomization {layer.name}: path {layer.path} holds SOPS-encrypted files ({', '.join(encrypted)}) but spec.decryption is not set to provider sops")
        elif not encrypted and decrypts and key != ("flux-system", "flux-system"):
            report.find(
                layer.obj.source,
                f"Kustomization {layer.name}: spec.decryption is set but path {layer.path} holds no encrypted file: the layer waits for the SOPS key for nothing; remove it",
            )
    return report
