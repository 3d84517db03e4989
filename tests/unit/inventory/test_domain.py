"""inventory_svc's state machines: every allowed move of stock and reservations, and every refused one."""

from __future__ import annotations

import pytest

from inventory_svc.domain import (
    CAUSE_ORDER_CANCELLED,
    CAUSE_PAYMENT_FAILED,
    MAX_UNITS,
    Committed,
    InsufficientStock,
    InvalidTransition,
    Line,
    NegativeStock,
    Product,
    Rejected,
    Released,
    Reservation,
    ReservationStatus,
    Reserved,
    StockLimitExceeded,
    reserve,
    tombstone,
)

pytestmark = pytest.mark.timeout(5)

S = ReservationStatus
M = "mer_aaaaaaaaaaaaaaaa"


def stock(p: Product) -> tuple[int, int, int]:
    return p.available, p.reserved, p.sold


def shelf(**available: int) -> dict[str, Product]:
    return {sku: Product(M, sku, sku.title(), available=n) for sku, n in available.items()}


# Product -------------------------------------------------------------------------------


def test_product_moves_keep_the_stocked_total() -> None:
    p = Product(M, "mug", available=10)
    p.hold(4)
    assert stock(p) == (6, 4, 0)
    p.sell(3)
    assert stock(p) == (6, 1, 3)
    p.unhold(1)
    assert stock(p) == (7, 0, 3)
    p.restock(2)
    assert stock(p) == (9, 0, 1)
    assert p.stocked == 10


@pytest.mark.parametrize(
    ("move", "bucket"),
    [("hold", "available"), ("unhold", "reserved"), ("sell", "reserved"), ("restock", "sold")],
)
def test_a_product_move_past_its_bucket_is_refused_and_changes_nothing(move: str, bucket: str) -> None:
    p = Product(M, "mug", available=2, reserved=2, sold=2)
    with pytest.raises(NegativeStock) as err:
        getattr(p, move)(3)
    assert (err.value.bucket, err.value.requested, err.value.held) == (bucket, 3, 2)
    assert stock(p) == (2, 2, 2)


@pytest.mark.parametrize("move", ["hold", "unhold", "sell", "restock"])
@pytest.mark.parametrize("quantity", [0, -1])
def test_a_product_move_needs_a_positive_quantity(move: str, quantity: int) -> None:
    p = Product(M, "mug", available=2, reserved=2, sold=2)
    with pytest.raises(InvalidTransition):
        getattr(p, move)(quantity)
    assert stock(p) == (2, 2, 2)


def test_adjust_adds_and_removes_available_only() -> None:
    p = Product(M, "mug", available=5, reserved=1, sold=1)
    p.adjust(3)
    assert stock(p) == (8, 1, 1)
    p.adjust(-8)
    assert stock(p) == (0, 1, 1)


def test_adjust_refuses_zero_going_negative_and_overflow() -> None:
    p = Product(M, "mug", available=5, reserved=1)
    with pytest.raises(InvalidTransition):
        p.adjust(0)
    with pytest.raises(InsufficientStock) as err:
        p.adjust(-6)
    assert (err.value.sku, err.value.requested, err.value.available) == ("mug", 6, 5)
    with pytest.raises(StockLimitExceeded):
        p.adjust(MAX_UNITS)
    assert stock(p) == (5, 1, 0)


def test_put_renames_and_sets_available_leaving_held_and_sold_alone() -> None:
    p = Product(M, "mug", "Mug", available=5, reserved=2, sold=3)
    p.put("Big mug", 9)
    assert (p.name, *stock(p)) == ("Big mug", 9, 2, 3)
    with pytest.raises(NegativeStock):
        p.put("x", -1)
    with pytest.raises(StockLimitExceeded):
        p.put("x", MAX_UNITS)
    assert (p.name, *stock(p)) == ("Big mug", 9, 2, 3)


# reserve: all lines or none ------------------------------------------------------------


def test_reserve_holds_every_line_and_records_reserved() -> None:
    products = shelf(mug=5, tee=2)
    lines = [Line("mug", 2), Line("tee", 2)]
    r = reserve(M, "o1", lines, products)
    assert r.status is S.RESERVED
    assert r.pull_events() == [Reserved(M, "o1", tuple(lines))]
    assert stock(products["mug"]) == (3, 2, 0)
    assert stock(products["tee"]) == (0, 2, 0)


@pytest.mark.parametrize(
    ("lines", "reason", "sku", "requested", "available"),
    [
        ([Line("mug", 1), Line("tee", 3), Line("cap", 1)], "OUT_OF_STOCK", "tee", 3, 2),
        ([Line("mug", 1), Line("nope", 1)], "UNKNOWN_SKU", "nope", 1, 0),
        ([Line("mug", 1), Line("tee", 0)], "INVALID_QUANTITY", "tee", 0, 2),
        ([], "NO_LINES", "", 0, 0),
    ],
)
def test_reserve_rejects_on_the_first_failing_line_and_moves_nothing(
    lines: list[Line], reason: str, sku: str, requested: int, available: int
) -> None:
    products = shelf(mug=5, tee=2, cap=1)
    r = reserve(M, "o1", lines, products)
    assert (r.status, r.reason, r.sku) == (S.REJECTED, reason, sku)
    assert r.pull_events() == [Rejected(M, "o1", reason, sku, requested, available)]
    assert [stock(p) for p in products.values()] == [(5, 0, 0), (2, 0, 0), (1, 0, 0)]


