"""HelmRelease values against the chart at the pinned version.

Helm validates the values against the chart's `values.schema.json` before it renders anything
(helm pkg/chartutil `ValidateAgainstSchema`); an unknown key is an error where the schema says
`additionalProperties: false`, and only there. The schemas come from the upstream fixtures
(`<chart>-<version>.values.schema.json`), each validated in its own JSON-schema dialect. A chart
without a schema accepts any key, so its keys are checked against the chart's default
`values.yaml` (`<chart>-<version>.values.yaml`): a key the chart never reads is a typo.

The suite validates the values the HelmRelease sets (after Flux's substitution), not Helm's
merge of them over the chart defaults; unknown keys and wrong types are caught the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from flux_tree import Tree
from model import Obj, Report, dig
from schemas import validate_with


def _versions(version: str) -> list[str]:
    bare = version.removeprefix("v")
    return [version, bare, f"v{bare}"]


def fixture_for(fixtures: Path, chart: str, version: str) -> tuple[str, Path | None, list[str]]:
    """('schema' | 'defaults' | '', the fixture, fixtures of other versions of the chart)."""
    for v in _versions(version):
        schema = fixtures / f"{chart}-{v}.values.schema.json"
        if schema.is_file():
            return "schema", schema, []
        defaults = fixtures / f"{chart}-{v}.values.yaml"
        if defaults.is_file():
            return "defaults", defaults, []
    others = sorted(p.name for p in fixtures.glob(f"{chart}-*.values.*"))
    return "", None, others


def unknown_keys(values: Any, defaults: Any, path: str = "") -> list[str]:
    """Keys of `values` that the chart's default values.yaml does not have, where the default
    is a non-empty map (an empty map or null default takes anything)."""
    problems = []
    if not isinstance(values, dict):
        return problems
    if not isinstance(defaults, dict):
        if defaults is not None and values:
            problems.append(f"{path or '.'}: is a map, but the chart's default is {type(defaults).__name__} {defaults!r}")
        return problems
    if not defaults:
        return problems
    for key, value in values.items():
        here = f"{path}.{key}" if path else str(key)
        if key not in defaults:
            close = [k for k in defaults if k.lower() == str(key).lower() or k.lower().startswith(str(key).lower()[:4])]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            problems.append(f"{here}: the chart has no such value{hint}")
        else:
            problems += unknown_keys(value, defaults[key], here)
    return problems


def check_values(tree: Tree, fixtures: Path) -> Report:
    report = Report()
    for hr in tree.by_kind("HelmRelease", "helm.toolkit.fluxcd.io"):
        chart = str(dig(hr.spec, "chart", "spec", "chart", default=""))
        version = str(dig(hr.spec, "chart", "spec", "version", default=""))
        if not chart:
            report.note(hr.source, f"{hr.ident()}: chart from chartRef: values not checked offline")
            continue
        values = hr.spec.get("values") or {}
        kind, fixture, others = fixture_for(fixtures, chart, version)
        if fixture is None:
            if others:
                report.find(
                    hr.source,
                    f"{hr.ident()}: chart {chart} is pinned at {version}, but the values fixtures are for another version ({', '.join(others)}): "
                    f"add {chart}-{version}.values.schema.json (or values.yaml) to the upstream fixtures",
                )
            else:
                report.note(hr.source, f"{hr.ident()}: no values.schema.json or values.yaml of chart {chart} {version} among the upstream fixtures: values not checked")
            continue
        if kind == "schema":
            schema = json.loads(fixture.read_text())
            for problem in validate_with(schema, values)[:10]:
                report.find(hr.source, f"{hr.ident()}: spec.values: {problem} [chart {chart} {version} values.schema.json]")
        else:
            defaults = yaml.safe_load(fixture.read_text()) or {}
            for problem in unknown_keys(values, defaults):
                report.find(hr.source, f"{hr.ident()}: spec.values.{problem} [chart {chart} {version} has no values.schema.json; keys checked against its values.yaml]")
    return report


def chart_of(obj: Obj) -> tuple[str, str]:
    return str(dig(obj.spec, "chart", "spec", "chart", default="")), str(dig(obj.spec, "chart", "spec", "version", default=""))
