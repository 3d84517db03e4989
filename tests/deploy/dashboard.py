"""The provisioned Grafana dashboard read back: its panels, their PromQL, and the metric families that names."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "paymesh.json"

# paymesh's own series and the gRPC server's (paymesh/chassis/metrics.py); process_*, up and the like are not ours.
METRIC_PREFIXES = ("paymesh_", "grpc_server_")
# A histogram's series are named after its family, which is what a scrape's `# TYPE` line names. A counter's
# family is named there with its `_total`, as the expressions write it, so that suffix stays.
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

_QUOTED = r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`'
_STRING = re.compile(_QUOTED)
_NAME_MATCHER = re.compile(rf"\b__name__\s*=\s*({_QUOTED})")  # {__name__="x"} selects metric x
_COMMENT = re.compile(r"#[^\n]*")
_SELECTOR_OR_RANGE = re.compile(r"\{[^}]*\}|\[[^\]]*\]")  # label matchers, `[1m]`, `[5m:30s]`
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# A whole identifier (not part of a number such as 1e3, nor of a longer name) that is not called as a function.
_IDENTIFIER = re.compile(r"(?<![\w.:])[a-zA-Z_:][a-zA-Z0-9_:]*(?![\w:])(?!\s*\()")


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside a collapsed row."""
    for panel in dashboard.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets") or [] if "expr" in target]


def metric_names(expr: str) -> set[str]:
    """The paymesh and gRPC metric families one PromQL expression reads; function names, label names, label
    values and durations are not metrics, and a histogram's `_bucket`/`_count`/`_sum` series name its family."""
    found = [m.group(1)[1:-1] for m in _NAME_MATCHER.finditer(expr)]
    text = _STRING.sub('""', expr)
    text = _COMMENT.sub("", text)
    text = _SELECTOR_OR_RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    found += _IDENTIFIER.findall(text)
    names = set()
    for name in found:
        if not name.startswith(METRIC_PREFIXES):
            continue
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                break
        names.add(name)
    return names


def dashboard_metric_names(path: Path = DASHBOARD) -> set[str]:
    """The metric families every query of the dashboard reads, as a live scrape's `# TYPE` lines name them."""
    return {name for expr in exprs(load_dashboard(path)) for name in metric_names(expr)}
