"""The money invariants of the mesh, as pure functions over facts collected after a run.

Facts are plain dataclasses (what the four services hold: orders, reservations, products, payments with
their audit trails, gateway charges, the DLQ); each check turns them into a `CheckResult` with a figure
and the orders involved. `paymesh chaos` and the e2e invariant test collect the facts; unit tests
fabricate them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

TERMINAL = frozenset({"CONFIRMED", "REJECTED", "PAYMENT_FAILED", "CANCELLED", "REQUIRES_REVIEW"})
# Payments in these statuses still wait for the gateway: a run is settled only once none is left.
IN_FLIGHT_PAYMENTS = ("PROCESSING", "REFUNDING")
# Lines of detail printed per violated check; the orders involved are all listed.
MAX_DETAIL_LINES = 25


# -- facts: what the services hold after a run ------------------------------------------------


@dataclass(frozen=True)
class OrderFact:
    order_id: str
    status: str  # without the ORDER_STATUS_ prefix
    amount_minor: int
    lines: tuple[tuple[str, int], ...] = ()  # (sku, quantity)
    failure_reason: str = ""


@dataclass(frozen=True)
class PaymentFact:
    payment_id: str
    order_id: str
    status: str  # without the PAYMENT_STATUS_ prefix
    amount_minor: int
    refunded_minor: int = 0
    charge_id: str = ""
    failure_code: str = ""


@dataclass(frozen=True)
class StepFact:
    """One line of a payment's audit trail (ListPaymentEvents); statuses without prefix, "" for none."""

    sequence: int
    type: str
    from_status: str
    to_status: str


@dataclass(frozen=True)
class ChargeFact:
    charge_id: str
    order_id: str
    status: str  # without the CHARGE_STATUS_ prefix
    amount_minor: int
    refunded_minor: int = 0

    @property
    def taken(self) -> bool:
        return self.status != "DECLINED"

    @property
    def kept_minor(self) -> int:
        return self.amount_minor - self.refunded_minor if self.taken else 0


@dataclass(frozen=True)
class ReservationFact:
    order_id: str
    status: str  # RESERVED, REJECTED, COMMITTED, RELEASED, or "" when inventory never saw the order
    lines: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class ProductFact:
    sku: str
    stocked: int  # what was put on the shelf before the run
    available: int
    reserved: int
    sold: int


@dataclass(frozen=True)
class DeadLetterFact:
    seq: int
    consumer: str
    original_subject: str
    reason: str
    error: str


@dataclass
class Observed:
    """Everything the checks look at; `charges` and `payments` are per order, `trails` per payment."""

    orders: dict[str, OrderFact]
    products: list[ProductFact]
    payments: dict[str, list[PaymentFact]] = field(default_factory=dict)
    charges: dict[str, list[ChargeFact]] = field(default_factory=dict)
    reservations: dict[str, ReservationFact] = field(default_factory=dict)
    trails: dict[str, list[StepFact]] = field(default_factory=dict)
    # Charges the gateway holds for no order of this run (only collected on a mesh of the run's own).
    stray_charges: list[ChargeFact] = field(default_factory=list)
    dead_letters: list[DeadLetterFact] | None = None  # None: not collected
    settled_after_s: float | None = None  # when the last order became terminal, after the faults stopped
    settle_limit_s: float | None = None
    # Per order, the webhook types its merchant's endpoint received with a valid signature; None: not collected.
    webhooks: dict[str, set[str]] | None = None
    unverified_webhooks: int = 0


@dataclass(frozen=True)
class CheckResult:
    name: str
    figure: str
    problems: tuple[str, ...] = ()
    orders: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


# -- checks: pure functions over the facts --------------------------------------------------------


