"""InventoryService over gRPC: validate, run one command or query on the caller's own merchant's rows, answer
the proto or a mapped refusal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from sqlalchemy.exc import IntegrityError

from inventory_svc import validate
from inventory_svc.domain import MAX_UNITS, DomainError, InsufficientStock, Product, StockLimitExceeded
from inventory_svc.messages import product_to_proto, reservation_to_proto
from inventory_svc.store import InventoryRepository
from paymesh.chassis.auth import Scope, current_principal, requires
from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.errors import Aborted, FailedPrecondition, NotFound, ServiceError
from paymesh.chassis.service import Runtime
from paymesh.chassis.validation import page_limit, split_page
from paymesh.inventory.v1 import inventory_service_pb2 as pb
from paymesh.inventory.v1 import inventory_service_pb2_grpc

# What a servicer is handed with each call (the generated base names a private subtype of it).
Context = grpc.aio.ServicerContext[Any, Any]


def refusal(exc: DomainError) -> ServiceError:
    """The one mapping from a domain refusal to what a client is told."""
    match exc:
        case InsufficientStock():
            return FailedPrecondition(
                f"sku {exc.sku} has {exc.available} units available; cannot remove {exc.requested}",
                reason="INSUFFICIENT_STOCK",
                metadata={"sku": exc.sku, "available": exc.available, "requested": exc.requested},
            )
        case StockLimitExceeded():
            return FailedPrecondition(
                f"sku {exc.sku} would hold {exc.stocked} units; at most {MAX_UNITS} are allowed",
                reason="STOCK_LIMIT_EXCEEDED",
                metadata={"sku": exc.sku, "stocked": exc.stocked, "max": MAX_UNITS},
            )
        case _:
            return FailedPrecondition(str(exc), reason="INVALID_TRANSITION")


def product_not_found(sku: str) -> NotFound:
    return NotFound(
        f"product {sku} not found; create it with PutProduct", reason="PRODUCT_NOT_FOUND", metadata={"sku": sku}
    )


def reservation_not_found(order_id: str) -> NotFound:
    return NotFound(
        f"no reservation for order {order_id}: inventory has not seen the order",
        reason="RESERVATION_NOT_FOUND",
        metadata={"order_id": order_id},
    )


class InventoryApi(inventory_service_pb2_grpc.InventoryServiceServicer):
    def __init__(self, runtime: Runtime, inventory: InventoryRepository) -> None:
        self.runtime = runtime
        self.inventory = inventory

    @requires(Scope.CATALOG_WRITE)
    async def PutProduct(self, request: pb.PutProductRequest, context: Context) -> pb.PutProductResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        command = validate.put_product(request)

        async def put(uow: UnitOfWork) -> pb.PutProductResponse:
            existing = await self.inventory.lock_product(uow.conn, merchant, command.sku)
            product = existing or Product(merchant, command.sku)
            try:
                product.put(command.name, command.available)
            except DomainError as exc:
                raise refusal(exc) from exc
            now = datetime.now(UTC)
            if existing is None:
                await self.inventory.add_product(uow.conn, product, now)
            else:
                await self.inventory.save_products(uow.conn, [product], now)
            stored = await self.inventory.product(uow.conn, merchant, command.sku)
            assert stored is not None, "written in this transaction"
            return pb.PutProductResponse(product=product_to_proto(stored))

        try:
            return await self.runtime.requests.run(
                merchant, "PutProduct", request.request_id, request, pb.PutProductResponse, put
            )
        except IntegrityError as exc:
            # Another request created the same sku at the same moment (PostgreSQL): nothing was written.
            raise Aborted(
                f"product {command.sku} was created concurrently; retry with the same request_id",
                reason="CONCURRENT_UPDATE",
                metadata={"sku": command.sku},
            ) from exc

    @requires(Scope.CATALOG_WRITE)
    async def AdjustStock(self, request: pb.AdjustStockRequest, context: Context) -> pb.AdjustStockResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        command = validate.adjust_stock(request)

        async def adjust(uow: UnitOfWork) -> pb.AdjustStockResponse:
            product = await self.inventory.lock_product(uow.conn, merchant, command.sku)
            if product is None:
                raise product_not_found(command.sku)
            try:
                product.adjust(command.delta)
            except DomainError as exc:
                raise refusal(exc) from exc
            await self.inventory.save_products(uow.conn, [product], datetime.now(UTC))
            stored = await self.inventory.product(uow.conn, merchant, command.sku)
            assert stored is not None, "written in this transaction"
            return pb.AdjustStockResponse(product=product_to_proto(stored))

        return await self.runtime.requests.run(
            merchant, "AdjustStock", request.request_id, request, pb.AdjustStockResponse, adjust
        )

    @requires(Scope.CATALOG_READ)
    async def GetProduct(self, request: pb.GetProductRequest, context: Context) -> pb.GetProductResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        sku = validate.get_product(request)
        async with self.runtime.db.read() as conn:
            product = await self.inventory.product(conn, merchant, sku)
        if product is None:
            raise product_not_found(sku)
        return pb.GetProductResponse(product=product_to_proto(product))

    @requires(Scope.CATALOG_READ)
    async def ListProducts(self, request: pb.ListProductsRequest, context: Context) -> pb.ListProductsResponse:  # noqa: N802
        merchant = current_principal().merchant_id
        query = validate.list_products(request, self.runtime.page_tokens, merchant)
        async with self.runtime.db.read() as conn:
            products = await self.inventory.product_page(conn, merchant, query.after, page_limit(query.page_size))
        page, last = split_page(products, query.page_size)
        return pb.ListProductsResponse(
            products=[product_to_proto(p) for p in page],
            next_page_token="" if last is None else query.next_token(last.value.sku),
        )

    @requires(Scope.ORDERS_READ)
    async def GetReservation(  # noqa: N802
        self, request: pb.GetReservationRequest, context: Context
    ) -> pb.GetReservationResponse:
        merchant = current_principal().merchant_id
        order_id = validate.get_reservation(request)
        async with self.runtime.db.read() as conn:
            reservation = await self.inventory.reservation(conn, merchant, order_id)
        if reservation is None:
            raise reservation_not_found(order_id)
        return pb.GetReservationResponse(reservation=reservation_to_proto(reservation))

