"""What webhook_svc accepts as input: every violation of a request at once, before anything is written."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from yarl import URL

from paymesh.chassis import validation
from paymesh.chassis.db import as_utc
from paymesh.chassis.errors import invalid_argument
from paymesh.chassis.page_tokens import PageTokens, TokenBinding
from paymesh.chassis.validation import Violations
from paymesh.webhook.v1 import webhook_service_pb2 as pb
from webhook_svc import ssrf
from webhook_svc.domain import DEFAULT_GRACE, EVENT_TYPES, EVERY_TYPE, MAX_GRACE, UnknownEventType, event_types
from webhook_svc.store import Cursor

MAX_DESCRIPTION = 200
# A registration waits this long for the URL's host to resolve.
RESOLVE_TIMEOUT_S = 5.0
MAX_EVENTS = len(EVENT_TYPES) + 1
ENDPOINT_ID = re.compile(r"^we_[0-9a-f]{32}$")
EVENT_ID = re.compile(r"^evt_[0-9a-f]{32}$")
ORDER_ID = re.compile(r"^ord_[0-9a-f]{32}$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
UPDATABLE = ("url", "enabled_events", "description", "disabled")
_METHODS = pb.DESCRIPTOR.services_by_name["WebhookService"].methods_by_name
LIST_ENDPOINTS = _METHODS["ListEndpoints"].full_name
LIST_EVENTS = _METHODS["ListEvents"].full_name
LIST_DELIVERIES = _METHODS["ListDeliveries"].full_name


def _id(v: Violations, field_name: str, value: str, pattern: re.Pattern[str], what: str, *, required: bool) -> None:
    if not value:
        if required:
            v.add(field_name, "is required")
    elif not pattern.match(value):
        v.add(field_name, f"must be {what}, got {value[:80]!r}")


def endpoint_id(v: Violations, value: str, *, required: bool = True) -> None:
    _id(v, "endpoint_id", value, ENDPOINT_ID, "an endpoint id as CreateEndpoint returns it (we_ and 32 hex digits)",
        required=required)


def url(v: Violations, value: str, allow_private: bool) -> None:
    if not value:
        v.add("url", "is required: where deliveries are POSTed (https://...)")
        return
    try:
        ssrf.check_url(value, allow_private=allow_private)
    except ssrf.InvalidUrl as exc:
        v.add("url", str(exc))


def events(v: Violations, values: list[str]) -> tuple[str, ...]:
    if not values:
        v.add("enabled_events", f"name at least one event type: {', '.join(EVENT_TYPES)}, or {EVERY_TYPE} for all")
        return ()
    if len(values) > MAX_EVENTS:
        v.add("enabled_events", f"at most {MAX_EVENTS} types, got {len(values)}")
        return ()
    try:
        return event_types([value[:64] for value in values])
    except UnknownEventType as exc:
        v.add("enabled_events", str(exc))
        return ()


def description(v: Violations, value: str) -> None:
    if len(value) > MAX_DESCRIPTION:
        v.add("description", f"must be at most {MAX_DESCRIPTION} characters, got {len(value)}")
    elif CONTROL.search(value):
        v.add("description", "must not contain control characters")


async def url_reaches_public(value: str, allow_private: bool) -> None:
    """At registration, the addresses the URL's host resolves to now, checked as each send checks them again
    (DNS can change in between): INVALID_ARGUMENT on `url` when refused or unresolvable."""
    parsed = URL(value)
    host = parsed.raw_host or ""
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            await ssrf.resolve_checked(host.strip("[]"), parsed.port or 443, allow_private=allow_private)
    except (ssrf.RefusedAddress, ssrf.UnresolvableHost) as exc:
        raise invalid_argument([("url", str(exc))]) from None
    except TimeoutError:
        raise invalid_argument([("url", f"host {host[:80]} did not resolve within {RESOLVE_TIMEOUT_S:g} s")]) from None


@dataclass(frozen=True)
class NewEndpoint:
    url: str
    enabled_events: tuple[str, ...]
    description: str


def create_endpoint(request: pb.CreateEndpointRequest, allow_private: bool) -> NewEndpoint:
    v = Violations()
    v.request_id("request_id", request.request_id)
    url(v, request.url, allow_private)
    types = events(v, list(request.enabled_events))
    description(v, request.description)
    v.raise_if_any()
    return NewEndpoint(request.url, types, request.description)


@dataclass(frozen=True)
class EndpointChange:
    """The fields UpdateEndpoint changes; None for each it leaves."""

    url: str | None
    enabled_events: tuple[str, ...] | None
    description: str | None
    disabled: bool | None


def update_endpoint(request: pb.UpdateEndpointRequest, allow_private: bool) -> EndpointChange:
    v = Violations()
    v.request_id("request_id", request.request_id)
    endpoint_id(v, request.endpoint_id)
    paths = list(request.update_mask.paths)
    unknown = [p for p in paths if p not in UPDATABLE]
    if unknown:
        v.add("update_mask", f"unknown field {', '.join(p[:64] for p in unknown)}: use {', '.join(UPDATABLE)}")
    if not paths:  # AIP-134: an empty mask changes every field given a value
        paths = [name for name, given in (("url", request.url), ("enabled_events", list(request.enabled_events)),
                                          ("description", request.description), ("disabled", request.disabled))
                 if given]
        if not paths:
            v.add("update_mask", f"name the fields to change ({', '.join(UPDATABLE)}) or give them values")
    if "url" in paths:
        url(v, request.url, allow_private)
    types = events(v, list(request.enabled_events)) if "enabled_events" in paths else None
    if "description" in paths:
        description(v, request.description)
    v.raise_if_any()
    return EndpointChange(
        url=request.url if "url" in paths else None,
        enabled_events=types,
        description=request.description if "description" in paths else None,
        disabled=request.disabled if "disabled" in paths else None,
    )


def endpoint_command(request: pb.DeleteEndpointRequest) -> None:
    v = Violations()
    v.request_id("request_id", request.request_id)
    endpoint_id(v, request.endpoint_id)
    v.raise_if_any()


def get_endpoint(request: pb.GetEndpointRequest) -> str:
    v = Violations()
    endpoint_id(v, request.endpoint_id)
    v.raise_if_any()
    return request.endpoint_id


def roll_secret(request: pb.RollEndpointSecretRequest) -> timedelta:
    """The grace period the old secret keeps signing for."""
    v = Violations()
    v.request_id("request_id", request.request_id)
    endpoint_id(v, request.endpoint_id)
    grace = DEFAULT_GRACE
    if request.HasField("grace_period"):
        d = request.grace_period
        if d.seconds < 0 or d.nanos < 0 or not 0 <= d.nanos < 1_000_000_000:
            v.add("grace_period", "must not be negative")
        elif d.seconds > MAX_GRACE.total_seconds():
            v.add("grace_period", f"must be at most {MAX_GRACE.days} days, got {d.seconds} s")
        else:
            grace = timedelta(seconds=d.seconds, microseconds=d.nanos // 1000)
    v.raise_if_any()
    return grace


def resend_event(request: pb.ResendEventRequest) -> None:
    v = Violations()
    v.request_id("request_id", request.request_id)
    _id(v, "event_id", request.event_id, EVENT_ID, "an event id as ListEvents shows it (evt_ and 32 hex digits)",
        required=True)
    endpoint_id(v, request.endpoint_id, required=False)
    v.raise_if_any()


@dataclass(frozen=True)
class PageQuery:
    """A List RPC's page: its size, where it resumes, and the binding its next token is signed under."""

    page_size: int
    after: Cursor | None
    tokens: TokenBinding = field(compare=False, repr=False)

    def next_token(self, create_time: datetime, id: str) -> str:
        return self.tokens.issue([create_time.isoformat(), id])