def test_the_same_sku_on_two_lines_counts_twice() -> None:
    products = shelf(mug=3)
    r = reserve(M, "o1", [Line("mug", 2), Line("mug", 2)], products)
    assert r.status is S.REJECTED
    assert r.pull_events() == [Rejected(M, "o1", "OUT_OF_STOCK", "mug", 4, 3)]
    assert stock(products["mug"]) == (3, 0, 0)
    r = reserve(M, "o2", [Line("mug", 2), Line("mug", 1)], products)
    assert r.status is S.RESERVED
    assert stock(products["mug"]) == (0, 3, 0)


def test_reservations_in_sequence_see_each_others_holds() -> None:
    products = shelf(mug=10)
    statuses = [reserve(M, f"o{i}", [Line("mug", 1)], products).status for i in range(30)]
    assert statuses.count(S.RESERVED) == 10
    assert statuses[:10] == [S.RESERVED] * 10
    assert stock(products["mug"]) == (0, 10, 0)


# Reservation ---------------------------------------------------------------------------


def held(status: ReservationStatus, *, cancel_answered: bool = False) -> tuple[Reservation, dict[str, Product]]:
    """A reservation of 2 mugs in `status`, with the shelf as it would be then (10 stocked)."""
    lines = (Line("mug", 2),)
    products = {
        S.RESERVED: shelf(mug=8),
        S.COMMITTED: shelf(mug=8),
        S.RELEASED: shelf(mug=10),
        S.REJECTED: shelf(mug=10),
        S.CANCELLED: shelf(mug=10),
    }[status]
    if status is S.RESERVED:
        products["mug"].reserved = 2
    if status is S.COMMITTED:
        products["mug"].sold = 2
    r = Reservation(M, "o1", status, () if status is S.CANCELLED else lines, cancel_answered=cancel_answered)
    return r, products


def test_commit_sells_the_held_lines() -> None:
    r, products = held(S.RESERVED)
    r.commit(products)
    assert r.status is S.COMMITTED
    assert r.pull_events() == [Committed(M, "o1", (Line("mug", 2),))]
    assert stock(products["mug"]) == (8, 0, 2)


def test_release_on_payment_failure_returns_the_held_lines() -> None:
    r, products = held(S.RESERVED)
    r.release(products)
    assert r.status is S.RELEASED
    assert r.pull_events() == [Released(M, "o1", (Line("mug", 2),), held=True, cause=CAUSE_PAYMENT_FAILED)]
    assert stock(products["mug"]) == (10, 0, 0)
    assert not r.cancel_answered


@pytest.mark.parametrize("status", [S.REJECTED, S.COMMITTED, S.RELEASED, S.CANCELLED])
@pytest.mark.parametrize("action", ["commit", "release"])
def test_commit_and_release_are_refused_unless_reserved(status: ReservationStatus, action: str) -> None:
    r, products = held(status)
    before = stock(products["mug"])
    with pytest.raises(InvalidTransition):
        getattr(r, action)(products)
    assert (r.status, r.pull_events(), stock(products["mug"])) == (status, [], before)


@pytest.mark.parametrize(
    ("status", "after", "lines", "was_held", "shelf_after"),
    [
        (S.RESERVED, S.RELEASED, (Line("mug", 2),), True, (10, 0, 0)),
        (S.COMMITTED, S.RELEASED, (Line("mug", 2),), True, (10, 0, 0)),  # restocked
        (S.RELEASED, S.RELEASED, (), False, (10, 0, 0)),
        (S.REJECTED, S.REJECTED, (), False, (10, 0, 0)),
    ],
)
def test_cancel_answers_once_from_every_state(
    status: ReservationStatus,
    after: ReservationStatus,
    lines: tuple[Line, ...],
    was_held: bool,
    shelf_after: tuple[int, int, int],
) -> None:
    r, products = held(status)
    r.cancel(products)
    assert (r.status, r.cancel_answered) == (after, True)
    assert r.pull_events() == [Released(M, "o1", lines, held=was_held, cause=CAUSE_ORDER_CANCELLED)]
    assert stock(products["mug"]) == shelf_after
    with pytest.raises(InvalidTransition, match="already answered"):
        r.cancel(products)
    assert r.pull_events() == [], "the refused second cancel recorded nothing"


def test_a_cancelled_reservation_refuses_every_later_transition() -> None:
    r, products = held(S.RESERVED)
    r.cancel(products)
    r.pull_events()
    for action in (r.commit, r.release, r.cancel):
        with pytest.raises(InvalidTransition):
            action(products)
    assert r.pull_events() == []


def test_tombstone_answers_the_cancel_and_refuses_the_rest() -> None:
    r = tombstone(M, "o1")
    assert (r.status, r.lines, r.cancel_answered) == (S.CANCELLED, (), True)
    assert r.pull_events() == [Released(M, "o1", (), held=False, cause=CAUSE_ORDER_CANCELLED)]
    for action in (r.commit, r.release, r.cancel):
        with pytest.raises(InvalidTransition):
            action({})


def test_pull_events_hands_over_what_was_recorded_once() -> None:
    r = reserve(M, "o1", [Line("mug", 1)], shelf(mug=1))
    assert r.pull_events() == [Reserved(M, "o1", (Line("mug", 1),))]
    assert r.pull_events() == []
