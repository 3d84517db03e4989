"""Stock and reservations as pure state machines: what may move, and the events each move causes."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Far below int64: available + reserved + sold can never overflow a BIGINT column.
MAX_UNITS = 10**15

OUT_OF_STOCK = "OUT_OF_STOCK"
UNKNOWN_SKU = "UNKNOWN_SKU"
NO_LINES = "NO_LINES"
INVALID_QUANTITY = "INVALID_QUANTITY"

CAUSE_ORDER_CANCELLED = "ORDER_CANCELLED"
CAUSE_PAYMENT_FAILED = "PAYMENT_FAILED"


class DomainError(Exception):
    """A change the inventory refuses."""


class InvalidTransition(DomainError):
    """The state machine does not allow this change from the current state."""


class NegativeStock(DomainError):
    """Taking `requested` units out of a bucket that holds `held` would leave it negative.

    Event handlers never catch this: the saga checks before it moves stock, so it means a bug.
    """

    def __init__(self, sku: str, bucket: str, requested: int, held: int) -> None:
        super().__init__(f"sku {sku} has {held} units {bucket}, {requested} requested")
        self.sku = sku
        self.bucket = bucket
        self.requested = requested
        self.held = held


class InsufficientStock(NegativeStock):
    """Taking `requested` units from `sku` would leave its available stock negative."""

    def __init__(self, sku: str, requested: int, available: int) -> None:
        super().__init__(sku, "available", requested, available)
        self.available = available


class MerchantMismatch(DomainError):
    """Stock of one merchant asked to move for another merchant's order.

    Event handlers never catch this: each reservation is handed its own merchant's shelf, so it means a bug.
    """

    def __init__(self, sku: str, owner: str, merchant_id: str) -> None:
        super().__init__(f"sku {sku} of merchant {owner} cannot move for merchant {merchant_id}")
        self.sku = sku
        self.owner = owner
        self.merchant_id = merchant_id


class StockLimitExceeded(DomainError):
    """The product would hold more than MAX_UNITS units in all."""

    def __init__(self, sku: str, stocked: int) -> None:
        super().__init__(f"sku {sku} would hold {stocked} units; at most {MAX_UNITS} are allowed")
        self.sku = sku
        self.stocked = stocked


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int


@dataclass
class Product:
    """A merchant's sku and its stock. Units only move between the three buckets, except through `put` and
    `adjust`. A sku is unique per merchant: two merchants selling `mug` hold two products."""

    merchant_id: str
    sku: str
    name: str = ""
    available: int = 0
    reserved: int = 0
    sold: int = 0

    @property
    def stocked(self) -> int:
        return self.available + self.reserved + self.sold

    def put(self, name: str, available: int) -> None:
        """PutProduct: rename, and set the units that can be reserved from now on."""
        if available < 0:
            raise NegativeStock(self.sku, "available", -available, 0)
        self._check_limit(available + self.reserved + self.sold)
        self.name = name
        self.available = available

    def adjust(self, delta: int) -> None:
        """AdjustStock: restock (delta > 0) or write off (delta < 0) available units."""
        if delta == 0:
            raise InvalidTransition("an adjustment must change the stock")
        if self.available + delta < 0:
            raise InsufficientStock(self.sku, -delta, self.available)
        self._check_limit(self.stocked + delta)
        self.available += delta

    def hold(self, quantity: int) -> None:
        """available -> reserved."""
        self._check_quantity(quantity)
        if quantity > self.available:
            raise InsufficientStock(self.sku, quantity, self.available)
        self.available -= quantity
        self.reserved += quantity

    def unhold(self, quantity: int) -> None:
        """reserved -> available: a reservation released."""
        self._check_quantity(quantity)
        if quantity > self.reserved:
            raise NegativeStock(self.sku, "reserved", quantity, self.reserved)
        self.reserved -= quantity
        self.available += quantity

    def sell(self, quantity: int) -> None:
        """reserved -> sold: a reservation committed."""
        self._check_quantity(quantity)
        if quantity > self.reserved:
            raise NegativeStock(self.sku, "reserved", quantity, self.reserved)
        self.reserved -= quantity
        self.sold += quantity

    def restock(self, quantity: int) -> None:
        """sold -> available: a confirmed order cancelled, its units back on the shelf."""
        self._check_quantity(quantity)
        if quantity > self.sold:
            raise NegativeStock(self.sku, "sold", quantity, self.sold)
        self.sold -= quantity
        self.available += quantity

    def _check_quantity(self, quantity: int) -> None:
        if quantity <= 0:
            raise InvalidTransition(f"sku {self.sku}: a quantity must be positive, got {quantity}")

    def _check_limit(self, stocked: int) -> None:
        if stocked > MAX_UNITS:
            raise StockLimitExceeded(self.sku, stocked)


class ReservationStatus(enum.StrEnum):
    RESERVED = "RESERVED"
    REJECTED = "REJECTED"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    CANCELLED = "CANCELLED"  # tombstone: the order was cancelled before inventory saw it


@dataclass(frozen=True)
class Reserved:
    merchant_id: str
    order_id: str
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class Rejected:
    merchant_id: str
    order_id: str
    reason: str
    sku: str
    requested: int
    available: int


@dataclass(frozen=True)
class Committed:
    merchant_id: str
    order_id: str
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class Released:
    merchant_id: str
    order_id: str
    lines: tuple[Line, ...]
    held: bool
    cause: str


Event = Reserved | Rejected | Committed | Released


@dataclass
class Reservation:
    """The stock held for one order: all its lines at once, or none.

    `cancel_answered` records that order.cancelled was answered, so a second one is
    refused and inventory.released with cause ORDER_CANCELLED goes out once per order.
    It moves only its own merchant's stock: `products` is that merchant's shelf, by sku.
    """

    merchant_id: str
    order_id: str
    status: ReservationStatus
    lines: tuple[Line, ...] = ()
    reason: str = ""
    sku: str = ""
    cancel_answered: bool = False
    events: list[Event] = field(default_factory=list, compare=False)

    def commit(self, products: Mapping[str, Product]) -> None:
        """Payment succeeded: the held units become sold."""
        self._require(ReservationStatus.RESERVED, "commit")
        for product, quantity in self._held(products):
            product.sell(quantity)
        self.status = ReservationStatus.COMMITTED
        self.events.append(Committed(self.merchant_id, self.order_id, self.lines))

    def release(self, products: Mapping[str, Product]) -> None:
        """Payment failed: the held units go back to available."""
        self._require(ReservationStatus.RESERVED, "release")
        for product, quantity in self._held(products):
            product.unhold(quantity)
        self.status = ReservationStatus.RELEASED
        released = Released(self.merchant_id, self.order_id, self.lines, held=True, cause=CAUSE_PAYMENT_FAILED)
        self.events.append(released)

    def cancel(self, products: Mapping[str, Product]) -> None:
        """Order cancelled: give back whatever is held or sold, and answer exactly once."""
        if self.cancel_answered or self.status is ReservationStatus.CANCELLED:
            raise InvalidTransition(f"order {self.order_id}: the cancellation was already answered")
        held = self.status in (ReservationStatus.RESERVED, ReservationStatus.COMMITTED)
        for product, quantity in self._held(products) if held else ():
            if self.status is ReservationStatus.RESERVED:
                product.unhold(quantity)
            else:
                product.restock(quantity)
        if held:
            self.status = ReservationStatus.RELEASED
        self.cancel_answered = True
        lines = self.lines if held else ()
        self.events.append(Released(self.merchant_id, self.order_id, lines, held=held, cause=CAUSE_ORDER_CANCELLED))

    def pull_events(self) -> list[Event]:
        """The events recorded since the last call, for the outbox."""
        events, self.events = self.events, []
        return events

    def _held(self, products: Mapping[str, Product]) -> list[tuple[Product, int]]:
        """Each line's product and quantity, all checked to be this merchant's before any moves."""
        return [(_own(products[line.sku], self.merchant_id), line.quantity) for line in self.lines]

    def _require(self, status: ReservationStatus, action: str) -> None:
        if self.status is not status:
            raise InvalidTransition(f"order {self.order_id}: cannot {action} a {self.status.value} reservation")


def reserve(merchant_id: str, order_id: str, lines: Iterable[Line], products: Mapping[str, Product]) -> Reservation:
    """Hold every line or none from the merchant's shelf `products` (by sku); the same sku on two lines counts
    twice. A sku the merchant does not sell is unknown, whoever else sells it. Mutates `products` only on success."""
    lines = tuple(lines)
    shelf = {line.sku: _own(products[line.sku], merchant_id) for line in lines if line.sku in products}
    refusal = _first_refusal(lines, shelf)
    if refusal is not None:
        reason, sku, requested, available = refusal
        reservation = Reservation(merchant_id, order_id, ReservationStatus.REJECTED, lines, reason=reason, sku=sku)
        reservation.events.append(Rejected(merchant_id, order_id, reason, sku, requested, available))
        return reservation
    for line in lines:
        shelf[line.sku].hold(line.quantity)
    reservation = Reservation(merchant_id, order_id, ReservationStatus.RESERVED, lines)
    reservation.events.append(Reserved(merchant_id, order_id, lines))
    return reservation


def _own(product: Product, merchant_id: str) -> Product:
    """`product`, if it is `merchant_id`'s to move."""
    if product.merchant_id != merchant_id:
        raise MerchantMismatch(product.sku, product.merchant_id, merchant_id)
    return product


def _first_refusal(lines: tuple[Line, ...], products: Mapping[str, Product]) -> tuple[str, str, int, int] | None:
    """(reason, sku, requested, available) of the first line that cannot be held, or None."""
    if not lines:
        return NO_LINES, "", 0, 0
    wanted: Counter[str] = Counter()
    for line in lines:
        wanted[line.sku] += line.quantity
    for line in lines:
        product = products.get(line.sku)
        if line.quantity <= 0:
            return INVALID_QUANTITY, line.sku, line.quantity, product.available if product else 0
        if product is None:
            return UNKNOWN_SKU, line.sku, wanted[line.sku], 0
        if wanted[line.sku] > product.available:
            return OUT_OF_STOCK, line.sku, wanted[line.sku], product.available
    return None


def tombstone(merchant_id: str, order_id: str) -> Reservation:
    """order.cancelled before order.placed: remember the cancel so a late order.placed is ignored."""
    reservation = Reservation(merchant_id, order_id, ReservationStatus.CANCELLED, cancel_answered=True)
    reservation.events.append(Released(merchant_id, order_id, (), held=False, cause=CAUSE_ORDER_CANCELLED))
    return reservation
