"""`paymesh bench` runs end to end and reports every figure the JSON promises (no speed is asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from paymesh.ops.natsserver import free_port
from paymesh.ops.services import NAMES, SPECS


def bench(tmp_path: Path, *flags: str) -> dict[str, Any]:
    env = dict(os.environ, PAYMESH_NATS_PORT=str(free_port()))
    env.pop("PAYMESH_NATS_URL", None)
    for service in SPECS:
        env[f"{service.env_prefix}_GRPC_ADDR"] = f"127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "paymesh.ops.cli", "bench", "--concurrency", "4", "--duration", "3", "--warmup", "1",
         "--json", "--data-dir", str(tmp_path / "data"), *flags],
        env=env, capture_output=True, text=True, timeout=110,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.timeout(120)
def test_bench_reports_the_promised_figures(tmp_path: Path) -> None:
    report = bench(tmp_path)
    assert report["sagas_completed"] > 0 and report["sagas_per_s"] > 0
    for key in ("e2e_ms", "create_ms"):
        assert set(report[key]) >= {"p50", "p95", "p99", "max"}
        assert 0 < report[key]["p50"] <= report[key]["p99"] <= report[key]["max"]
    assert report["outcomes"] == {"CONFIRMED": report["sagas_completed"]}
    assert report["errors"] == {}
    assert set(report["processes"]) == set(NAMES) | {"nats-server", "bench-client"}
    for p in report["processes"].values():
        assert p["peak_rss_mb"] >= p["rss_end_mb"] > 0 and p["rss_start_mb"] > 0, p
    assert report["lag_drained_ms"] is not None, "outbox and consumers drained once the load stopped"
    assert sum(report["consumer_lag"].values()) == 0 and sum(report["outbox_lag"].values()) == 0
    assert "webhook" not in report  # without --webhook, no endpoint and no figure


@pytest.mark.timeout(120)
def test_bench_with_webhook_reports_delivery_latency_of_every_confirmed_saga(tmp_path: Path) -> None:
    report = bench(tmp_path, "--webhook")
    hook = report["webhook"]
    assert hook["event"] == "order.confirmed" and "CreateOrder sent" in hook["measured_from"]
    assert hook["expected"] == report["outcomes"]["CONFIRMED"] > 0
    assert hook["delivered"] == hook["expected"] and hook["bad_signatures"] == 0
    assert 0 < hook["p50_ms"] <= hook["p95_ms"] <= hook["p99_ms"] <= hook["max_ms"]
    # The webhook comes after the order is confirmed, so after the saga's own end as the bench saw it, roughly:
    # never before CreateOrder answered.
    assert hook["p50_ms"] >= report["create_ms"]["p50"]
    since = hook["after_created_ms"]
    assert 0 <= since["p50"] <= since["p99"] <= since["max"] <= hook["max_ms"]
