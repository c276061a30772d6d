"""Versions: the same component pinned in several places agrees, and the pinned versions are
compatible with each other as compatibility.yaml writes down (with its upstream sources).

Pins compared:
- cert-manager: the HelmRelease's chart version, the bundle lock's `cert-manager-crds` (the CRDs
  the bootstrap agent pre-installs: they must be the chart's own), its URL;
- Gateway API: the tag of the GitRepository's commit pin (its Renovate annotation), the bundle
  lock's `gateway-api-crds`, its URL;
- Flux: the `flux-components` OCIRepository tag and the bundle lock's `flux-components`, and
  their manifest digests: once either side carries one, both carry the same;
- the versions the README pins (`<component> vX.Y.Z`, also written `<component> (**vX.Y.Z**)`):
  cert-manager, Gateway API and Flux against the pins above; Talos and Kubernetes against
  image-factory/versions.yaml (and the installer tag `<talos>-bootstrap-agent.<extension>`);
  Traefik and Kyverno against their HelmRelease: `<component> chart X.Y.Z` is the chart version,
  `<component> vX.Y.Z` the application version of that chart (compatibility.yaml, whose chart
  check_compatibility ties to the HelmRelease's). Only full versions are pins: a release line
  ("Talos 1.13 rejects …", "Kyverno 1.19 is tested on …", "Talos 1.12+") is a statement about
  it and not compared.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from flux_tree import Tree
from model import Report, dig, fixture_docs, hcl

HERE = Path(__file__).resolve().parent
COMPATIBILITY = HERE / "compatibility.yaml"
BUNDLE_LOCK = "agent/bundle/bundle.lock.yaml"
RENOVATE_TAG = re.compile(r"#\s*renovate:.*\bdepName=(?P<dep>\S+).*\btag=(?P<tag>\S+)")
SEMVER = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")


def minor(version: str) -> str:
    m = SEMVER.search(str(version))
    return f"{m.group(1)}.{m.group(2)}" if m else ""


def _norm(version: str) -> str:
    return str(version).removeprefix("v")


def bundle_artifacts(root: Path) -> dict[str, dict[str, Any]]:
    path = root / BUNDLE_LOCK
    if not path.is_file():
        return {}
    doc = yaml.safe_load(path.read_text()) or {}
    return {str(a.get("name")): a for a in doc.get("artifacts") or [] if isinstance(a, dict)}


def _helm_chart_version(tree: Tree, chart: str) -> tuple[str, str] | None:
    for hr in tree.by_kind("HelmRelease", "helm.toolkit.fluxcd.io"):
        if dig(hr.spec, "chart", "spec", "chart") == chart:
            return str(dig(hr.spec, "chart", "spec", "version", default="")), hr.source
    return None


def gateway_api_pin(root: Path, tree: Tree) -> tuple[str, str] | None:
    """The Gateway API tag the tree pins (the Renovate annotation above its commit pin)."""
    for obj in tree.by_kind("GitRepository", "source.toolkit.fluxcd.io"):
        if "kubernetes-sigs/gateway-api" in str(obj.spec.get("url", "")):
            text = (root / obj.source).read_text() if (root / obj.source).is_file() else ""
            m = RENOVATE_TAG.search(text)
            return (m.group("tag"), obj.source) if m else ("", obj.source)
    return None


VERSIONS_FILE = "image-factory/versions.yaml"


def versions_file(root: Path) -> dict[str, str]:
    """The `key: value` lines of image-factory/versions.yaml, read as the Makefile reads them."""
    path = root / VERSIONS_FILE
    values: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            m = re.match(r"^([a-z_]+):\s*(\S+)", line)
            if m:
                values[m.group(1)] = m.group(2)
    return values


def pinned_talos(root: Path) -> tuple[str, str | None, str]:
    """(Talos version, Kubernetes version or None, where) from image-factory/versions.yaml, the
    one place both are pinned (the Makefile, image-factory, Terraform and Renovate read it)."""
    values = versions_file(root)
    return values.get("talos", ""), values.get("kubernetes"), VERSIONS_FILE


def _compare(report: Report, component: str, pins: list[tuple[str, str, str]]) -> None:
    """pins: (where, what, version). All must agree."""
    present = [(w, what, v) for w, what, v in pins if v]
    if len({_norm(v) for _, _, v in present}) > 1:
        listing = "; ".join(f"{what} = {v} ({w})" for w, what, v in present)
        report.find(present[0][0], f"{component} is pinned at different versions: {listing}; move them together")


def check_versions(root: Path, tree: Tree) -> Report:
    report = Report()
    lock = bundle_artifacts(root)
    cm = _helm_chart_version(tree, "cert-manager")
    crds = lock.get("cert-manager-crds", {})
    if cm:
        _compare(
            report,
            "cert-manager",
            [
                (cm[1], "HelmRelease cert-manager chart version", cm[0]),
                (BUNDLE_LOCK, "bundle lock cert-manager-crds version", str(crds.get("version", ""))),
                (BUNDLE_LOCK, "bundle lock cert-manager-crds url", _url_version(crds.get("url"))),
            ],
        )
    gw = gateway_api_pin(root, tree)
    gw_lock = lock.get("gateway-api-crds", {})
    if gw:
        _compare(
            report,
            "Gateway API",
            [
                (gw[1], "GitRepository gateway-api tag (renovate annotation)", gw[0]),
                (BUNDLE_LOCK, "bundle lock gateway-api-crds version", str(gw_lock.get("version", ""))),
                (BUNDLE_LOCK, "bundle lock gateway-api-crds url", _url_version(gw_lock.get("url"))),
            ],
        )
    # Flux: the agent installs the very artifact Git's flux-components OCIRepository applies:
    # same repository, same tag, and (once pinned) the same manifest digest.
    flux = None
    flux_tag = ""
    for obj in tree.by_kind("OCIRepository", "source.toolkit.fluxcd.io"):
        if str(obj.spec.get("url", "")).endswith("/fluxcd/flux-manifests"):
            flux = obj
    flux_lock = lock.get("flux-components", {})
    if flux is not None:
        url = str(flux.spec.get("url", "")).removeprefix("oci://")
        tag = str(dig(flux.spec, "ref", "tag", default=""))
        flux_tag = tag
        digest = str(dig(flux.spec, "ref", "digest", default="") or "")
        _compare(
            report,
            "Flux",
            [
                (flux.source, "OCIRepository flux-components tag", tag),
                (BUNDLE_LOCK, "bundle lock flux-components version", str(flux_lock.get("version", ""))),
            ],
        )
        if str(flux_lock.get("oci", "")) != url:
            report.find(
                BUNDLE_LOCK,
                f"bundle lock flux-components is {flux_lock.get('oci') or flux_lock.get('url')!r}, but Git's flux-components OCIRepository ({flux.source}) applies {url}: the agent must install the artifact Git owns",
            )
        # Symmetric: whichever side carries a digest, the other must carry the same one (both
        # empty is "not pinned yet", which the agent refuses on its own).
        lock_digest = str(flux_lock.get("digest", "") or "")
        if digest and lock_digest and digest != lock_digest:
            report.find(
                BUNDLE_LOCK,
                f"Flux is pinned at different digests: OCIRepository flux-components = {digest} ({flux.source}); bundle lock flux-components = {lock_digest}; run `bootstrap-agent bundle refresh` and copy the digest",
            )
        if digest and not lock_digest:
            report.find(
                BUNDLE_LOCK,
                f"Git pins flux-manifests at {digest} ({flux.source}) but the bundle lock has no digest: run `bootstrap-agent bundle refresh`",
            )
        if lock_digest and not digest:
            report.find(
                flux.source,
                f"OCIRepository {flux.namespace}/{flux.name}: the bundle lock pins flux-components at {lock_digest} ({BUNDLE_LOCK}) but ref.digest is unset: "
                "Git follows the tag while the agent installs that digest; copy it into ref.digest",
            )
    check_readme(root, tree, report, cm, gw, flux_tag)
    return report


# A version right after the component's name: `Talos v1.13.9`, `Talos (**v1.13.9**)`.
_AFTER_NAME = r"[ \t\n(*`]+"
_FULL_VERSION = r"(v?\d+\.\d+\.\d+)"


def _mentions(text: str, name: str) -> list[re.Match[str]]:
    words = r"\s+".join(re.escape(w) for w in name.split())
    return list(re.finditer(rf"(?<![\w/.-]){words}{_AFTER_NAME}{_FULL_VERSION}(?![\w.]*\d)", text))


def _readme_line(text: str, m: re.Match[str]) -> str:
    return f"README.md:{text.count(chr(10), 0, m.start()) + 1}"


def check_readme(root: Path, tree: Tree, report: Report, cm: tuple[str, str] | None, gw: tuple[str, str] | None, flux_tag: str) -> None:
    """The versions the README pins (see the module docstring) against the tree's."""
    readme = root / "README.md"
    if not readme.is_file():
        return
    text = readme.read_text()
    pinned = versions_file(root)
    flux_where = next((o.source for o in tree.by_kind("OCIRepository", "source.toolkit.fluxcd.io") if o.name == "flux-components"), "")
    # component -> (version, where the tree pins it)
    known: dict[str, tuple[str, str]] = {
        "cert-manager": (cm[0], cm[1]) if cm else ("", ""),
        "Gateway API": (gw[0], gw[1]) if gw else ("", ""),
        "Flux": (flux_tag, flux_where),
        "Talos": (pinned.get("talos", ""), VERSIONS_FILE),
        "Kubernetes": (pinned.get("kubernetes", ""), VERSIONS_FILE),
    }
    for component, (version, where) in known.items():
        if not version:
            continue
        for m in _mentions(text, component):
            if _norm(m.group(1)) != _norm(version):
                report.find(_readme_line(text, m), f"README says {component} {m.group(1)}, the tree pins {version} ({where})")
    # The installer tag: <talos>-bootstrap-agent.<extension> (terraform/main.tf, the Makefile).
    talos, extension = pinned.get("talos", ""), pinned.get("extension", "")
    if talos and extension:
        for m in re.finditer(r"(?<![\w.-])(v?\d+\.\d+\.\d+)-bootstrap-agent\.(\d+\.\d+\.\d+)", text):
            if _norm(m.group(1)) != _norm(talos) or m.group(2) != extension:
                report.find(
                    _readme_line(text, m),
                    f"README says installer tag {m.group(0)}, the tree pins Talos {talos} and extension {extension} ({VERSIONS_FILE}): the tag is {talos}-bootstrap-agent.{extension}",
                )
    # Charts: `<component> chart X.Y.Z` is the HelmRelease's chart version; `<component> vX.Y.Z`
    # the application version of that chart as compatibility.yaml writes it down.
    facts = compatibility()
    for component, chart, app_key in (("Traefik", "traefik", "proxy"), ("Kyverno", "kyverno", "app")):
        release = _helm_chart_version(tree, chart)
        if release is None:
            continue
        chart_facts = facts.get(chart) or {}
        app = str(chart_facts.get(app_key, "")) if str(chart_facts.get("chart")) == release[0] else ""
        for m in _mentions(text, f"{component} chart"):
            if _norm(m.group(1)) != _norm(release[0]):
                report.find(_readme_line(text, m), f"README says {component} chart {m.group(1)}, the tree pins chart {release[0]} ({release[1]})")
        for m in _mentions(text, component):
            if app and _norm(m.group(1)) != _norm(app):
                report.find(
                    _readme_line(text, m),
                    f"README says {component} {m.group(1)}, the tree pins {app} (chart {release[0]}, {release[1]}; its appVersion in tests/homelab/compatibility.yaml)",
                )


