"""One version everywhere, and the paths `make image` writes are the ones Terraform reads.

image-factory/versions.yaml is the one source. The Makefile and Terraform read it (checked by
running them: `make versions`, and main.tf's locals evaluated by tfeval.py); the copies that
cannot read it (the committed imager profiles, the Cargo workspace version, talosctl in
.mise.toml, the extension's compatibility range) must agree with it.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

import tfeval

RELEASE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")
# What a drift check needs from the repository.
PARTS = ["Makefile", "Cargo.toml", ".mise.toml", "renovate.json", "image-factory/versions.yaml", "image-factory/profiles",
         "extension/manifest.yaml", "terraform"]


def make_versions(root: Path) -> dict[str, str]:
    out = subprocess.run(["make", "-s", "--no-print-directory", "versions"], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


def drift(root: Path) -> list[str]:
    """Every copy of a version or path that disagrees with image-factory/versions.yaml, named by file."""
    findings: list[str] = []
    pinned = yaml.safe_load((root / "image-factory/versions.yaml").read_text())
    talos, kubernetes, extension, installer = (pinned.get(k) for k in ("talos", "kubernetes", "extension", "installer"))
    if not (isinstance(talos, str) and RELEASE.match(talos)):
        findings.append(f"image-factory/versions.yaml: talos {talos!r} is not a released version vMAJOR.MINOR.PATCH")
        return findings
    if not (isinstance(kubernetes, str) and RELEASE.match(kubernetes)):
        findings.append(f"image-factory/versions.yaml: kubernetes {kubernetes!r} is not a released version vMAJOR.MINOR.PATCH")
    installer_image = f"{installer}:{talos}-bootstrap-agent.{extension}"

    made = make_versions(root)
    expected_make = {"talos": talos, "kubernetes": kubernetes, "extension": str(extension), "installer_image": installer_image}
    for key, value in expected_make.items():
        if made.get(key) != value:
            findings.append(f"Makefile: {key} is {made.get(key)!r}, image-factory/versions.yaml says {value!r}")

    ev = tfeval.Evaluator(root / "terraform", {"sops_age_recipient": "age1" + "q" * 58})
    terraform = {
        "talos": ev.local("talos_version"),
        "kubernetes": ev.local("kubernetes_version"),
        "installer_image": ev.local("installer_image"),
    }
    for key, value in terraform.items():
        if value != expected_make[key]:
            findings.append(f"terraform/main.tf: local {key} is {value!r}, image-factory/versions.yaml says {expected_make[key]!r}")
    iso = Path(ev.local("talos_iso_path")).resolve()
    if iso != (root / made["iso"]).resolve():
        findings.append(f"terraform/main.tf: talos_iso_path is {iso}, make image writes {root / made['iso']}")

    for profile in sorted((root / "image-factory/profiles").glob("*.yaml")):
        version = yaml.safe_load(profile.read_text()).get("version")
        if version != talos:
            findings.append(f"{profile.relative_to(root)}: version is {version!r}, image-factory/versions.yaml says {talos!r} (regenerate with `image-factory profile`)")

    cargo = tomllib.loads((root / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    if cargo != str(extension):
        findings.append(f"Cargo.toml: workspace version {cargo!r} stamps the extension, image-factory/versions.yaml says extension {extension!r}")

    talosctl = tomllib.loads((root / ".mise.toml").read_text())["tools"].get("talosctl")
    if f"v{talosctl}" != talos:
        findings.append(f".mise.toml: talosctl {talosctl!r} is not the pinned Talos {talos!r}")

    manifest = yaml.safe_load((root / "extension/manifest.yaml").read_text())
    rng = manifest["metadata"]["compatibility"]["talos"]["version"]
    m = re.fullmatch(r">=\s*v?(\d+)\.(\d+)\.(\d+)", rng.strip())
    if not m:
        findings.append(f"extension/manifest.yaml: compatibility range {rng!r} is not of the form '>= vX.Y.Z' this check understands")
    elif tuple(map(int, m.groups())) > tuple(map(int, RELEASE.match(talos).groups())):
        findings.append(f"extension/manifest.yaml: compatibility range {rng!r} excludes the pinned Talos {talos}")
    return findings


def copy_parts(root: Path, dest: Path) -> Path:
    for part in PARTS:
        src = root / part
        (dest / part).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
        else:
            shutil.copy2(src, dest / part)
    return dest


def test_every_copy_of_a_version_agrees(root):
    assert drift(root) == []


def test_the_pinned_talos_is_a_release_with_a_schema(root, fixtures):
    talos = yaml.safe_load((root / "image-factory/versions.yaml").read_text())["talos"]
    assert RELEASE.match(talos), f"pin a released Talos, not {talos}"
    assert (fixtures / f"talos-{talos}.config.schema.json").is_file(), f"no config schema for Talos {talos} in {fixtures}"


@pytest.mark.parametrize(
    "path, old, new, expected",
    [
        ("image-factory/versions.yaml", "talos: v1.13.9", "talos: v1.13.10", "image-factory/profiles/secureboot-installer.yaml: version is 'v1.13.9'"),
        ("image-factory/profiles/secureboot-iso.yaml", "version: v1.13.9", "version: v1.13.8", "image-factory/profiles/secureboot-iso.yaml: version is 'v1.13.8'"),
        ("Cargo.toml", 'version = "0.1.0"', 'version = "0.2.0"', "Cargo.toml: workspace version '0.2.0'"),
        (".mise.toml", 'talosctl = "1.13.9"', 'talosctl = "1.14.0"', ".mise.toml: talosctl '1.14.0'"),
        ("extension/manifest.yaml", '">= v1.12.0"', '">= v1.14.0"', "excludes the pinned Talos v1.13.9"),
        ("terraform/main.tf", "-bootstrap-agent.${local.versions.extension}\"", "\"", "terraform/main.tf: local installer_image"),
        ("terraform/main.tf", "_out/metal-amd64-secureboot.iso", "out/talos-secureboot-amd64.iso", "terraform/main.tf: talos_iso_path"),
        ("image-factory/versions.yaml", "talos: v1.13.9", "talos: v1.14.0-rc.1", "is not a released version"),
    ],
    ids=["talos-bumped-profiles-stale", "profile", "cargo", "talosctl", "extension-range", "installer-tag", "iso-path", "pre-release"],
)
def test_a_disagreeing_copy_is_named(root, tmp_path, path, old, new, expected):
    copy = copy_parts(root, tmp_path)
    text = (copy / path).read_text()
    assert old in text, f"{old!r} not in {path}"
    (copy / path).write_text(text.replace(old, new, 1))
    findings = drift(copy)
    assert any(expected in f for f in findings), findings


def test_renovate_reads_every_pinned_version(root):
    """The annotated lines of versions.yaml and the profiles' version lines match a Renovate custom
    manager (the regexes of renovate.json, as Renovate's RE2 dialect reads in Python)."""
    config = json.loads((root / "renovate.json").read_text())
    found: dict[str, set[str]] = {}
    for manager in config["customManagers"]:
        patterns = [re.compile(p.strip("/")) for p in manager["managerFilePatterns"]]
        for path in [root / "image-factory/versions.yaml", *sorted((root / "image-factory/profiles").glob("*.yaml"))]:
            rel = str(path.relative_to(root))
            if not any(p.search(rel) for p in patterns):
                continue
            text = path.read_text()
            for ms in manager["matchStrings"]:
                for m in re.finditer(ms.replace("(?<", "(?P<"), text):
                    dep = m.groupdict().get("depName") or manager.get("depNameTemplate")
                    found.setdefault(rel, set()).add(f"{dep}@{m.group('currentValue')}")
    pinned = yaml.safe_load((root / "image-factory/versions.yaml").read_text())
    assert found["image-factory/versions.yaml"] == {f"siderolabs/talos@{pinned['talos']}", f"kubernetes/kubernetes@{pinned['kubernetes']}"}
    for profile in ("secureboot-iso", "secureboot-installer"):
        assert found[f"image-factory/profiles/{profile}.yaml"] == {f"siderolabs/talos@{pinned['talos']}"}


# ----------------------------------------------------------------------------- make targets


def test_push_installer_sends_the_tar_make_image_writes(root, tmp_path):
    """`make push-installer` copies the installer tar imager writes (a docker-archive: imager uses
    go-containerregistry's tarball.WriteToFile, pkg/imager/out.go:604-608 at v1.13.9) with skopeo."""
    copy = copy_parts(root, tmp_path / "repo")
    made = make_versions(copy)
    # A small image in the same format as the installer tar.
    layout = tmp_path / "layout"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True, capture_output=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:t"], check=True, capture_output=True)
    tar = copy / made["installer_tar"]
    tar.parent.mkdir(parents=True)
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:t", f"docker-archive:{tar}:{made['installer_image']}"], check=True, capture_output=True)
    dest = tmp_path / "pushed"
    out = subprocess.run(["make", "-s", "push-installer", f"PUSH_DEST=oci:{dest}:pushed"], cwd=copy, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    index = json.loads((dest / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == ["pushed"]
    # By default it goes to the registry and tag Terraform installs from.
    dry = subprocess.run(["make", "-n", "push-installer"], cwd=copy, capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"docker-archive:{made['installer_tar']} docker://{made['installer_image']}" in dry


def test_push_installer_without_an_image_says_how_to_build_it(root, tmp_path):
    copy = copy_parts(root, tmp_path)
    out = subprocess.run(["make", "-s", "push-installer"], cwd=copy, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "_out/installer-amd64-secureboot.tar does not exist: build it with make image BUNDLE=" in out.stderr


def test_make_image_without_a_bundle_refuses_before_building(root, tmp_path):
    copy = copy_parts(root, tmp_path)
    out = subprocess.run(["make", "-s", "image"], cwd=copy, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "make image needs the pinned bundle" in out.stderr
    assert "bundle refresh" in out.stderr and "bundle fetch --out target/bundle" in out.stderr
    assert "make image BUNDLE=target/bundle" in out.stderr


def _stub(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_make_build_installs_musl_tools_on_a_fresh_machine(root, tmp_path):
    """`make build-deps` on a machine without the musl cross compiler: it asks apt-get for
    musl-tools (ring's C code needs x86_64-linux-musl-gcc) and adds the Rust target."""
    copy = copy_parts(root, tmp_path / "repo")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for tool in ("sh", "bash", "sed", "grep", "cat", "id", "make", "env", "file", "cc"):
        target = shutil.which(tool)
        assert target, tool
        (bin_dir / tool).symlink_to(target)
    _stub(bin_dir, "apt-get", f'echo "apt-get $*" >> {log}\n')
    _stub(bin_dir, "sudo", f'echo "sudo $*" >> {log}\n"$@"\n')
    _stub(bin_dir, "rustup", f'echo "rustup $*" >> {log}\n')
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    out = subprocess.run([str(bin_dir / "make"), "-s", "build-deps"], cwd=copy, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert any(c.startswith("apt-get install") and c.split()[-1] == "musl-tools" for c in calls), calls
    assert "rustup target add x86_64-unknown-linux-musl" in calls, calls


def test_make_build_without_apt_names_the_packages(root, tmp_path):
    copy = copy_parts(root, tmp_path / "repo")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "bash", "sed", "grep", "make", "id"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    out = subprocess.run([str(bin_dir / "make"), "-s", "build-deps"], cwd=copy, env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "make build needs these Debian/Ubuntu packages: musl-tools file gcc libc6-dev" in out.stderr
