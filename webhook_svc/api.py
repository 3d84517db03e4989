"""WebhookService over gRPC: each RPC validates, then reads or changes the caller's own merchant's endpoints,
events and deliveries in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

from paymesh.chassis.auth import Scope, current_principal, requires
from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.errors import FailedPrecondition, NotFound, ResourceExhausted, ServiceError, invalid_argument
from paymesh.chassis.service import Runtime
from paymesh.chassis.validation import page_limit, split_page
from paymesh.webhook.v1 import webhook_service_pb2 as pb
from paymesh.webhook.v1 import webhook_service_pb2_grpc
from webhook_svc import signing, validate
from webhook_svc.domain import (
    Delivery,
    DisabledReason,
    DomainError,
    Endpoint,
    FailureReason,
    UnknownEventType,
    new_endpoint_id,
)
from webhook_svc.messages import delivery_to_proto, endpoint_to_proto, event_to_proto
from webhook_svc.store import WebhookRepository

Context = grpc.aio.ServicerContext[Any, Any]

# Endpoints one merchant may have (Stripe allows 16): each costs a delivery per event.
MAX_ENDPOINTS = 16


def refusal(exc: DomainError) -> ServiceError:
    """The one mapping from the domain's refusals to the client's status."""
    match exc:
        case UnknownEventType():
            return invalid_argument([("enabled_events", str(exc))])
        case _:
            raise TypeError(f"no status for {exc!r}")


def endpoint_not_found(endpoint_id: str) -> NotFound:
    """An endpoint id the caller's merchant has none under: unknown, or another merchant's (the same answer)."""
    return NotFound(f"webhook endpoint {endpoint_id} not found", reason="ENDPOINT_NOT_FOUND",
                    metadata={"endpoint_id": endpoint_id})


def event_not_found(event_id: str) -> NotFound:
    return NotFound(f"event {event_id} not found", reason="EVENT_NOT_FOUND", metadata={"event_id": event_id})


class WebhookApi(webhook_service_pb2_grpc.WebhookServiceServicer):
    """The WebhookService RPCs. Each acts for the merchant of the caller's key (`current_principal()`)."""

    def __init__(self, runtime: Runtime, repo: WebhookRepository, *, allow_private: bool,
                 wake_sender: Callable[[], None], schedule: tuple[float, ...]) -> None:
        self.runtime = runtime
        self.repo = repo
        self.allow_private = allow_private
        self.wake_sender = wake_sender
        self.schedule = schedule

    async def _locked(self, uow: UnitOfWork, merchant: str, endpoint_id: str) -> Endpoint:
        endpoint = await self.repo.get_endpoint(uow.conn, merchant, endpoint_id, lock=True)
        if endpoint is None:
            raise endpoint_not_found(endpoint_id)
        return endpoint

    @requires(Scope.WEBHOOKS_WRITE)
    async def CreateEndpoint(self, request: pb.CreateEndpointRequest, context: Context) -> pb.CreateEndpointResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        new = validate.create_endpoint(request, self.allow_private)
        await validate.url_reaches_public(new.url, self.allow_private)

        async def create(uow: UnitOfWork) -> pb.CreateEndpointResponse:
            if await self.repo.count_endpoints(uow.conn, merchant) >= MAX_ENDPOINTS:
                raise ResourceExhausted(f"a merchant may have at most {MAX_ENDPOINTS} webhook endpoints; delete one "
                                        "first", reason="ENDPOINT_LIMIT", metadata={"limit": str(MAX_ENDPOINTS)})
            now = datetime.now(UTC)
            secret = signing.new_secret()
            endpoint = Endpoint(new_endpoint_id(), merchant, new.url, new.enabled_events, new.description, secret,
                                now, now)
            await self.repo.add_endpoint(uow.conn, endpoint)
            return pb.CreateEndpointResponse(endpoint=endpoint_to_proto(endpoint), secret=secret)

        return await self.runtime.requests.run(
            merchant, "WebhookService.CreateEndpoint", request.request_id, request, pb.CreateEndpointResponse, create
        )

    @requires(Scope.WEBHOOKS_READ)
    async def GetEndpoint(self, request: pb.GetEndpointRequest, context: Context) -> pb.GetEndpointResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        endpoint_id = validate.get_endpoint(request)
        async with self.runtime.db.read() as conn:
            endpoint = await self.repo.get_endpoint(conn, merchant, endpoint_id)
        if endpoint is None:
            raise endpoint_not_found(endpoint_id)
        return pb.GetEndpointResponse(endpoint=endpoint_to_proto(endpoint))

    @requires(Scope.WEBHOOKS_READ)
    async def ListEndpoints(self, request: pb.ListEndpointsRequest, context: Context) -> pb.ListEndpointsResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        query = validate.list_endpoints(request, self.runtime.page_tokens, merchant)
        async with self.runtime.db.read() as conn:
            rows = await self.repo.endpoints_page(conn, merchant, query.after, page_limit(query.page_size))
        page, last = split_page(rows, query.page_size)
        return pb.ListEndpointsResponse(
            endpoints=[endpoint_to_proto(e) for e in page],
            next_page_token="" if last is None else query.next_token(last.create_time, last.endpoint_id),
        )

    @requires(Scope.WEBHOOKS_WRITE)
    async def UpdateEndpoint(self, request: pb.UpdateEndpointRequest, context: Context) -> pb.UpdateEndpointResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        change = validate.update_endpoint(request, self.allow_private)
        if change.url is not None:
            await validate.url_reaches_public(change.url, self.allow_private)

        async def update(uow: UnitOfWork) -> pb.UpdateEndpointResponse:
            endpoint = await self._locked(uow, merchant, request.endpoint_id)
            now = datetime.now(UTC)
            if change.url is not None:
                endpoint.url = change.url
            if change.enabled_events is not None:
                endpoint.enabled_events = change.enabled_events
            if change.description is not None:
                endpoint.description = change.description
            if change.disabled is True and not endpoint.disabled:
                endpoint.disable(DisabledReason.MERCHANT, now)
                await self.repo.stop_deliveries(uow.conn, endpoint, FailureReason.ENDPOINT_DISABLED)
            elif change.disabled is False and endpoint.disabled:
                endpoint.enable(now)
            endpoint.update_time = now
            await self.repo.save_endpoint(uow.conn, endpoint)
            return pb.UpdateEndpointResponse(endpoint=endpoint_to_proto(endpoint))

        return await self.runtime.requests.run(
            merchant, "WebhookService.UpdateEndpoint", request.request_id, request, pb.UpdateEndpointResponse, update
        )

    @requires(Scope.WEBHOOKS_WRITE)
    async def DeleteEndpoint(self, request: pb.DeleteEndpointRequest, context: Context) -> pb.DeleteEndpointResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        validate.endpoint_command(request)

        async def delete(uow: UnitOfWork) -> pb.DeleteEndpointResponse:
            endpoint = await self._locked(uow, merchant, request.endpoint_id)
            await self.repo.stop_deliveries(uow.conn, endpoint, FailureReason.ENDPOINT_DELETED)
            await self.repo.delete_endpoint(uow.conn, endpoint)
            return pb.DeleteEndpointResponse()

        return await self.runtime.requests.run(
            merchant, "WebhookService.DeleteEndpoint", request.request_id, request, pb.DeleteEndpointResponse, delete
        )

    @requires(Scope.WEBHOOKS_WRITE)
    async def RollEndpointSecret(  # noqa: N802
        self, request: pb.RollEndpointSecretRequest, context: Context
    ) -> pb.RollEndpointSecretResponse:
        merchant = current_principal().merchant_id
        grace = validate.roll_secret(request)

        async def roll(uow: UnitOfWork) -> pb.RollEndpointSecretResponse:
            endpoint = await self._locked(uow, merchant, request.endpoint_id)
            secret = signing.new_secret()
            endpoint.roll(secret, grace, datetime.now(UTC))
            await self.repo.save_endpoint(uow.conn, endpoint)
            return pb.RollEndpointSecretResponse(endpoint=endpoint_to_proto(endpoint), secret=secret)

        return await self.runtime.requests.run(
            merchant, "WebhookService.RollEndpointSecret", request.request_id, request, pb.RollEndpointSecretResponse,
            roll,
        )

    @requires(Scope.WEBHOOKS_READ)
    async def ListEvents(self, request: pb.ListEventsRequest, context: Context) -> pb.ListEventsResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        query = validate.list_events(request, self.runtime.page_tokens, merchant)
        success = request.delivery_success if request.HasField("delivery_success") else None
        async with self.runtime.db.read() as conn:
            rows = await self.repo.events_page(conn, merchant, type=request.type, order_id=request.order_id,
                                               delivery_success=success, after=query.after,
                                               limit=page_limit(query.page_size))
        page, last = split_page(rows, query.page_size)
        return pb.ListEventsResponse(
            events=[event_to_proto(e, counts) for e, counts in page],
            next_page_token="" if last is None else query.next_token(last[0].create_time, last[0].event_id),
        )

    @requires(Scope.WEBHOOKS_READ)
    async def ListDeliveries(self, request: pb.ListDeliveriesRequest, context: Context) -> pb.ListDeliveriesResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        query = validate.list_deliveries(request, self.runtime.page_tokens, merchant)
        async with self.runtime.db.read() as conn:
            rows = await self.repo.deliveries_page(conn, merchant, event_id=request.event_id,
                                                   endpoint_id=request.endpoint_id, after=query.after,
                                                   limit=page_limit(query.page_size))
        page, last = split_page(rows, query.page_size)
        return pb.ListDeliveriesResponse(
            deliveries=[delivery_to_proto(d, attempts) for d, attempts in page],
            next_page_token="" if last is None else query.next_token(last[0].create_time, last[0].delivery_id),
        )

    @requires(Scope.WEBHOOKS_WRITE)
    async def ResendEvent(self, request: pb.ResendEventRequest, context: Context) -> pb.ResendEventResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        validate.resend_event(request)

        async def resend(uow: UnitOfWork) -> pb.ResendEventResponse:
            event = await self.repo.get_event(uow.conn, merchant, request.event_id)
            if event is None:
                raise event_not_found(request.event_id)
            if request.endpoint_id:
                endpoint = await self._locked(uow, merchant, request.endpoint_id)
                if endpoint.disabled:
                    raise FailedPrecondition(
                        f"webhook endpoint {endpoint.endpoint_id} is disabled ({endpoint.disabled_reason}); enable it "
                        "with UpdateEndpoint first", reason="ENDPOINT_DISABLED",
                        metadata={"endpoint_id": endpoint.endpoint_id})
                targets = [endpoint]
            else:
                subscribed = await self.repo.subscribers(uow.conn, [merchant])
                targets = [e for e in subscribed.get(merchant, []) if e.subscribed(event.type)]
            now = datetime.now(UTC)
            deliveries = [Delivery.new(event.event_id, e.endpoint_id, merchant, now, self.schedule) for e in targets]
            await self.repo.add_deliveries(uow.conn, deliveries)
            if deliveries:
                uow.after_commit(self.wake_sender)
            return pb.ResendEventResponse(deliveries=[delivery_to_proto(d, []) for d in deliveries])

        return await self.runtime.requests.run(
            merchant, "WebhookService.ResendEvent", request.request_id, request, pb.ResendEventResponse, resend
        )
