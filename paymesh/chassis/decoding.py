"""Request bodies to messages, in the chassis: a body that is not the method's protobuf is INVALID_ARGUMENT.

grpc decodes a request before any interceptor's behaviour runs and answers a DecodeError UNKNOWN, with a
traceback in the log; the CallInterceptor hands grpc no deserializer and decodes here instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError

from paymesh.chassis.errors import InvalidArgument

Deserializer = Callable[[bytes], Any]
MAX_CAUSE_CHARS = 120


def request_decoder(method: str, deserializer: Deserializer | None) -> Deserializer:
    """What turns `method`'s request bytes into its message, refusing what does not decode. A handler with no
    deserializer takes the bytes as they are (the AuthInterceptor's refusals do: an unauthenticated
    caller's body is never parsed)."""
    if deserializer is None:
        return _as_is
    decode: Deserializer = deserializer

    def decoded(raw: bytes) -> Any:
        try:
            return decode(raw)
        except Exception as exc:  # DecodeError, and whatever else a deserializer raises on hostile bytes
            raise undecodable(method, exc) from None

    return decoded


def _as_is(raw: bytes) -> Any:
    return raw


def undecodable(method: str, exc: Exception) -> InvalidArgument:
    type_name = request_type(method)
    rpc = method.rpartition("/")[2] or method
    cause = _cause(exc)
    return InvalidArgument(
        f"the request body is not a valid {type_name} ({cause}): send the {type_name} message {rpc} takes, "
        "serialised by a protobuf library, with every string in UTF-8",
        reason="REQUEST_UNDECODABLE",
        metadata={"method": method, "message_type": type_name, "cause": cause},
    )


def request_type(method: str) -> str:
    """The full name of `/pkg.Service/Method`'s input message, from the descriptors; a generic name when the
    method is not in them."""
    service, _, name = method.strip("/").partition("/")
    try:
        return str(descriptor_pool.Default().FindServiceByName(service).methods_by_name[name].input_type.full_name)
    except KeyError:
        return "request message"


def _cause(exc: Exception) -> str:
    """protobuf's own words ("Wire format was corrupt", "String field had bad UTF-8"), never the bytes."""
    if isinstance(exc, DecodeError):
        text = str(exc).rpartition(": ")[2].strip() or "malformed"
        return text[:MAX_CAUSE_CHARS]
    return type(exc).__name__