def check_terminal(obs: Observed) -> CheckResult:
    """Every order ended (CONFIRMED, REJECTED, PAYMENT_FAILED, CANCELLED, REQUIRES_REVIEW), within the limit."""
    open_orders = sorted((o for o in obs.orders.values() if o.status not in TERMINAL), key=lambda o: o.order_id)
    ended = len(obs.orders) - len(open_orders)
    figure = f"{ended}/{len(obs.orders)} terminal"
    problems = [f"{o.order_id} is still {o.status}" for o in sorted(open_orders, key=lambda o: o.order_id)]
    if obs.settle_limit_s is not None:
        if obs.settled_after_s is None:
            figure += f", not all within {obs.settle_limit_s:.0f}s after the faults stopped"
        else:
            figure += f", the last {obs.settled_after_s:.1f}s after the faults stopped"
            figure += f" (limit {obs.settle_limit_s:.0f}s)"
            if obs.settled_after_s > obs.settle_limit_s:
                problems.append(f"settled {obs.settled_after_s:.1f}s after the faults, past {obs.settle_limit_s:.0f}s")
    counts = Counter(o.status for o in obs.orders.values())
    figure += " (" + ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
    timed_out = sum(o.failure_reason == "SAGA_TIMEOUT" for o in obs.orders.values())
    figure += f"; {timed_out} cancelled at the saga deadline)" if timed_out else ")"
    return CheckResult("every order terminal", figure, tuple(problems), tuple(o.order_id for o in open_orders))


def per_sku(lines: Sequence[tuple[str, int]]) -> Counter[str]:
    totals: Counter[str] = Counter()
    for sku, quantity in lines:
        totals[sku] += quantity
    return totals


def check_stock(obs: Observed) -> CheckResult:
    """Per sku: stocked = available + reserved + sold, none negative, and both match the reservations,
    each of which holds exactly its order's lines."""
    problems: list[str] = []
    involved: set[str] = set()
    reserved_by: dict[str, int] = defaultdict(int)
    sold_by: dict[str, int] = defaultdict(int)
    for order_id, res in sorted(obs.reservations.items()):
        totals = reserved_by if res.status == "RESERVED" else sold_by if res.status == "COMMITTED" else None
        if totals is not None:
            for sku, quantity in res.lines:
                totals[sku] += quantity
        order = obs.orders.get(order_id)
        if order is None:
            continue
        wrong = (
            (order.status == "CONFIRMED" and res.status != "COMMITTED")
            or (order.status in ("REJECTED", "PAYMENT_FAILED", "CANCELLED") and res.status in ("RESERVED", "COMMITTED"))
            or (order.status == "REQUIRES_REVIEW" and res.status == "RESERVED")
        )
        if wrong:
            problems.append(f"{order_id} is {order.status} but its reservation is {res.status or 'missing'}")
            involved.add(order_id)
        # What a reservation holds or sold is what its order asked for: sold stock is the confirmed orders' lines.
        if totals is not None and order.lines and per_sku(res.lines) != per_sku(order.lines):
            problems.append(
                f"{order_id}: its {res.status} reservation holds {sorted(per_sku(res.lines).items())}, "
                f"the order asks for {sorted(per_sku(order.lines).items())}"
            )
            involved.add(order_id)
    for p in sorted(obs.products, key=lambda p: p.sku):
        if p.available + p.reserved + p.sold != p.stocked:
            problems.append(
                f"{p.sku}: stocked {p.stocked} != available {p.available} + reserved {p.reserved} + sold {p.sold}"
            )
        if min(p.available, p.reserved, p.sold) < 0:
            problems.append(f"{p.sku}: negative stock (available {p.available}, reserved {p.reserved}, sold {p.sold})")
        if obs.reservations and (p.reserved, p.sold) != (reserved_by[p.sku], sold_by[p.sku]):
            problems.append(
                f"{p.sku}: reserved {p.reserved}, sold {p.sold}, but the reservations hold "
                f"{reserved_by[p.sku]} reserved and {sold_by[p.sku]} committed"
            )
    sums = [sum(getattr(p, a) for p in obs.products) for a in ("stocked", "available", "reserved", "sold")]
    figure = (
        f"{len(obs.products)} skus: stocked {sums[0]} = available {sums[1]} + reserved {sums[2]} "
        f"+ sold {sums[3]}"
    )
    return CheckResult("stock conserved per sku", figure, tuple(problems), tuple(sorted(involved)))


