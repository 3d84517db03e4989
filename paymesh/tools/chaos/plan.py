"""The seeded plan of a `paymesh chaos` run: the orders, what happens to each once placed, the faults and when."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

TOKENS = (
    ("tok_visa", 58),
    ("tok_chargeDeclined", 8),
    ("tok_chargeDeclinedInsufficientFunds", 6),
    ("tok_flaky", 14),
    ("tok_lostResponse", 14),
)
# What happens to an order after it is placed, and how often.
ACTIONS = (("none", 62), ("cancel_at_once", 12), ("cancel_after_confirm", 12), ("partial_refund", 9), ("both", 5))
KILLABLE = ("order_svc", "inventory_svc", "payment_svc", "gateway_mock", "webhook_svc")


@dataclass(frozen=True)
class PlannedOrder:
    index: int
    lines: tuple[tuple[str, int, int], ...]  # (sku, quantity, unit price)
    token: str
    action: str  # one of ACTIONS


@dataclass(frozen=True)
class Fault:
    at_s: float  # after the first order
    kind: str  # "kill" (a service), "nats" (restart the nats-server), "gateway_on", "gateway_off"
    target: str = ""
    down_s: float = 0.0


@dataclass(frozen=True)
class Plan:
    stock: dict[str, int]
    orders: tuple[PlannedOrder, ...]
    faults: tuple[Fault, ...]


def weighted(rng: random.Random, table: Sequence[tuple[str, int]]) -> str:
    return rng.choices([name for name, _ in table], weights=[w for _, w in table])[0]


def make_plan(seed: int, orders: int, kills: int, nats_restarts: int, window_s: float) -> Plan:
    """Every choice of the run, from the seed: the same seed gives the same orders, actions and fault times."""
    rng = random.Random(seed)
    # Enough stock for most orders; the small sku runs out, so some orders are REJECTED.
    stock = {"sku-mug": 2 * orders, "sku-tee": 2 * orders, "sku-poster": max(5, orders // 2)}
    planned = []
    for i in range(orders):
        skus = rng.sample(sorted(stock), rng.randint(1, 2))
        lines = tuple((sku, rng.randint(1, 3), rng.randint(100, 9999)) for sku in skus)
        action = weighted(rng, ACTIONS)
        token = weighted(rng, TOKENS)
        if action != "none" and action != "cancel_at_once" and rng.random() < 0.25:
            token = "tok_refundFails"  # its refund is declined for good: the order ends REQUIRES_REVIEW
        planned.append(PlannedOrder(i, lines, token, action))
    faults = [Fault(round(window_s * rng.uniform(0.05, 0.2), 2), "gateway_on")]
    faults.append(Fault(round(window_s * rng.uniform(0.55, 0.75), 2), "gateway_off"))
    kinds = ["nats"] * nats_restarts + ["kill"] * kills
    for kind in kinds:
        target = rng.choice(KILLABLE) if kind == "kill" else "nats-server"
        faults.append(Fault(round(window_s * rng.uniform(0.1, 0.85), 2), kind, target, round(rng.uniform(0.3, 2.0), 2)))
    return Plan(stock, tuple(planned), tuple(sorted(faults, key=lambda f: f.at_s)))
