"""OrderService over gRPC: each RPC validates, calls the domain in one transaction on the caller's own
merchant's orders, answers the order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from order_svc import validate
from order_svc.domain import SETTLED, DomainError, InvalidTransition, NotCancellable, Order, TotalOverflow
from order_svc.messages import order_to_proto, outbox_rows, status_from_proto
from order_svc.store import OrderRepository
from order_svc.watch import OrderWatch
from paymesh.chassis.auth import Scope, current_principal, requires
from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.errors import FailedPrecondition, NotFound, ServiceError, invalid_argument
from paymesh.chassis.service import Runtime
from paymesh.chassis.tracing import current_traceparent
from paymesh.chassis.validation import page_limit, split_page
from paymesh.order.v1 import order_service_pb2 as pb
from paymesh.order.v1 import order_service_pb2_grpc

# What a servicer is handed with each call (the generated base names a private subtype of it).
Context = grpc.aio.ServicerContext[Any, Any]

# A WatchOrder stream re-reads its order this often, for changes committed by another replica.
WATCH_REREAD_S = 1.0


def refusal(exc: DomainError) -> ServiceError:
    """The one mapping from the domain's refusals to the client's status."""
    match exc:
        case NotCancellable():  # before InvalidTransition, which it is a kind of
            return FailedPrecondition(
                f"order {exc.order_id} is {exc.status} and can no longer be cancelled",
                reason="ORDER_NOT_CANCELLABLE",
                metadata={"order_id": exc.order_id, "status": exc.status.value},
            )
        case TotalOverflow():
            return invalid_argument([("items", str(exc))])
        case InvalidTransition():
            return FailedPrecondition(
                str(exc), reason="INVALID_TRANSITION", metadata={"order_id": exc.order_id, "status": exc.status.value}
            )
        case _:
            raise TypeError(f"no status for {exc!r}")


def not_found(order_id: str) -> NotFound:
    """An order id the caller's merchant has no order under: unknown, or another merchant's (the same answer)."""
    return NotFound(f"order {order_id} not found", reason="ORDER_NOT_FOUND", metadata={"order_id": order_id})


class OrderApi(order_service_pb2_grpc.OrderServiceServicer):
    """The OrderService RPCs; a write hands the order's new state to the watch hub once it commits.

    Each RPC acts for the merchant of the caller's key (`current_principal()`), never one named in a request.
    """

    def __init__(self, runtime: Runtime, orders: OrderRepository, watch: OrderWatch) -> None:
        self.runtime = runtime
        self.orders = orders
        self.watch = watch
        self.watch_reread_s = WATCH_REREAD_S

    @requires(Scope.ORDERS_WRITE)
    async def CreateOrder(self, request: pb.CreateOrderRequest, context: Context) -> pb.CreateOrderResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        lines = validate.create_order(request)
        trace = current_traceparent()  # the call's span (paymesh.chassis.observability)
        timeout = timedelta(seconds=self.runtime.settings.saga_timeout_s)

        async def place(uow: UnitOfWork) -> pb.CreateOrderResponse:
            try:
                order = Order.place(
                    merchant_id=merchant,
                    customer_id=request.customer_id,
                    lines=lines,
                    currency=request.currency,
                    payment_method_token=request.payment_method_token,
                    now=datetime.now(UTC),
                    timeout=timeout,
                )
            except DomainError as exc:
                raise refusal(exc) from exc
            await self.orders.add(uow.conn, order)
            await self.runtime.publish(uow, outbox_rows(uow, self.runtime.metrics, order, trace))
            return pb.CreateOrderResponse(order=order_to_proto(order))

        return await self.runtime.requests.run(
            merchant, "OrderService.CreateOrder", request.request_id, request, pb.CreateOrderResponse, place
        )

    @requires(Scope.ORDERS_READ)
    async def GetOrder(self, request: pb.GetOrderRequest, context: Context) -> pb.GetOrderResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        order_id = validate.get_order(request)
        return pb.GetOrderResponse(order=order_to_proto(await self._read(merchant, order_id)))

    @requires(Scope.ORDERS_READ)
    async def ListOrders(self, request: pb.ListOrdersRequest, context: Context) -> pb.ListOrdersResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        query = validate.list_orders(request, self.runtime.page_tokens, merchant)
        async with self.runtime.db.read() as conn:
            page = await self.orders.page(
                conn,
                merchant,
                status=query.status,
                customer_id=query.customer_id,
                after=query.after,
                limit=page_limit(query.page_size),
            )
        page, last = split_page(page, query.page_size)
        return pb.ListOrdersResponse(
            orders=[order_to_proto(o) for o in page],
            next_page_token="" if last is None else query.next_token(last),
        )

    @requires(Scope.ORDERS_WRITE)
    async def CancelOrder(self, request: pb.CancelOrderRequest, context: Context) -> pb.CancelOrderResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        validate.cancel_order(request)
        trace = current_traceparent()
        key = (merchant, request.order_id)

        async def cancel(uow: UnitOfWork) -> pb.CancelOrderResponse:
            order = (await self.orders.lock(uow.conn, [key])).get(key)
            if order is None:
                raise not_found(request.order_id)
            try:
                started = order.cancel(request.reason, datetime.now(UTC))
            except DomainError as exc:
                raise refusal(exc) from exc
            if started:
                await self.orders.save(uow.conn, [order])
                await self.runtime.publish(uow, outbox_rows(uow, self.runtime.metrics, order, trace))
                self.watch.deliver_after_commit(uow, [self.watch.snapshot(order)])
            return pb.CancelOrderResponse(order=order_to_proto(order))

        return await self.runtime.requests.run(
            merchant, "OrderService.CancelOrder", request.request_id, request, pb.CancelOrderResponse, cancel
        )

    @requires(Scope.ORDERS_READ)
    async def WatchOrder(  # noqa: N802
        self, request: pb.WatchOrderRequest, context: Context
    ) -> AsyncIterator[pb.WatchOrderResponse]:
        """The order now, then after each change, until it settles.

        Ends early when the client goes away (the stream is cancelled) or the service
        begins to shut down (within one re-read period). Another merchant's order id is NOT_FOUND at once,
        as an unknown one: the hub delivers a state only to the order's own merchant's streams, and every
        read is the merchant's.
        """
        merchant = current_principal().merchant_id
        order_id = validate.watch_order(request)
        # Follow before the first read, so no commit falls between the two.
        with self.watch.follow(merchant, order_id) as changes:
            order = await self._read(merchant, order_id)
            yield pb.WatchOrderResponse(order=order_to_proto(order))
            version, status = order.version, order.status
            while status not in SETTLED and not self.runtime.stopping.is_set():
                try:
                    state = await asyncio.wait_for(changes.get(), self.watch_reread_s)
                    newer_version, newer = state.version, state.order
                except TimeoutError:
                    fresh = await self._read(merchant, order_id)
                    newer_version, newer = fresh.version, order_to_proto(fresh)
                if newer_version <= version:
                    continue  # already sent, or older than what was sent
                yield pb.WatchOrderResponse(order=newer)
                version = newer_version
                status = status_from_proto(newer.status) or status

    async def _read(self, merchant_id: str, order_id: str) -> Order:
        async with self.runtime.db.read() as conn:
            order = await self.orders.get(conn, merchant_id, order_id)
        if order is None:
            raise not_found(order_id)
        return order