def check_money(obs: Observed) -> CheckResult:
    """What the gateway kept (charges − refunds) is what the orders owe, order by order.

    CONFIRMED owes its total less any partial refund; REQUIRES_REVIEW is explained when its payment's
    refund failed and the gateway keeps exactly what was not refunded; every other end owes nothing.
    """
    problems: list[str] = []
    involved: set[str] = set()
    full = remains = review = 0
    review_orders = 0
    for order_id, order in sorted(obs.orders.items()):
        taken = [c for c in obs.charges.get(order_id, []) if c.taken]
        kept = sum(c.kept_minor for c in taken)
        payments = obs.payments.get(order_id, [])
        payment = payments[0] if len(payments) == 1 else None
        refunded = payment.refunded_minor if payment is not None else 0
        if order.status == "CONFIRMED":
            owed = order.amount_minor - refunded
            if refunded:
                remains += owed
            else:
                full += owed
        elif order.status == "REQUIRES_REVIEW":
            owed = kept
            review += kept
            review_orders += 1
            if payment is None or payment.status != "REFUND_FAILED" or kept != payment.amount_minor - refunded:
                owed = payment.amount_minor - refunded if payment is not None else 0
                problems.append(
                    f"{order_id} REQUIRES_REVIEW unexplained: payment "
                    f"{payment.status if payment else 'missing'}, the gateway keeps {kept}"
                )
                involved.add(order_id)
                continue
        else:
            owed = 0
        if kept != owed:
            problems.append(
                f"{order_id} {order.status}: the gateway keeps {kept}, the order owes {owed} "
                f"(payment {payment.status if payment else 'missing'}, refunded {refunded}; "
                f"charges {[(c.charge_id, c.status, c.amount_minor, c.refunded_minor) for c in taken]})"
            )
            involved.add(order_id)
        for charge in taken:
            if payment is not None and (charge.refunded_minor != payment.refunded_minor or
                                        (payment.charge_id and payment.charge_id != charge.charge_id)):
                problems.append(
                    f"{order_id}: payment {payment.payment_id} (charge {payment.charge_id or 'none'}, refunded "
                    f"{payment.refunded_minor}) disagrees with gateway charge {charge.charge_id} "
                    f"(refunded {charge.refunded_minor})"
                )
                involved.add(order_id)
        if payment is not None and payment.status in IN_FLIGHT_PAYMENTS:
            problems.append(f"{order_id}: payment {payment.payment_id} is still {payment.status}")
            involved.add(order_id)
    for charge in obs.stray_charges:
        if charge.taken:
            problems.append(f"charge {charge.charge_id} keeps {charge.kept_minor} for unknown order {charge.order_id}")
            involved.add(charge.order_id)
    net = sum(c.kept_minor for cs in obs.charges.values() for c in cs) + sum(c.kept_minor for c in obs.stray_charges)
    expected = full + remains + review
    figure = (
        f"net captured {net} {'=' if net == expected else '!='} confirmed {full} + partially refunded remains "
        f"{remains} + under review {review} ({review_orders} orders with a failed refund)"
    )
    if net != expected and not problems:
        problems.append(f"net captured {net} != {expected} expected")
    return CheckResult("gateway net = what orders owe", figure, tuple(problems), tuple(sorted(involved)))


def check_one_charge(obs: Observed) -> CheckResult:
    """At most one successful charge, and at most one payment, per order."""
    problems: list[str] = []
    involved: list[str] = []
    most = 0
    charged = 0
    for order_id in sorted(obs.orders):
        taken = [c for c in obs.charges.get(order_id, []) if c.taken]
        most = max(most, len(taken))
        charged += bool(taken)
        payments = obs.payments.get(order_id, [])
        if len(taken) > 1:
            problems.append(f"{order_id}: {len(taken)} successful charges {[c.charge_id for c in taken]}")
        if len(payments) > 1:
            problems.append(f"{order_id}: {len(payments)} payments {[p.payment_id for p in payments]}")
        if len(taken) > 1 or len(payments) > 1:
            involved.append(order_id)
    figure = f"{charged} orders charged, at most {most} successful charge per order"
    return CheckResult("at most one charge per order", figure, tuple(problems), tuple(involved))


