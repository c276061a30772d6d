"""Shared fixtures: the repository root, the upstream CRD fixtures, broken copies."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import homelab_check  # noqa: E402

# What a broken copy needs: the tree, the Terraform, and the root dotfiles.
COPIED = [
    "kubernetes",
    "terraform",
    "image-factory/versions.yaml",
    ".sops.yaml",
    ".gitleaks.toml",
    "renovate.json",
    ".mise.toml",
    "lefthook.yml",
    "README.md",
    "agent/bundle/bundle.lock.yaml",
]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def fixtures() -> Path:
    path = homelab_check.default_fixtures(ROOT)
    if not list(path.glob("*.crds.yaml")):
        pytest.fail(
            f"upstream CRD fixtures not found in {path}: clone shared/ beside the repository "
            "(../shared/fixtures/upstream) or set HOMELAB_CRD_FIXTURES; the schema checks cannot run without them"
        )
    return path


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A scratch copy of the homelab parts of the repository, to break."""
    dest = tmp_path / "repo"
    dest.mkdir()
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
        elif src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest
