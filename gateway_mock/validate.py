"""What gateway_mock accepts: each request as a command, every violation at once, before anything is written."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway_mock.domain import TEST_CARDS, ChargeCommand, ChargeLookup, ChargeQuery, RefundCommand
from gateway_mock.faults import FaultConfig, Reconfigure, updated
from gateway_mock.messages import status_from_proto
from gateway_mock.store import TEXT_LEN
from paymesh.chassis import money, validation
from paymesh.chassis.page_tokens import PageTokens, TokenBinding
from paymesh.chassis.schema_steps import MERCHANT_ID_LENGTH
from paymesh.chassis.validation import Violations
from paymesh.gateway.v1 import gateway_pb2, gateway_service_pb2

CONFIG_FIELDS = ("latency_ms", "decline_rate", "transient_error_rate", "lost_response_rate", "seed")
LIST_CHARGES = (
    gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"].methods_by_name["ListCharges"].full_name
)


def _text(v: Violations, field: str, value: str) -> None:
    v.check(len(value) <= TEXT_LEN, field, f"must be at most {TEXT_LEN} characters, got {len(value)}")


def charge(request: gateway_service_pb2.ChargeRequest) -> ChargeCommand:
    v = Violations()
    v.identifier("idempotency_key", request.idempotency_key)
    v.check(request.amount_minor > 0, "amount_minor", f"must be greater than 0, got {request.amount_minor}")
    v.check(
        money.is_currency(request.currency),
        "currency",
        f"must be an ISO 4217 currency code such as USD, got {request.currency!r}",
    )
    token = request.payment_method_token
    if v.check(bool(token), "payment_method_token", "is required, e.g. tok_visa"):
        v.check(
            token in TEST_CARDS,
            "payment_method_token",
            # The token itself is not repeated: an error message may be logged, and a token is payment data.
            f"is not a test token the gateway knows; use one of {', '.join(TEST_CARDS)}",
        )
    # Required: every charge is made for a merchant, and says which (the platform's tag, not a caller's).
    v.identifier("merchant_id", request.merchant_id, max_len=MERCHANT_ID_LENGTH)
    v.identifier("order_id", request.order_id, required=False)
    _text(v, "description", request.description)
    v.raise_if_any()
    return ChargeCommand(
        idempotency_key=request.idempotency_key,
        amount_minor=request.amount_minor,
        currency=request.currency,
        token=token,
        merchant_id=request.merchant_id,
        order_id=request.order_id,
        description=request.description,
    )


def refund(request: gateway_service_pb2.RefundRequest) -> RefundCommand:
    v = Violations()
    v.identifier("idempotency_key", request.idempotency_key)
    v.identifier("charge_id", request.charge_id)
    v.check(
        request.amount_minor >= 0,
        "amount_minor",
        f"must be 0 (all that is left) or positive, got {request.amount_minor}",
    )
    _text(v, "reason", request.reason)
    v.raise_if_any()
    return RefundCommand(
        idempotency_key=request.idempotency_key,
        charge_id=request.charge_id,
        amount_minor=request.amount_minor,
        reason=request.reason,
    )


def get_charge(request: gateway_service_pb2.GetChargeRequest) -> ChargeLookup:
    # `lookup` is a oneof: at most one of the two is set, the other reads "".
    v = Violations()
    if request.charge_id:
        v.identifier("charge_id", request.charge_id)
    elif request.idempotency_key:
        v.identifier("idempotency_key", request.idempotency_key)
    else:
        v.add("charge_id", "charge_id or idempotency_key is required")
    v.raise_if_any()
    return ChargeLookup(charge_id=request.charge_id, idempotency_key=request.idempotency_key)


@dataclass(frozen=True)
class ChargePage:
    """ListCharges: the query, and the page tokens of its filters."""

    query: ChargeQuery
    tokens: TokenBinding = field(compare=False, repr=False)

    def next_token(self, next_seq: int | None) -> str:
        """The token of the page after `next_seq` (empty at the end)."""
        return "" if next_seq is None else self.tokens.issue([str(next_seq)])


def list_charges(request: gateway_service_pb2.ListChargesRequest, pages: PageTokens, caller_id: str) -> ChargePage:
    """`caller_id`: the merchant of the caller's key (the platform), whose tokens these are."""
    v = Violations()
    size = validation.page_size(v, request.page_size)
    v.identifier("merchant_id", request.merchant_id, required=False, max_len=MERCHANT_ID_LENGTH)
    v.identifier("order_id", request.order_id, required=False)
    status = None
    if request.status != gateway_pb2.CHARGE_STATUS_UNSPECIFIED:
        status = status_from_proto(request.status)
        v.check(status is not None, "status", f"is not a ChargeStatus, got {request.status}")
    filters = [request.merchant_id, request.order_id, str(request.status)]
    tokens = pages.bind(LIST_CHARGES, caller_id, filters)
    cursor = tokens.read(v, request.page_token, 1)
    v.raise_if_any()
    query = ChargeQuery(page_size=size, before_seq=None if cursor is None else int(cursor[0]),
                        merchant_id=request.merchant_id, order_id=request.order_id, status=status)
    return ChargePage(query, tokens)


def configure(request: gateway_service_pb2.ConfigureRequest) -> Reconfigure:
    """The settings the request sets (unset fields keep their value), each in range."""
    v = Violations()
    changes = {name: getattr(request, name) for name in CONFIG_FIELDS if request.HasField(name)}
    for name, why in updated(FaultConfig(), reset=True, **changes).problems():
        v.add(name, why)
    v.raise_if_any()
    return Reconfigure(changes, reset=request.reset)
