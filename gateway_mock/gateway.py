"""The bank simulator: the domain's rules run against the repository, one transaction each, idempotent by key."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway_mock import domain
from gateway_mock.domain import (
    Charge,
    ChargeCommand,
    ChargeLookup,
    ChargeNotFound,
    ChargeQuery,
    Refund,
    RefundCommand,
    ResponseLost,
    TransientFailure,
)
from gateway_mock.faults import NO_FAULTS, FaultConfig, FaultModel, Reconfigure
from gateway_mock.store import GatewayRepository
from paymesh.chassis.db import Database


def new_charge_id() -> str:
    return f"ch_{uuid.uuid4().hex}"


def new_refund_id() -> str:
    return f"re_{uuid.uuid4().hex}"


def _now() -> datetime:
    return datetime.now(UTC)


class BankSimulator:
    """What GatewayService does: charge, refund, read, and configure the faults. The fault model lives
    here, in memory, seeded from the stored config on first use; a restart replays the seed from its start."""

    def __init__(self, db: Database, repository: GatewayRepository) -> None:
        self.db = db
        self.repository = repository
        self._faults: FaultModel | None = None
        self._faults_lock = asyncio.Lock()

    async def faults(self) -> FaultModel:
        if self._faults is None:
            async with self._faults_lock:
                if self._faults is None:
                    async with self.db.read() as conn:
                        stored = await self.repository.load_config(conn)
                    self._faults = FaultModel(stored)
        return self._faults

    async def _latency(self) -> None:
        latency_ms = (await self.faults()).config.latency_ms
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)  # simulated network time, not synchronisation

    # Charge

    async def charge(self, cmd: ChargeCommand) -> Charge:
        """The charge for `cmd.idempotency_key`: the stored one if any, else a new one (or a simulated fault)."""
        card = domain.card_for(cmd.token)
        await self._latency()
        async with self.db.read() as conn:
            existing = await self.repository.charge_by_key(conn, cmd.idempotency_key)
        if existing is not None:  # a stored result: no fault applies, the retry gets the original
            return existing.replay(cmd)
        attempt = await self._count_attempt(cmd.idempotency_key) if card.unavailable_attempts else 1
        faults = (await self.faults()).draw() if card.random_faults else NO_FAULTS
        decision = domain.decide_charge(card, cmd.idempotency_key, attempt, faults)
        charge = Charge.create(new_charge_id(), cmd, decision, _now())
        stored = await self._insert_charge(charge)
        if stored is not charge:  # a concurrent attempt with this key stored first
            return stored.replay(cmd)
        if decision.lose_response:
            raise ResponseLost(cmd.idempotency_key, decision.cause)
        return charge

    async def _count_attempt(self, key: str) -> int:
        async with self.db.unit_of_work() as uow:
            attempts = await self.repository.count_attempt(uow.conn, key)
            await uow.commit()
        return attempts

    async def _insert_charge(self, charge: Charge) -> Charge:
        """Store `charge` unless its key already has one; returns what the key holds afterwards."""
        key = charge.idempotency_key
        try:
            async with self.db.unit_of_work() as uow:
                # SQLite: under the writer lock, so a concurrent attempt's charge is visible here.
                existing = await self.repository.charge_by_key(uow.conn, key)
                if existing is not None:
                    return existing
                await self.repository.insert_charge(uow.conn, charge)
                await uow.commit()
                return charge
        except IntegrityError:
            # PostgreSQL: a concurrent attempt inserted the same key and committed first.
            async with self.db.read() as conn:
                existing = await self.repository.charge_by_key(conn, key)
            if existing is None:
                raise
            return existing

    # Refund

    async def refund(self, cmd: RefundCommand) -> tuple[Refund, Charge]:
        """The refund for `cmd.idempotency_key` and its charge after it: the stored one if any, else a new one."""
        await self._latency()
        async with self.db.read() as conn:
            existing = await self.repository.refund_by_key(conn, cmd.idempotency_key)
            if existing is not None:
                return existing.replay(cmd), await self._charge_or_raise(conn, existing.charge_id)
            charge = await self._charge_or_raise(conn, cmd.charge_id)
        faults = (await self.faults()).draw() if domain.card_for(charge.token).random_faults else NO_FAULTS
        if faults.transient:
            raise TransientFailure(cmd.idempotency_key, "transient_error_rate")
        refund, charge = await self._store_refund(cmd)
        if faults.lose_response:
            raise ResponseLost(cmd.idempotency_key, "lost_response_rate")
        return refund, charge

    async def _store_refund(self, cmd: RefundCommand) -> tuple[Refund, Charge]:
        try:
            async with self.db.unit_of_work() as uow:
                charge = await self._charge_or_raise(uow.conn, cmd.charge_id, for_update=True)
                existing = await self.repository.refund_by_key(uow.conn, cmd.idempotency_key)
                if existing is not None:  # a concurrent refund with this key got here first
                    return existing.replay(cmd), charge
                refund = charge.refund(new_refund_id(), cmd, _now())
                await self.repository.save_refunded(uow.conn, charge)
                await self.repository.insert_refund(uow.conn, refund)
                await uow.commit()
                return refund, charge
        except IntegrityError:
            async with self.db.read() as conn:
                existing = await self.repository.refund_by_key(conn, cmd.idempotency_key)
                if existing is None:
                    raise
                return existing.replay(cmd), await self._charge_or_raise(conn, existing.charge_id)

    async def _charge_or_raise(self, conn: AsyncConnection, charge_id: str, *, for_update: bool = False) -> Charge:
        charge = await self.repository.charge_by_id(conn, charge_id, for_update=for_update)
        if charge is None:
            raise ChargeNotFound(charge_id=charge_id)
        return charge

    # Reads

    async def get_charge(self, lookup: ChargeLookup) -> Charge:
        async with self.db.read() as conn:
            if lookup.charge_id:
                charge = await self.repository.charge_by_id(conn, lookup.charge_id)
            else:
                charge = await self.repository.charge_by_key(conn, lookup.idempotency_key)
        if charge is None:
            raise ChargeNotFound(charge_id=lookup.charge_id, idempotency_key=lookup.idempotency_key)
        return charge

    async def list_charges(self, query: ChargeQuery) -> tuple[list[Charge], int | None]:
        async with self.db.read() as conn:
            return await self.repository.list_charges(conn, query)

    # Configure

    async def configure(self, cmd: Reconfigure) -> FaultConfig:
        """Apply the settings given (after a reset to the defaults if asked); stored, so a restart keeps them.
        Reseeds the generator when a seed is given or on reset, so a run can be replayed from here."""
        model = await self.faults()
        async with self._faults_lock:
            config = cmd.applied_to(model.config)
            async with self.db.unit_of_work() as uow:
                await self.repository.save_config(uow.conn, config)
                await uow.commit()
            model.configure(config, reseed=cmd.reseeds)
        return config
