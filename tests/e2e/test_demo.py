"""End to end: `paymesh demo` starts its own mesh, runs its tour of orders, prints the summary and the webhooks
each order was sent, and exits 0; on a mesh whose webhook_svc refuses its endpoint it fails, saying why."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
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
# The webhooks each scenario's order is sent. Their sequence follows webhook_svc's reading of two streams: a refund
# may be numbered before the cancel that caused it, or (a lagging consumer) before the confirmation.
WEBHOOKS = {
    "success": ["order.confirmed"],
    "card declined": ["order.payment_failed"],
    "out of stock": ["order.rejected"],
    "flaky gateway": ["order.confirmed"],
    "lost response": ["order.confirmed"],
    "cancel after confirm": ["order.confirmed", "payment.refunded", "order.cancelled"],
}


def assert_webhooks(output: str) -> None:
    """The demo's own endpoint was made and deleted, and each order's webhooks arrived verified, listed by sequence."""
    made = re.search(r"^webhook endpoint (we_\w+) at http://127\.0\.0\.1:\d+/ \(every event type\)$", output, re.M)
    assert made, output
    assert f"webhook endpoint {made[1]} deleted" in output, output
    deliveries = output.split("\nwebhook deliveries\n", 1)[1].split(f"webhook endpoint {made[1]} deleted", 1)[0]
    rows = [re.split(r"\s{2,}", line.strip()) for line in deliveries.splitlines()[1:] if line.strip()]
    for scenario, types in WEBHOOKS.items():
        mine = [row for row in rows if row[0] == scenario]
        assert sorted(row[1] for row in mine) == sorted(types), f"{scenario}: {mine}\n{deliveries}"
        assert [row[3] for row in mine] == [str(n) for n in range(1, len(types) + 1)], deliveries  # rising, by 1
        assert all(row[2].startswith("ord_") and row[4] == "verified" for row in mine), deliveries
        assert len({row[2] for row in mine}) == 1, deliveries


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
    charges = charges.split("\nwebhook deliveries\n", 1)[0]
    for scenario, status in EXPECTED.items():
        row = re.search(rf"^{re.escape(scenario)}\s+ord_\w+\s+{status}\s+{status}(\s|$)", summary, re.M)
        assert row, f"{scenario}: no row ending {status}\n{output}"
    charge_rows = [line.split() for line in charges.splitlines()[1:] if line.strip()]
    assert sum(1 for row in charge_rows if row[0] == "success") == 1, charges  # one charge, never two
    assert re.search(r"^cancel after confirm\s+ch_\w+\s+REFUNDED\s+25\.00 USD\s+25\.00 USD", charges, re.M), charges
    assert not re.search(r"^out of stock\s+ch_", charges, re.M), charges
    assert "demo finished" in output and "mesh stopped" in output
    assert re.search(r"PENDING -> AWAITING_PAYMENT", output), output
    assert_webhooks(output)


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
    assert_webhooks(output)


@pytest.mark.timeout(120)
async def test_demo_fails_clearly_when_webhook_svc_refuses_its_endpoint(
    new_mesh: Callable[..., Awaitable[Mesh]], tmp_path: Path
) -> None:
    # A mesh that sends webhooks to public addresses only, as one past a laptop does: the demo's local receiver
    # cannot be registered, and the demo says so before placing any order.
    mesh = await new_mesh(PAYMESH_WEBHOOK_ALLOW_PRIVATE="false")
    env = {k: v for k, v in mesh.env.items() if k != "PAYMESH_NATS_PORT"}

    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "paymesh.ops.cli", "demo"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "using the running mesh" in done.stdout and "product demo-" not in done.stdout, done.stdout
    [line] = done.stderr.splitlines()
    assert line.startswith(f"paymesh demo: webhook_svc at {mesh.addr('webhook_svc')} did not register"), line
    assert "INVALID_ARGUMENT" in line and "PAYMESH_WEBHOOK_ALLOW_PRIVATE=true" in line, line
