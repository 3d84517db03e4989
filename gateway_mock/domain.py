"""The bank simulator's rules: test cards, charges and refunds, and their refusals. Pure Python."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gateway_mock.faults import NO_FAULTS, Faults

CARD_DECLINED = "card_declined"
INSUFFICIENT_FUNDS = "insufficient_funds"
REFUND_DECLINED = "refund_declined"


# --- errors -------------------------------------------------------------------------------------


class DomainError(Exception):
    """A refusal of the gateway; api.py maps each subclass to one gRPC status."""


class UnknownToken(DomainError):
    def __init__(self, token: str) -> None:
        super().__init__(f"unknown payment method token {token!r}")
        self.token = token


class IdempotencyKeyReused(DomainError):
    """The key already made a charge (or refund) of another request."""

    def __init__(self, kind: str, key: str, existing_id: str) -> None:
        super().__init__(
            f"idempotency_key {key!r} was already used for a different {kind} ({existing_id}); "
            f"use a new key for a new {kind}"
        )
        self.kind, self.key, self.existing_id = kind, key, existing_id


class ChargeNotFound(DomainError):
    def __init__(self, *, charge_id: str = "", idempotency_key: str = "") -> None:
        what = f"charge {charge_id!r}" if charge_id else f"a charge with idempotency_key {idempotency_key!r}"
        super().__init__(f"{what} not found")
        self.charge_id, self.idempotency_key = charge_id, idempotency_key


class InvalidTransition(DomainError):
    """The charge's status does not allow what was asked."""

    def __init__(self, charge: Charge, action: str) -> None:
        super().__init__(f"charge {charge.charge_id} is {charge.status}: it cannot be {action}")
        self.charge_id, self.status, self.action = charge.charge_id, charge.status, action


class RefundExceedsBalance(DomainError):
    def __init__(self, charge: Charge, requested_minor: int) -> None:
        super().__init__(
            f"refund of {requested_minor} exceeds what is left of charge {charge.charge_id} "
            f"({charge.refundable_minor} of {charge.amount_minor} {charge.currency})"
        )
        self.charge_id, self.requested_minor, self.refundable_minor = (
            charge.charge_id, requested_minor, charge.refundable_minor,
        )


class RefundDeclined(DomainError):
    def __init__(self, charge: Charge, decline_code: str) -> None:
        super().__init__(f"the bank declined the refund of charge {charge.charge_id} ({decline_code})")
        self.charge_id, self.decline_code = charge.charge_id, decline_code


class TransientFailure(DomainError):
    """Simulated: the gateway is unavailable; nothing was stored, a retry with the same key may succeed."""

    def __init__(self, key: str, cause: str) -> None:
        super().__init__(f"gateway temporarily unavailable ({cause}); retry with the same idempotency_key")
        self.key, self.cause = key, cause


class ResponseLost(DomainError):
    """Simulated: the work was done and stored, but its answer never reached the caller."""

    def __init__(self, key: str, cause: str) -> None:
        super().__init__(f"gateway did not answer in time ({cause}); retry with the same idempotency_key")
        self.key, self.cause = key, cause


# --- test cards ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestCard:
    """What a test token does. Only cards with `random_faults` are touched by the fault model."""

    __test__ = False  # not a pytest class

    token: str
    last4: str
    decline_code: str = ""
    unavailable_attempts: int = 0
    loses_first_response: bool = False
    refund_decline_code: str = ""
    random_faults: bool = False


TEST_CARDS: dict[str, TestCard] = {
    card.token: card
    for card in [
        TestCard("tok_visa", "4242", random_faults=True),
        TestCard("tok_chargeDeclined", "0002", decline_code=CARD_DECLINED),
        TestCard("tok_chargeDeclinedInsufficientFunds", "9995", decline_code=INSUFFICIENT_FUNDS),
        TestCard("tok_flaky", "0119", unavailable_attempts=2),
        TestCard("tok_lostResponse", "0259", loses_first_response=True),
        TestCard("tok_refundFails", "5126", refund_decline_code=REFUND_DECLINED),
    ]
}


def card_for(token: str) -> TestCard:
    try:
        return TEST_CARDS[token]
    except KeyError:
        raise UnknownToken(token) from None


# --- charges ------------------------------------------------------------------------------------