def _page(v: Violations, pages: PageTokens, method: str, merchant_id: str, page_size: int, page_token: str,
          filters: list[str]) -> PageQuery:
    size = validation.page_size(v, page_size)
    tokens = pages.bind(method, merchant_id, filters)
    cursor = tokens.read(v, page_token, 2)
    after = None if cursor is None else Cursor(as_utc(datetime.fromisoformat(cursor[0])), cursor[1])
    return PageQuery(size, after, tokens)


def list_endpoints(request: pb.ListEndpointsRequest, pages: PageTokens, merchant_id: str) -> PageQuery:
    v = Violations()
    query = _page(v, pages, LIST_ENDPOINTS, merchant_id, request.page_size, request.page_token, [])
    v.raise_if_any()
    return query


def list_events(request: pb.ListEventsRequest, pages: PageTokens, merchant_id: str) -> PageQuery:
    v = Violations()
    if request.type and request.type not in EVENT_TYPES:
        v.add("type", f"must be one of {', '.join(EVENT_TYPES)}, got {request.type[:64]!r}")
    _id(v, "order_id", request.order_id, ORDER_ID, "an order id (ord_ and 32 hex digits)", required=False)
    success = str(request.delivery_success) if request.HasField("delivery_success") else ""
    query = _page(v, pages, LIST_EVENTS, merchant_id, request.page_size, request.page_token,
                  [request.type, request.order_id, success])
    v.raise_if_any()
    return query


def list_deliveries(request: pb.ListDeliveriesRequest, pages: PageTokens, merchant_id: str) -> PageQuery:
    v = Violations()
    _id(v, "event_id", request.event_id, EVENT_ID, "an event id (evt_ and 32 hex digits)", required=False)
    endpoint_id(v, request.endpoint_id, required=False)
    query = _page(v, pages, LIST_DELIVERIES, merchant_id, request.page_size, request.page_token,
                  [request.event_id, request.endpoint_id])
    v.raise_if_any()
    return query
