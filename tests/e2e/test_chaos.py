"""`paymesh chaos` end to end: a mesh of its own under kills, a nats-server restart and gateway faults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = (
    "every order terminal",
    "stock conserved per sku",
    "gateway net = what orders owe",
    "at most one charge per order",
    "payment audit trails valid",
    "DLQ empty",
    "merchant told",
)
@pytest.mark.timeout(150)
def test_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    """200 orders; two services SIGKILLed and the nats-server restarted while the gateway misbehaves.

    A process of its own, as the command runs: whatever happens here, it stops everything it started.
    """
    args = ["--orders", "200", "--kills", "2", "--nats-restarts", "1", "--seed", "7", "--data-dir", str(tmp_path)]
    run = subprocess.run(
        [sys.executable, "-m", "paymesh.ops.cli", "chaos", *args], capture_output=True, text=True, timeout=140,
        check=False,
    )
    report = run.stdout
    assert run.returncode == 0, f"exit {run.returncode}\n{report}\n{run.stderr[-3000:]}"
    rows = report.splitlines()
    for name in CHECKS:  # held for each of the two merchants whose orders interleaved
        assert sum(row.startswith(f"{name} · mer_") and row.rstrip().endswith("ok") for row in rows) == 2, report
    assert "nats-server stopped" in report and report.count("SIGKILL") == 2, report
    assert "200 placed of 200" in report, report

    # The stores the run left agree with the bank: every payment against its charge and refunds.
    reconciled = subprocess.run(
        [sys.executable, "-m", "paymesh.ops.cli", "reconcile", "--data-dir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert reconciled.returncode == 0, f"exit {reconciled.returncode}\n{reconciled.stdout}\n{reconciled.stderr}"
    answer = json.loads(reconciled.stdout)
    assert answer["ok"] and answer["mismatches"] == [], answer
    assert answer["counts"]["payments"] >= 200, answer["counts"]
