"""The GatewayService servicer: request to command, one gateway operation, result to reply; errors mapped here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import grpc

from gateway_mock import domain, mapping
from gateway_mock.gateway import Gateway
from paymesh.chassis.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)
from paymesh.gateway.v1 import gateway_service_pb2 as pb
from paymesh.gateway.v1 import gateway_service_pb2_grpc


class DeadlineExceeded(ServiceError):
    """The chassis has no DEADLINE_EXCEEDED error; the simulated lost response needs one."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


def service_error(err: domain.DomainError) -> ServiceError:
    """The one mapping from the gateway's refusals to gRPC statuses and ErrorInfo reasons."""
    message = str(err)
    match err:
        case domain.IdempotencyKeyReused():
            return AlreadyExists(
                message,
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"idempotency_key": err.key, f"{err.kind}_id": err.existing_id},
            )
        case domain.ChargeNotFound():
            lookup = {"charge_id": err.charge_id} if err.charge_id else {"idempotency_key": err.idempotency_key}
            return NotFound(message, reason="CHARGE_NOT_FOUND", metadata=lookup)
        case domain.InvalidTransition():
            return FailedPrecondition(
                message, reason="CHARGE_NOT_REFUNDABLE", metadata={"charge_id": err.charge_id, "status": err.status}
            )
        case domain.RefundExceedsBalance():
            return FailedPrecondition(
                message,
                reason="REFUND_EXCEEDS_BALANCE",
                metadata={
                    "charge_id": err.charge_id,
                    "requested_minor": err.requested_minor,
                    "refundable_minor": err.refundable_minor,
                },
            )
        case domain.RefundDeclined():
            metadata = {"charge_id": err.charge_id, "decline_code": err.decline_code}
            return FailedPrecondition(message, reason="REFUND_DECLINED", metadata=metadata)
        case domain.TransientFailure():
            return Unavailable(
                message, reason="GATEWAY_UNAVAILABLE", metadata={"idempotency_key": err.key, "cause": err.cause}
            )
        case domain.ResponseLost():
            return DeadlineExceeded(
                message, reason="GATEWAY_RESPONSE_LOST", metadata={"idempotency_key": err.key, "cause": err.cause}
            )
        case domain.UnknownToken():
            return InvalidArgument(
                message,
                reason="INVALID_ARGUMENT",
                metadata={"fields": "payment_method_token"},
                violations=[("payment_method_token", message)],
            )
    raise err  # a DomainError with no mapping is a bug: the chassis answers INTERNAL


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    try:
        yield
    except domain.DomainError as err:
        raise service_error(err) from err


class GatewayServicer(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def Charge(self, request: pb.ChargeRequest, context: Any) -> pb.ChargeResponse:  # noqa: N802 - gRPC name
        cmd = mapping.charge_command(request)
        with refusals():
            charge = await self.gateway.charge(cmd)
        return pb.ChargeResponse(charge=mapping.charge_pb(charge))

    async def Refund(self, request: pb.RefundRequest, context: Any) -> pb.RefundResponse:  # noqa: N802
        cmd = mapping.refund_command(request)
        with refusals():
            refund, charge = await self.gateway.refund(cmd)
        return pb.RefundResponse(refund=mapping.refund_pb(refund), charge=mapping.charge_pb(charge))

    async def GetCharge(self, request: pb.GetChargeRequest, context: Any) -> pb.GetChargeResponse:  # noqa: N802
        lookup = mapping.charge_lookup(request)
        with refusals():
            charge = await self.gateway.get_charge(**lookup)
        return pb.GetChargeResponse(charge=mapping.charge_pb(charge))

    async def ListCharges(self, request: pb.ListChargesRequest, context: Any) -> pb.ListChargesResponse:  # noqa: N802
        query = mapping.charge_query(request)
        charges, next_seq = await self.gateway.list_charges(query)
        return pb.ListChargesResponse(
            charges=[mapping.charge_pb(c) for c in charges],
            next_page_token=mapping.next_page_token(request, next_seq),
        )

    async def Configure(self, request: pb.ConfigureRequest, context: Any) -> pb.ConfigureResponse:  # noqa: N802
        changes = mapping.fault_changes(request)
        config = await self.gateway.configure(changes, reset=request.reset)
        return pb.ConfigureResponse(config=mapping.config_pb(config))