def _url_version(url: Any) -> str:
    m = re.search(r"/download/(v?\d+\.\d+\.\d+[^/]*)/", str(url or ""))
    return m.group(1) if m else ""


def compatibility() -> dict[str, Any]:
    return yaml.safe_load(COMPATIBILITY.read_text()) or {}


def check_compatibility(root: Path, tree: Tree, fixtures: Path) -> Report:
    report = Report()
    compat = compatibility()
    where = "tests/homelab/compatibility.yaml"

    traefik = _helm_chart_version(tree, "traefik")
    facts = compat.get("traefik") or {}
    if traefik and traefik[0] != str(facts.get("chart")):
        report.find(
            traefik[1],
            f"HelmRelease traefik pins chart {traefik[0]} but {where} holds the compatibility facts of chart {facts.get('chart')}: "
            "re-read the new chart's Gateway API support (README, Traefik's kubernetes-gateway docs and client.go) and update the file",
        )
    gw = gateway_api_pin(root, tree)
    gw_fixture = fixtures / "gateway-api.standard.crds.yaml"
    if gw and gw_fixture.is_file():
        served: dict[str, set[str]] = {}
        bundle_version = ""
        for crd in fixture_docs(gw_fixture):
            if isinstance(crd, dict) and crd.get("kind") == "CustomResourceDefinition":
                kind = crd["spec"]["names"]["kind"]
                served[kind] = {v["name"] for v in crd["spec"]["versions"] if v.get("served")}
                bundle_version = dig(crd, "metadata", "annotations", "gateway.networking.k8s.io/bundle-version", default=bundle_version)
        if _norm(bundle_version) != _norm(gw[0]):
            report.find(gw[1], f"Gateway API is pinned at {gw[0]} but the CRD fixtures are {bundle_version}: add the {gw[0]} CRDs to the upstream fixtures")
        else:
            for kind, version in (facts.get("gateway_api_reads") or {}).items():
                if version not in served.get(kind, set()):
                    report.find(
                        gw[1],
                        f"Gateway API {gw[0]} does not serve {kind} {version}, which Traefik {facts.get('proxy')} reads ({where}): its Gateway provider cannot start",
                    )
        conformance = str(facts.get("gateway_api_conformance", ""))
        accepted = facts.get("gateway_api_accepted") or {}
        if minor(gw[0]) != minor(conformance) and gw[0] not in accepted:
            report.find(
                gw[1],
                f"Gateway API {gw[0]} is not the version Traefik {facts.get('proxy')} implements ({conformance}) and {where} does not accept it (gateway_api_accepted)",
            )

    cm = _helm_chart_version(tree, "cert-manager")
    cm_fixture = fixtures / "cert-manager.crds.yaml"
    if cm and cm_fixture.is_file():
        labelled = {str(dig(d, "metadata", "labels", "app.kubernetes.io/version", default="")) for d in fixture_docs(cm_fixture) if isinstance(d, dict)}
        if {_norm(v) for v in labelled} != {_norm(cm[0])}:
            report.find(cm[1], f"HelmRelease cert-manager pins chart {cm[0]} but the cert-manager CRD fixtures are {', '.join(sorted(labelled))}: add the CRDs of {cm[0]} to the upstream fixtures")

    kyverno = _helm_chart_version(tree, "kyverno")
    kfacts = compat.get("kyverno") or {}
    app = str(kfacts.get("app", ""))
    if kyverno and not list(fixtures.glob(f"kyverno-{app}.*.yaml")):
        report.find(kyverno[1], f"no Kyverno {app} CRD fixtures (kyverno-{app}.*.yaml) to check the policies against")
    if kyverno and kyverno[0] != str(kfacts.get("chart")):
        report.find(kyverno[1], f"HelmRelease kyverno pins chart {kyverno[0]} but {where} holds the facts of chart {kfacts.get('chart')}: re-read its tested Kubernetes range and update the file")
    talos, explicit, talos_where = pinned_talos(root)
    kube = minor(explicit) if explicit else str((compat.get("talos_default_kubernetes") or {}).get(minor(talos), ""))
    if not kube:
        report.find(talos_where, f"Talos {talos}: its default Kubernetes version is not written down in {where} (talos_default_kubernetes); read constants.go at that tag")
    elif kyverno:
        low, high = (kfacts.get("kubernetes_tested") or ["", ""])[:2]
        inside = _minor_tuple(low) <= _minor_tuple(kube) <= _minor_tuple(high)
        if not inside and kube not in (kfacts.get("kubernetes_accepted") or {}):
            report.find(
                kyverno[1],
                f"Kyverno {kfacts.get('app')} is tested on Kubernetes {low} to {high}, the cluster runs {kube} (Talos {talos}, {talos_where}) and {where} does not accept it",
            )
    return report


def kubernetes_minor(root: Path) -> str:
    talos, explicit, _ = pinned_talos(root)
    if explicit:
        return minor(explicit)
    return str((compatibility().get("talos_default_kubernetes") or {}).get(minor(talos), ""))


def _minor_tuple(version: str) -> tuple[int, int]:
    m = SEMVER.search(str(version))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)
