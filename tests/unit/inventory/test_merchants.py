"""inventory_svc's domain across merchants: a sku is the merchant's own, and stock moves only for its orders."""

from __future__ import annotations

import pytest

from inventory_svc.domain import (
    CAUSE_ORDER_CANCELLED,
    Line,
    MerchantMismatch,
    Product,
    Rejected,
    Released,
    Reservation,
    ReservationStatus,
    Reserved,
    reserve,
    tombstone,
)

pytestmark = pytest.mark.timeout(5)

A, B = "mer_aaaaaaaaaaaaaaaa", "mer_bbbbbbbbbbbbbbbb"


def stock(p: Product) -> tuple[int, int, int]:
    return p.available, p.reserved, p.sold


def test_two_merchants_selling_one_sku_reserve_from_their_own_shelves() -> None:
    shelves = {A: {"mug": Product(A, "mug", available=10)}, B: {"mug": Product(B, "mug", available=3)}}
    a = reserve(A, "o_a", [Line("mug", 4)], shelves[A])
    b = reserve(B, "o_b", [Line("mug", 4)], shelves[B])
    assert (a.merchant_id, a.status) == (A, ReservationStatus.RESERVED)
    assert a.pull_events() == [Reserved(A, "o_a", (Line("mug", 4),))]
    assert (b.merchant_id, b.status) == (B, ReservationStatus.REJECTED)
    assert b.pull_events() == [Rejected(B, "o_b", "OUT_OF_STOCK", "mug", 4, 3)]
    assert (stock(shelves[A]["mug"]), stock(shelves[B]["mug"])) == ((6, 4, 0), (3, 0, 0))


def test_a_merchant_without_the_sku_is_rejected_as_unknown() -> None:
    r = reserve(B, "o_b", [Line("mug", 1)], {})
    assert r.pull_events() == [Rejected(B, "o_b", "UNKNOWN_SKU", "mug", 1, 0)]


def test_another_merchants_stock_is_never_moved() -> None:
    """The handlers hand each order its own merchant's shelf; being handed another's is a bug, refused loudly."""
    foreign = {"mug": Product(A, "mug", available=5)}
    with pytest.raises(MerchantMismatch) as err:
        reserve(B, "o_b", [Line("mug", 1)], foreign)
    assert (err.value.sku, err.value.owner, err.value.merchant_id) == ("mug", A, B)
    assert stock(foreign["mug"]) == (5, 0, 0)

    held = {"mug": Product(A, "mug", available=3, reserved=2), "tee": Product(B, "tee", reserved=1)}
    reservation = Reservation(B, "o_b", ReservationStatus.RESERVED, (Line("tee", 1), Line("mug", 2)))
    for action in (reservation.commit, reservation.release, reservation.cancel):
        with pytest.raises(MerchantMismatch):
            action(held)
    assert (stock(held["mug"]), stock(held["tee"])) == ((3, 2, 0), (0, 1, 0)), "checked before anything moved"
    assert (reservation.status, reservation.cancel_answered, reservation.pull_events()) == (
        ReservationStatus.RESERVED, False, [])


def test_every_event_names_the_reservations_merchant() -> None:
    shelf = {"mug": Product(B, "mug", available=2)}
    r = reserve(B, "o1", [Line("mug", 1)], shelf)
    r.commit(shelf)
    r.cancel(shelf)
    assert {e.merchant_id for e in r.pull_events()} == {B}
    assert tombstone(B, "o2").pull_events() == [Released(B, "o2", (), held=False, cause=CAUSE_ORDER_CANCELLED)]
