"""GatewayService over gRPC: each RPC validates into a command, makes one call to the bank simulator, answers.

gateway_mock consumes no events, so it has no handlers.py: this servicer is its only entry point.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from gateway_mock import validate
from gateway_mock.domain import (
    ChargeNotFound,
    DomainError,
    IdempotencyKeyReused,
    InvalidTransition,
    RefundDeclined,
    RefundExceedsBalance,
    ResponseLost,
    TransientFailure,
    UnknownToken,
)
from gateway_mock.gateway import BankSimulator
from gateway_mock.messages import charge_to_proto, config_to_proto, refund_to_proto
from gateway_mock.store import GatewayRepository
from paymesh.chassis.auth import Scope, current_principal, requires
from paymesh.chassis.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)
from paymesh.chassis.observability import saga_context
from paymesh.chassis.service import Runtime
from paymesh.gateway.v1 import gateway_service_pb2 as pb
from paymesh.gateway.v1 import gateway_service_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger(__name__)


def refusal(exc: DomainError) -> ServiceError:
    """The one mapping from the gateway's refusals to gRPC statuses and ErrorInfo reasons."""
    message = str(exc)
    match exc:
        case IdempotencyKeyReused():
            return AlreadyExists(
                message,
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"idempotency_key": exc.key, f"{exc.kind}_id": exc.existing_id},
            )
        case ChargeNotFound():
            lookup = {"charge_id": exc.charge_id} if exc.charge_id else {"idempotency_key": exc.idempotency_key}
            return NotFound(message, reason="CHARGE_NOT_FOUND", metadata=lookup)
        case InvalidTransition():
            return FailedPrecondition(
                message, reason="CHARGE_NOT_REFUNDABLE", metadata={"charge_id": exc.charge_id, "status": exc.status}
            )
        case RefundExceedsBalance():
            return FailedPrecondition(
                message,
                reason="REFUND_EXCEEDS_BALANCE",
                metadata={
                    "charge_id": exc.charge_id,
                    "requested_minor": exc.requested_minor,
                    "refundable_minor": exc.refundable_minor,
                },
            )
        case RefundDeclined():
            metadata = {"charge_id": exc.charge_id, "decline_code": exc.decline_code}
            return FailedPrecondition(message, reason="REFUND_DECLINED", metadata=metadata)
        case TransientFailure():
            return Unavailable(
                message, reason="GATEWAY_UNAVAILABLE", metadata={"idempotency_key": exc.key, "cause": exc.cause}
            )
        case ResponseLost():
            return DeadlineExceeded(
                message, reason="GATEWAY_RESPONSE_LOST", metadata={"idempotency_key": exc.key, "cause": exc.cause}
            )
        case UnknownToken():
            return InvalidArgument(
                message,
                reason="INVALID_ARGUMENT",
                metadata={"fields": "payment_method_token"},
                violations=[("payment_method_token", message)],
            )
    raise exc  # a DomainError with no mapping is a bug: the chassis answers INTERNAL


class GatewayApi(gateway_service_pb2_grpc.GatewayServiceServicer):
    # The gateway is called with idempotency keys, not AIP-155 request ids: the bank simulator
    # is its own idempotency (a key's stored charge or refund), so no RPC goes through the request log.
    # Its caller is the platform (current_principal() is paymesh's own key, merchant "platform"), never a
    # merchant: the merchant a charge is for comes in ChargeRequest.merchant_id, a tag, and no read is
    # filtered by who calls.
    def __init__(self, runtime: Runtime, repository: GatewayRepository) -> None:
        self.runtime = runtime
        self.bank = BankSimulator(runtime.db, repository)

    @requires(Scope.PLATFORM)
    async def Charge(self, request: pb.ChargeRequest, context: Context) -> pb.ChargeResponse:  # noqa: N802 - gRPC name
        cmd = validate.charge(request)
        try:
            charge = await self.bank.charge(cmd)
        except DomainError as exc:
            raise refusal(exc) from exc
        log.info("charge %s %s %d %s", charge.charge_id, charge.status, charge.amount_minor, charge.currency,
                 extra=saga_context(charge.order_id, charge.merchant_id))
        return pb.ChargeResponse(charge=charge_to_proto(charge))

    @requires(Scope.PLATFORM)
    async def Refund(self, request: pb.RefundRequest, context: Context) -> pb.RefundResponse:  # noqa: N802
        cmd = validate.refund(request)
        try:
            refund, charge = await self.bank.refund(cmd)
        except DomainError as exc:
            raise refusal(exc) from exc
        log.info("refund %s of %s %d %s", refund.refund_id, charge.charge_id, refund.amount_minor, charge.currency,
                 extra=saga_context(charge.order_id, charge.merchant_id))
        return pb.RefundResponse(refund=refund_to_proto(refund), charge=charge_to_proto(charge))

    @requires(Scope.PLATFORM)
    async def GetCharge(self, request: pb.GetChargeRequest, context: Context) -> pb.GetChargeResponse:  # noqa: N802
        lookup = validate.get_charge(request)
        try:
            charge = await self.bank.get_charge(lookup)
        except DomainError as exc:
            raise refusal(exc) from exc
        return pb.GetChargeResponse(charge=charge_to_proto(charge))

    @requires(Scope.PLATFORM)
    async def ListCharges(self, request: pb.ListChargesRequest, context: Context) -> pb.ListChargesResponse:  # noqa: N802
        listing = validate.list_charges(request, self.runtime.page_tokens, current_principal().merchant_id)
        charges, next_seq = await self.bank.list_charges(listing.query)
        return pb.ListChargesResponse(
            charges=[charge_to_proto(c) for c in charges],
            next_page_token=listing.next_token(next_seq),
        )

    @requires(Scope.OPERATOR)
    async def Configure(self, request: pb.ConfigureRequest, context: Context) -> pb.ConfigureResponse:  # noqa: N802
        cmd = validate.configure(request)
        return pb.ConfigureResponse(config=config_to_proto(await self.bank.configure(cmd)))
