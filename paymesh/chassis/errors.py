"""Service errors, and the one place they become rich gRPC statuses (AIP-193)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "paymesh.dev"


class ServiceError(Exception):
    """A refusal a client can act on. Subclasses fix the gRPC code; `reason` is UPPER_SNAKE."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        metadata: Mapping[str, object] | None = None,
        violations: Sequence[tuple[str, str]] = (),
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}
        self.violations = list(violations)
        # When to ask again, sent as google.rpc.RetryInfo (AIP-193): an overload, a rate limit.
        self.retry_after_s = retry_after_s


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(ServiceError):
    code = grpc.StatusCode.UNIMPLEMENTED

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="NOT_IMPLEMENTED")


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


def invalid_argument(violations: Sequence[tuple[str, str]]) -> InvalidArgument:
    """Bad input: one field violation per problem, summarised in the message."""
    summary = "; ".join(f"{field}: {desc}" for field, desc in violations)
    return InvalidArgument(
        f"invalid request: {summary}",
        reason="INVALID_ARGUMENT",
        metadata={"fields": ",".join(field for field, _ in violations)},
        violations=violations,
    )


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(err: ServiceError) -> grpc.Status:
    """The rich status: code, message, one ErrorInfo, BadRequest field violations and RetryInfo if any."""
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN, metadata=err.metadata))
    ]
    if err.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=desc)
                for field, desc in err.violations
            ]
        )
        details.append(_pack(bad_request))
    if err.retry_after_s is not None:
        millis = max(1, math.ceil(err.retry_after_s * 1000))
        delay = duration_pb2.Duration(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    code_value = getattr(code_pb2, err.code.name)
    status = status_pb2.Status(code=code_value, message=err.message, details=details)
    return rpc_status.to_status(status)


def internal_status(message: str = "internal error; it has been logged, retry later") -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=ERROR_DOMAIN)
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=message, details=[_pack(info)])
    return rpc_status.to_status(status)