def check_audit_trails(obs: Observed) -> CheckResult:
    """Each payment's trail starts from nothing, chains (from = previous to), ends at its status, in sequence."""
    problems: list[str] = []
    involved: list[str] = []
    steps = 0
    payments = [p for ps in obs.payments.values() for p in ps]
    for payment in sorted(payments, key=lambda p: p.payment_id):
        trail = obs.trails.get(payment.payment_id, [])
        steps += len(trail)
        wrong = trail_problem(payment, trail)
        if wrong:
            problems.append(f"{payment.order_id} payment {payment.payment_id}: {wrong}")
            involved.append(payment.order_id)
    figure = f"{len(payments)} payments, {steps} steps, {len(payments) - len(involved)} in a valid order"
    return CheckResult("payment audit trails valid", figure, tuple(problems), tuple(involved))


def trail_problem(payment: PaymentFact, trail: Sequence[StepFact]) -> str:
    """What is wrong with one trail, or ""."""
    if not trail:
        return "no audit trail"
    previous: StepFact | None = None
    for step in trail:
        if previous is None:
            if step.from_status:
                return f"first step {step.sequence} {step.type} starts from {step.from_status}, not from nothing"
        else:
            if step.sequence <= previous.sequence:
                return f"sequence {step.sequence} after {previous.sequence}"
            if step.from_status != previous.to_status:
                return (
                    f"step {step.sequence} {step.type} from {step.from_status}, "
                    f"but step {previous.sequence} {previous.type} left it {previous.to_status}"
                )
        previous = step
    assert previous is not None
    if previous.to_status != payment.status:
        return f"trail ends at {previous.to_status}, the payment is {payment.status}"
    return ""


def check_dead_letters(obs: Observed) -> CheckResult:
    """The DLQ is empty; else each entry, with its reason, is a violation to look at."""
    if obs.dead_letters is None:
        return CheckResult("DLQ empty", "not collected")
    problems = [
        f"DLQ {d.seq}: {d.consumer} gave up on {d.original_subject}: {d.reason}: {d.error}" for d in obs.dead_letters
    ]
    involved = sorted({d.original_subject.rsplit(".", 1)[-1] for d in obs.dead_letters if d.original_subject})
    figure = "empty" if not problems else f"{len(problems)} dead letters"
    return CheckResult("DLQ empty", figure, tuple(problems), tuple(involved))


def told(status: str) -> str:
    """The webhook type that tells a merchant its order ended in `status` (CONFIRMED -> order.confirmed)."""
    return f"order.{status.lower()}"


def check_webhooks(obs: Observed) -> CheckResult:
    """The merchant was told how each order ended: a signed webhook of its final status reached its endpoint."""
    if obs.webhooks is None:
        return CheckResult("merchant told", "not collected")
    missing = sorted(o.order_id for o in obs.orders.values()
                     if o.status in TERMINAL and told(o.status) not in obs.webhooks.get(o.order_id, set()))
    problems = [f"{order_id} ended {obs.orders[order_id].status}; no {told(obs.orders[order_id].status)} webhook "
                "arrived" for order_id in missing]
    if obs.unverified_webhooks:
        problems.append(f"{obs.unverified_webhooks} deliveries did not verify")
    ended = sum(o.status in TERMINAL for o in obs.orders.values())
    figure = f"{ended - len(missing)}/{ended} final statuses delivered, signed"
    return CheckResult("merchant told", figure, tuple(problems), tuple(missing))


CHECKS: tuple[Callable[[Observed], CheckResult], ...] = (
    check_terminal,
    check_stock,
    check_money,
    check_one_charge,
    check_audit_trails,
    check_dead_letters,
    check_webhooks,
)


def run_checks(obs: Observed) -> list[CheckResult]:
    return [check(obs) for check in CHECKS]


def format_report(results: Sequence[CheckResult]) -> str:
    """The table (check, figure, ok/violated), then what each violated check found and the orders involved."""
    rows = [("check", "figure", "result")] + [(r.name, r.figure, "ok" if r.ok else "violated") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}" for row in rows]
    for r in results:
        if r.ok:
            continue
        lines.append(f"\n{r.name}: violated")
        lines += [f"  {p}" for p in r.problems[:MAX_DETAIL_LINES]]
        if len(r.problems) > MAX_DETAIL_LINES:
            lines.append(f"  ... and {len(r.problems) - MAX_DETAIL_LINES} more")
        if r.orders:
            lines.append(f"  orders involved: {' '.join(r.orders)}")
    return "\n".join(lines)
