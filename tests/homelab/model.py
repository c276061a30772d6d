"""What every check works with: findings, notes, reports, and Kubernetes objects with their origin."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, order=True)
class Finding:
    """A problem: the file it is in and what is wrong (the message names the object)."""

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

    def find(self, path: str, message: str) -> None:
        self.findings.append(Finding(path, message))

    def note(self, path: str, message: str) -> None:
        self.notes.append(Note(path, message))

    def render(self) -> str:
        lines = [f"ERROR {f}" for f in sorted(set(self.findings))]
        lines += [f"NOTE  {n}" for n in sorted(set(self.notes))]
        return "\n".join(lines)


@dataclass
class Obj:
    """One Kubernetes object as Flux applies it, with the file it came from and the Flux
    Kustomization (layer) that applies it."""

    body: dict[str, Any]
    source: str
    layer: str = ""
    # True for objects of a layer whose path is in another source (known from fixtures):
    # they take part in ordering and ownership, not in the schema checks.
    external: bool = False

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

    def key(self) -> tuple[str, str, str, str]:
        return (self.group, self.kind, self.namespace, self.name)

    def ident(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {ns}{self.name}"


def rel(root: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def dig(value: Any, *keys: Any, default: Any = None) -> Any:
    """value[k1][k2]... or `default` when any step is missing or of the wrong type."""
    for key in keys:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
            value = value[key]
        else:
            return default
    return value


def yaml_loader() -> Any:
    """libyaml's loader when PyYAML has it (the fixtures are megabytes of YAML)."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=32)
def _fixture_docs(path: str, mtime: float) -> tuple[Any, ...]:
    import yaml

    with open(path) as handle:
        return tuple(yaml.load_all(handle.read(), Loader=yaml_loader()))


def fixture_docs(path: Any) -> tuple[Any, ...]:
    """The YAML documents of an upstream fixture, parsed once per run (do not modify them)."""
    p = Path(path)
    return _fixture_docs(str(p), p.stat().st_mtime)


@functools.lru_cache(maxsize=64)
def hcl(text: str) -> Any:
    """python-hcl2's parse of a Terraform file's text, once per distinct text."""
    import hcl2

    return hcl2.loads(text)
