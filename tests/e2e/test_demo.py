"""End to end: `paymesh demo` starts its own mesh, runs its tour of orders, prints the summary and exits 0."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from paymesh.ops.launcher import Mesh
from tests.e2e.harness import mesh_env

EXPECTED = {
    "success": "CONFIRMED",
    "card declined": "PAYMENT_FAILED",
    "out of stock": "REJECTED",
    "flaky gateway": "CONFIRMED",
    "lost response": "CONFIRMED",
    "cancel after confirm": "CANCELLED",
}


@pytest.mark.timeout(120)
def test_demo_runs_every_scenario_to_its_expected_end(tmp_path: Path) -> None:
    env = mesh_env(tmp_path / "data")

    done = subprocess.run(
        [sys.executable, "-m", "paymesh.ops.cli", "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    summary, charges = output.split("\nsummary\n", 1)[1].split("\ngateway charges and refunds\n", 1)
    for scenario, status in EXPECTED.items():
        row = re.search(rf"^{re.escape(scenario)}\s+ord_\w+\s+{status}\s+{status}(\s|$)", summary, re.M)
        assert row, f"{scenario}: no row ending {status}\n{output}"
    charge_rows = [line.split() for line in charges.splitlines()[1:] if line.strip()]
    assert sum(1 for row in charge_rows if row[0] == "success") == 1, charges  # one charge, never two
    assert re.search(r"^cancel after confirm\s+ch_\w+\s+REFUNDED\s+25\.00 USD\s+25\.00 USD", charges, re.M), charges
    assert not re.search(r"^out of stock\s+ch_", charges, re.M), charges
    assert "demo finished" in output and "mesh stopped" in output
    assert re.search(r"PENDING -> AWAITING_PAYMENT", output), output


@pytest.mark.timeout(90)
def test_demo_uses_a_running_mesh_named_by_the_environment(shared_mesh: Mesh, tmp_path: Path) -> None:
    env = {k: v for k, v in shared_mesh.env.items() if k != "PAYMESH_NATS_PORT"}
    # The keys as a user exports them from what `paymesh up` printed (its data dir is not this one).
    keys = shared_mesh.credentials
    assert keys.api_key is not None and keys.operator_key is not None
    env |= {"PAYMESH_API_KEY": keys.api_key.reveal(), "PAYMESH_OPERATOR_KEY": keys.operator_key.reveal()}

    done = subprocess.run(
        [sys.executable, "-m", "paymesh.ops.cli", "demo", "--data-dir", str(tmp_path / "unused")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "using the running mesh" in output and "starting nats-server" not in output, output
    assert not (tmp_path / "unused").exists()
