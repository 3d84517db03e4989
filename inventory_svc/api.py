"""InventoryService over gRPC: validate, run one command or query, answer the proto or a mapped refusal."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError

from inventory_svc import store
from inventory_svc.domain import (
    MAX_UNITS,
    DomainError,
    InsufficientStock,
    Product,
    ReservationStatus,
    StockLimitExceeded,
)
from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.errors import Aborted, FailedPrecondition, NotFound, ServiceError
from paymesh.chassis.events import to_timestamp
from paymesh.chassis.service import Runtime
from paymesh.chassis.validation import Violations, decode_page_token, encode_page_token, page_size
from paymesh.inventory.v1 import inventory_pb2, inventory_service_pb2, inventory_service_pb2_grpc

MAX_NAME_LEN = 200

_STATUS = {
    ReservationStatus.RESERVED: inventory_pb2.RESERVATION_STATUS_RESERVED,
    ReservationStatus.REJECTED: inventory_pb2.RESERVATION_STATUS_REJECTED,
    ReservationStatus.COMMITTED: inventory_pb2.RESERVATION_STATUS_COMMITTED,
    ReservationStatus.RELEASED: inventory_pb2.RESERVATION_STATUS_RELEASED,
    # The proto has no tombstone status: an order cancelled before it was seen held nothing.
    ReservationStatus.CANCELLED: inventory_pb2.RESERVATION_STATUS_RELEASED,
}


def refusal(exc: DomainError) -> ServiceError:
    """The one mapping from a domain refusal to what a client is told."""
    if isinstance(exc, InsufficientStock):
        return FailedPrecondition(
            f"sku {exc.sku} has {exc.available} units available; cannot remove {exc.requested}",
            reason="INSUFFICIENT_STOCK",
            metadata={"sku": exc.sku, "available": exc.available, "requested": exc.requested},
        )
    if isinstance(exc, StockLimitExceeded):
        return FailedPrecondition(
            f"sku {exc.sku} would hold {exc.stocked} units; at most {MAX_UNITS} are allowed",
            reason="STOCK_LIMIT_EXCEEDED",
            metadata={"sku": exc.sku, "stocked": exc.stocked, "max": MAX_UNITS},
        )
    return FailedPrecondition(str(exc), reason="INVALID_TRANSITION")


def product_not_found(sku: str) -> NotFound:
    return NotFound(f"product {sku} not found; create it with PutProduct", reason="PRODUCT_NOT_FOUND",
                    metadata={"sku": sku})



def product_message(row: Any) -> inventory_pb2.Product:
    return inventory_pb2.Product(
        sku=row.sku,
        name=row.name,
        available=row.available,
        reserved=row.reserved,
        sold=row.sold,
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
    )


def reservation_message(row: Any) -> inventory_pb2.Reservation:
    return inventory_pb2.Reservation(
        order_id=row.order_id,
        lines=[inventory_pb2.ReservationLine(sku=line["sku"], quantity=line["quantity"]) for line in row.lines],
        status=_STATUS[ReservationStatus(row.status)],
        reason=row.reason,
        sku=row.sku,
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
        cancelled=row.cancel_answered,
    )


class InventoryServiceServicer(inventory_service_pb2_grpc.InventoryServiceServicer):
    def __init__(self, runtime: Runtime, tables: store.Tables) -> None:
        self.runtime = runtime
        self.tables = tables

    async def PutProduct(self, request: Any, context: Any) -> inventory_service_pb2.PutProductResponse:  # noqa: N802
        v = Violations()
        v.request_id("request_id", request.request_id)
        v.identifier("sku", request.sku)
        v.check(len(request.name) <= MAX_NAME_LEN, "name", f"must be at most {MAX_NAME_LEN} characters")
        v.check(request.available >= 0, "available", "must not be negative")
        v.check(request.available <= MAX_UNITS, "available", f"must be at most {MAX_UNITS}")
        v.raise_if_any()

        async def put(uow: UnitOfWork) -> inventory_service_pb2.PutProductResponse:
            now = store.utcnow()
            existing = await store.load_products(uow.conn, self.tables, [request.sku])
            product = existing.get(request.sku) or Product(request.sku)
            try:
                product.put(request.name, request.available)
            except DomainError as exc:
                raise refusal(exc) from exc
            if request.sku in existing:
                await store.save_products(uow.conn, self.tables, [product], now)
            else:
                await store.insert_product(uow.conn, self.tables, product, now)
            row = await store.product_row(uow.conn, self.tables, request.sku)
            return inventory_service_pb2.PutProductResponse(product=product_message(row))

        try:
            return await self.runtime.requests.run(
                "PutProduct", request.request_id, request, inventory_service_pb2.PutProductResponse, put
            )
        except IntegrityError as exc:
            # Another request created the same sku at the same moment (PostgreSQL): nothing was written.
            raise Aborted(
                f"product {request.sku} was created concurrently; retry with the same request_id",
                reason="CONCURRENT_UPDATE",
                metadata={"sku": request.sku},
            ) from exc

    async def AdjustStock(self, request: Any, context: Any) -> inventory_service_pb2.AdjustStockResponse:  # noqa: N802
        v = Violations()
        v.request_id("request_id", request.request_id)
        v.identifier("sku", request.sku)
        v.check(request.delta != 0, "delta", "must not be zero: positive adds units, negative removes them")
        v.raise_if_any()

        async def adjust(uow: UnitOfWork) -> inventory_service_pb2.AdjustStockResponse:
            products = await store.load_products(uow.conn, self.tables, [request.sku])
            product = products.get(request.sku)
            if product is None:
                raise product_not_found(request.sku)
            try:
                product.adjust(request.delta)
            except DomainError as exc:
                raise refusal(exc) from exc
            await store.save_products(uow.conn, self.tables, [product], store.utcnow())
            row = await store.product_row(uow.conn, self.tables, request.sku)
            return inventory_service_pb2.AdjustStockResponse(product=product_message(row))

        return await self.runtime.requests.run(
            "AdjustStock", request.request_id, request, inventory_service_pb2.AdjustStockResponse, adjust
        )

    async def GetProduct(self, request: Any, context: Any) -> inventory_service_pb2.GetProductResponse:  # noqa: N802
        v = Violations()
        v.identifier("sku", request.sku)
        v.raise_if_any()
        async with self.runtime.db.read() as conn:
            row = await store.product_row(conn, self.tables, request.sku)
        if row is None:
            raise product_not_found(request.sku)
        return inventory_service_pb2.GetProductResponse(product=product_message(row))

    async def ListProducts(self, request: Any, context: Any) -> inventory_service_pb2.ListProductsResponse:  # noqa: N802
        v = Violations()
        limit = page_size(v, request.page_size)
        cursor = decode_page_token(v, request.page_token)
        after = None
        if cursor is not None:
            after = cursor.get("after")
            v.check(isinstance(after, str), "page_token", "is not a token returned by a previous ListProducts")
        v.raise_if_any()
        async with self.runtime.db.read() as conn:
            rows = await store.product_page(conn, self.tables, after, limit + 1)
        page = rows[:limit]
        token = encode_page_token({"after": page[-1].sku}) if len(rows) > limit else ""
        return inventory_service_pb2.ListProductsResponse(
            products=[product_message(row) for row in page], next_page_token=token
        )

    async def GetReservation(self, request: Any, context: Any) -> inventory_service_pb2.GetReservationResponse:  # noqa: N802
        v = Violations()
        v.identifier("order_id", request.order_id)
        v.raise_if_any()
        async with self.runtime.db.read() as conn:
            row = await store.reservation_row(conn, self.tables, request.order_id)
        if row is None:
            raise NotFound(
                f"no reservation for order {request.order_id}: inventory has not seen the order",
                reason="RESERVATION_NOT_FOUND",
                metadata={"order_id": request.order_id},
            )
        return inventory_service_pb2.GetReservationResponse(reservation=reservation_message(row))
