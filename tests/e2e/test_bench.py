"""`paymesh bench` runs end to end and reports every figure the JSON promises (no speed is asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paymesh.ops.natsserver import free_port


@pytest.mark.timeout(120)
def test_bench_reports_the_promised_figures(tmp_path: Path) -> None:
    env = dict(os.environ, PAYMESH_NATS_PORT=str(free_port()))
    env.pop("PAYMESH_NATS_URL", None)
    for prefix in ("ORDER_SVC", "INVENTORY_SVC", "PAYMENT_SVC", "GATEWAY_MOCK"):
        env[f"{prefix}_GRPC_ADDR"] = f"127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "paymesh.ops.cli", "bench", "--concurrency", "4", "--duration", "3", "--warmup", "1",
         "--json", "--data-dir", str(tmp_path / "data")],
        env=env, capture_output=True, text=True, timeout=110,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["sagas_completed"] > 0 and report["sagas_per_s"] > 0
    for key in ("e2e_ms", "create_ms"):
        assert set(report[key]) >= {"p50", "p95", "p99", "max"}
        assert 0 < report[key]["p50"] <= report[key]["p99"] <= report[key]["max"]
    assert report["outcomes"] == {"CONFIRMED": report["sagas_completed"]}
    assert report["errors"] == {}
    mesh = {"order_svc", "inventory_svc", "payment_svc", "gateway_mock", "nats-server"}
    assert set(report["processes"]) == mesh | {"bench-client"}
    for p in report["processes"].values():
        assert p["peak_rss_mb"] >= p["rss_end_mb"] > 0 and p["rss_start_mb"] > 0, p
    assert report["lag_drained_ms"] is not None, "outbox and consumers drained once the load stopped"
    assert sum(report["consumer_lag"].values()) == 0 and sum(report["outbox_lag"].values()) == 0
