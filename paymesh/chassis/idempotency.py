"""AIP-155 request ids: the same id and request answer the first response, and act once; ids are per merchant."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import (
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from paymesh.chassis.db import Database, UnitOfWork, conflict_insert
from paymesh.chassis.errors import Aborted, AlreadyExists
from paymesh.chassis.schema_steps import MERCHANT_ID_LENGTH

R = TypeVar("R", bound=Message)


def requests_table(metadata: MetaData) -> Table:
    if "idempotent_requests" in metadata.tables:
        return metadata.tables["idempotent_requests"]
    return Table(
        "idempotent_requests",
        metadata,
        Column("request_id", String(64), nullable=False),
        Column("method", String(100), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        # NULL while the first attempt is still running (a two-phase command).
        Column("response", LargeBinary, nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        # Last, where the `merchants` revision added it. Per merchant, as Stripe's idempotency keys are per
        # account: two merchants' ids never meet.
        Column("merchant_id", String(MERCHANT_ID_LENGTH), nullable=False),
        PrimaryKeyConstraint("merchant_id", "request_id", name="idempotent_requests_pkey"),
    )


def fingerprint(method: str, request: Message) -> str:
    """What the request asks for, without its request_id: equal fingerprints mean 'the same request'."""
    copy = type(request)()
    copy.CopyFrom(request)
    if "request_id" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("request_id")
    return hashlib.sha256(method.encode() + b"\0" + copy.SerializeToString(deterministic=True)).hexdigest()


class RequestLog:
    """The table of request ids a service has answered, kept at least 24 hours."""

    def __init__(self, db: Database, table: Table) -> None:
        self.db = db
        self.table = table
        # Built once: SQLAlchemy then skips building and keying them on every call.
        self._insert_new = conflict_insert(table, db.engine.dialect.name).on_conflict_do_nothing(
            index_elements=["merchant_id", "request_id"]
        )
        self._find_row = select(table.c.method, table.c.fingerprint, table.c.response).where(
            table.c.merchant_id == bindparam("merchant_id"), table.c.request_id == bindparam("request_id")
        )
        self._complete = (
            update(table)
            .where(table.c.merchant_id == bindparam("key_merchant_id"),
                   table.c.request_id == bindparam("key_request_id"))
            .values(response=bindparam("response"))
        )

    async def claim(
        self, uow: UnitOfWork, merchant_id: str, method: str, request_id: str, request: Message
    ) -> bytes | None:
        """Inside `uow`: the stored response if this request was answered, else None after taking the id.

        Raises ALREADY_EXISTS when the id came with another request, ABORTED while the
        first attempt is still running. One statement when the id is new: an insert that
        does nothing on a taken id. A concurrent claimer on PostgreSQL waits on the primary
        key until the first transaction ends, then answers as if it had come after.
        """
        fp = fingerprint(method, request)
        taken = await uow.conn.execute(
            self._insert_new,
            {"merchant_id": merchant_id, "request_id": request_id, "method": method, "fingerprint": fp},
        )
        if taken.rowcount == 1:
            return None
        row = await self._find(uow.conn, merchant_id, request_id)
        if row is None:  # the other claim was purged in between: rare, and safe to retry
            raise Aborted(
                f"request {request_id} could not be claimed; retry with the same request_id",
                reason="REQUEST_IN_PROGRESS",
                metadata={"request_id": request_id},
            )
        return self._replay(row, method, fp, request_id)

    async def replay(
        self, conn: AsyncConnection, merchant_id: str, method: str, request_id: str, request: Message
    ) -> bytes | None:
        """Read-only: the stored response of this request, or None while it has none (or was never
        seen). Raises ALREADY_EXISTS when the id came with another request. Takes no lock and writes
        nothing: for a command that learns, outside its own claim, that another attempt answered."""
        row = await self._find(conn, merchant_id, request_id)
        if row is None or row[2] is None:
            return None
        return self._replay(row, method, fingerprint(method, request), request_id)

    async def complete(self, uow: UnitOfWork, merchant_id: str, request_id: str, response: Message) -> None:
        await uow.conn.execute(
            self._complete,
            {"key_merchant_id": merchant_id, "key_request_id": request_id, "response": response.SerializeToString()},
        )

    async def run(
        self,
        merchant_id: str,
        method: str,
        request_id: str,
        request: Message,
        response_type: type[R],
        action: Callable[[UnitOfWork], Awaitable[R]],
    ) -> R:
        """Run `action` once for this merchant's request id, in the same transaction as the id's record.

        The id is claimed first, so a concurrent duplicate waits for (or, on SQLite, queues
        behind) the first and then replays its answer; the action never runs twice.
        """
        async with self.db.unit_of_work() as uow:
            stored = await self.claim(uow, merchant_id, method, request_id, request)
            if stored is not None:
                return response_type.FromString(stored)
            response = await action(uow)
            await self.complete(uow, merchant_id, request_id, response)
            await uow.commit()
            return response

    async def _find(
        self, conn: AsyncConnection, merchant_id: str, request_id: str
    ) -> tuple[str, str, bytes | None] | None:
        result = await conn.execute(self._find_row, {"merchant_id": merchant_id, "request_id": request_id})
        row = result.first()
        return None if row is None else (row[0], row[1], row[2])

    @staticmethod
    def _replay(row: tuple[str, str, bytes | None], method: str, fp: str, request_id: str) -> bytes:
        stored_method, stored_fp, response = row
        if stored_method != method or stored_fp != fp:
            raise AlreadyExists(
                f"request_id {request_id} was already used for a different request "
                f"({stored_method}); use a new request_id for a new request",
                reason="REQUEST_ID_REUSED",
                metadata={"request_id": request_id, "method": stored_method},
            )
        if response is None:
            raise Aborted(
                f"request {request_id} is still being processed; retry with the same request_id",
                reason="REQUEST_IN_PROGRESS",
                metadata={"request_id": request_id},
            )
        return response