class ChargeStatus(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    DECLINED = "DECLINED"
    REFUNDED = "REFUNDED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"


REFUNDABLE = {ChargeStatus.SUCCEEDED, ChargeStatus.PARTIALLY_REFUNDED}


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class ChargeCommand:
    idempotency_key: str
    amount_minor: int
    currency: str
    token: str
    # The merchant paymesh charges for: a tag on the charge. Idempotency keys stay global to the platform,
    # the bank's one customer (payment_svc makes them unique per payment), not per merchant: the same key
    # with another merchant is another request, and replay refuses it.
    merchant_id: str
    order_id: str = ""
    description: str = ""

    def fingerprint(self) -> str:
        """What makes two charges "the same request": the money, the card and the order, not the free text.
        The merchant is compared beside it (Charge.replay), so the fingerprints stored before merchants
        existed still match a retry."""
        return _fingerprint("charge", self.amount_minor, self.currency, self.token, self.order_id)


@dataclass(frozen=True)
class ChargeDecision:
    status: ChargeStatus
    decline_code: str = ""
    lose_response: bool = False
    cause: str = ""  # what lost the response, for the error's metadata


def decide_charge(card: TestCard, key: str, attempt: int, faults: Faults = NO_FAULTS) -> ChargeDecision:
    """The outcome of a fresh attempt (no charge stored for the key yet); `attempt` counts from 1.

    Raises TransientFailure when nothing must be stored."""
    if attempt <= card.unavailable_attempts:
        raise TransientFailure(key, f"{card.token} attempt {attempt} of {card.unavailable_attempts} failing")
    if faults.transient:
        raise TransientFailure(key, "transient_error_rate")
    if card.decline_code:
        return ChargeDecision(ChargeStatus.DECLINED, card.decline_code)
    status, code = (ChargeStatus.DECLINED, CARD_DECLINED) if faults.decline else (ChargeStatus.SUCCEEDED, "")
    if card.loses_first_response:
        return ChargeDecision(status, code, lose_response=True, cause=card.token)
    return ChargeDecision(status, code, lose_response=faults.lose_response, cause="lost_response_rate")


@dataclass
class Charge:
    charge_id: str
    idempotency_key: str
    fingerprint: str
    amount_minor: int
    currency: str
    status: ChargeStatus
    token: str
    card_last4: str
    merchant_id: str
    create_time: datetime
    update_time: datetime
    refunded_minor: int = 0
    decline_code: str = ""
    order_id: str = ""
    description: str = ""

    @classmethod
    def create(cls, charge_id: str, cmd: ChargeCommand, decision: ChargeDecision, now: datetime) -> Charge:
        return cls(
            charge_id=charge_id,
            idempotency_key=cmd.idempotency_key,
            fingerprint=cmd.fingerprint(),
            amount_minor=cmd.amount_minor,
            currency=cmd.currency,
            status=decision.status,
            decline_code=decision.decline_code,
            token=cmd.token,
            card_last4=card_for(cmd.token).last4,
            merchant_id=cmd.merchant_id,
            order_id=cmd.order_id,
            description=cmd.description,
            create_time=now,
            update_time=now,
        )

    @property
    def refundable_minor(self) -> int:
        return self.amount_minor - self.refunded_minor if self.status in REFUNDABLE else 0

    def replay(self, cmd: ChargeCommand) -> Charge:
        """This charge, as the answer to a retry of `cmd`; refused when the key came with another request,
        another merchant's included."""
        if cmd.fingerprint() != self.fingerprint or cmd.merchant_id != self.merchant_id:
            raise IdempotencyKeyReused("charge", self.idempotency_key, self.charge_id)
        return self

    def refund(self, refund_id: str, cmd: RefundCommand, now: datetime) -> Refund:
        """Take `cmd.amount_minor` back (0: all that is left), or refuse; returns the refund made."""
        if self.status not in REFUNDABLE:
            raise InvalidTransition(self, "refunded")
        amount = cmd.amount_minor or self.refundable_minor
        if amount > self.refundable_minor:
            raise RefundExceedsBalance(self, amount)
        decline_code = card_for(self.token).refund_decline_code
        if decline_code:
            raise RefundDeclined(self, decline_code)
        self.refunded_minor += amount
        self.status = (
            ChargeStatus.REFUNDED if self.refunded_minor == self.amount_minor else ChargeStatus.PARTIALLY_REFUNDED
        )
        self.update_time = now
        return Refund(
            refund_id=refund_id,
            idempotency_key=cmd.idempotency_key,
            fingerprint=cmd.fingerprint(),
            charge_id=self.charge_id,
            merchant_id=self.merchant_id,
            amount_minor=amount,
            currency=self.currency,
            reason=cmd.reason,
            create_time=now,
        )


# --- refunds ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefundCommand:
    idempotency_key: str
    charge_id: str
    amount_minor: int = 0  # 0: all that is left
    reason: str = ""

    def fingerprint(self) -> str:
        # The amount as asked (0 stays 0), so a retry of "the rest" matches after the rest was taken.
        return _fingerprint("refund", self.charge_id, self.amount_minor)


@dataclass(frozen=True)
class Refund:
    refund_id: str
    idempotency_key: str
    fingerprint: str
    charge_id: str
    merchant_id: str  # the refunded charge's
    amount_minor: int
    currency: str
    create_time: datetime
    reason: str = ""

    def replay(self, cmd: RefundCommand) -> Refund:
        if cmd.fingerprint() != self.fingerprint:
            raise IdempotencyKeyReused("refund", self.idempotency_key, self.refund_id)
        return self


@dataclass(frozen=True)
class ChargeQuery:
    """ListCharges: newest first, after the cursor `before_seq` (None: from the newest)."""

    page_size: int
    before_seq: int | None = None
    merchant_id: str = ""  # "": every merchant's
    order_id: str = ""
    status: ChargeStatus | None = None


@dataclass(frozen=True)
class ChargeLookup:
    """GetCharge: one charge by its id, or else by its idempotency key."""

    charge_id: str = ""
    idempotency_key: str = ""
