"""`paymesh reconcile`: payment_svc's payments against the gateway's charges and refunds, every merchant.

An operator's reconciliation job: it reads the two stores directly and read-only (no RPC lists every merchant's
payments), turns their rows into facts, and compares them with pure functions (`compare`), so tests fabricate
the facts. The facts extend the chaos checks' (`paymesh.tools.invariants`) with what a reconciliation also
compares: merchant, currency, idempotency key, deadline.

A charge belongs to the payment whose `charge_id` it is, else whose idempotency key it was made with (payment_svc
charges with the payment id as the key), else to the payment of its order (the merchant's first, else another
merchant's). Each mismatch has a `kind`:

- `charge_without_payment` (a): the gateway keeps money of a charge no payment claims (a declined or wholly
  refunded one keeps nothing and is only counted).
- `payment_without_charge` (b): a payment SUCCEEDED, REFUNDING, REFUNDED, PARTIALLY_REFUNDED or REFUND_FAILED
  with no charge at the gateway.
- `amount_mismatch` (c): the payment's amount or currency differs from its charge's.
- `refunded_mismatch` (d): the payment's refunded_minor differs from the gateway's refunds of its charge (or the
  gateway's charge disagrees with its own refunds).
- `payment_stuck` (e): PROCESSING past its deadline (+ payment_svc's give-up grace), or REFUNDING past the later
  of its deadline and its refund's request (+ REFUND_GRACE); `theirs` says what the gateway did.
- `merchant_mismatch` (f): the charge is tagged with another merchant than its payment's.
- `status_mismatch`: the outcomes disagree: the gateway keeps money while the payment is FAILED, VOIDED or
  PENDING, or declined a charge the payment counts as taken, or with another decline code.

A DECLINED charge agrees with a FAILED (same code) or VOIDED payment (`declines_agreeing`); a PROCESSING or
REFUNDING payment within its deadline is in flight (`in_flight`), not a mismatch.

`--json` prints one object, a stable schema (fields may be added, none renamed or retyped):

    {"ok": bool,                                   # no mismatch
     "since": "2025-06-01T12:00:00+00:00" | null,  # --since, in UTC
     "counts": {"payments": int, "charges": int, "refunds": int,       # compared (refunds: the gateway's)
                "payments_by_status": {"SUCCEEDED": int, ...},
                "charges_by_status": {"SUCCEEDED": int, "DECLINED": int, ...},
                "declines_agreeing": int, "in_flight": int, "mismatches": int},
     "mismatches": [{"kind": str, "merchant_id": str, "order_id": str, "payment_id": str, "charge_id": str,
                     "ours": str | null, "theirs": str | null, "detail": str}]}

`ours` is payment_svc's value, `theirs` the gateway's (null: that side has nothing); ids are "" when unknown.
Exit status: 0 all agree, 1 a mismatch, 2 no store to read (or one that cannot be read).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from payment_svc.domain import GIVE_UP_GRACE
from paymesh.tools.invariants import IN_FLIGHT_PAYMENTS, ChargeFact, PaymentFact

if TYPE_CHECKING:
    from sqlalchemy import Column, MetaData, Table
    from sqlalchemy.ext.asyncio import AsyncConnection

# payment_svc's refunder backs off up to 30 s between asks: a refund unanswered after twice that is stuck.
REFUND_GRACE = timedelta(seconds=60)
# Statuses of a payment whose charge took money.
CHARGED = frozenset({"SUCCEEDED", "REFUNDING", "REFUNDED", "PARTIALLY_REFUNDED", "REFUND_FAILED"})
KINDS = ("charge_without_payment", "payment_without_charge", "amount_mismatch", "refunded_mismatch",
         "payment_stuck", "merchant_mismatch", "status_mismatch")
IN_CHUNK = 500  # ids per IN (...) when the partners of a --since window are looked up


# -- facts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredPayment(PaymentFact):
    """A payments row of payment_svc. `refund_asked`: when its oldest pending refund was asked (REFUNDING)."""

    merchant_id: str = ""
    currency: str = ""
    idempotency_key: str = ""  # "": the payment id, as payment_svc makes it
    deadline: datetime | None = None
    create_time: datetime | None = None
    refund_asked: datetime | None = None

    @property
    def key(self) -> str:
        return self.idempotency_key or self.payment_id


@dataclass(frozen=True)
class StoredCharge(ChargeFact):
    """A charges row of the gateway."""

    merchant_id: str = ""
    currency: str = ""
    idempotency_key: str = ""
    decline_code: str = ""
    create_time: datetime | None = None


@dataclass(frozen=True)
class GatewayRefund:
    """A refunds row of the gateway: money given back on a charge."""

    refund_id: str
    charge_id: str
    amount_minor: int


# -- what comes out --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    kind: str
    merchant_id: str
    order_id: str
    payment_id: str
    charge_id: str
    ours: str | None
    theirs: str | None
    detail: str


@dataclass(frozen=True)
class Counts:
    payments: int
    charges: int
    refunds: int
    payments_by_status: dict[str, int]
    charges_by_status: dict[str, int]
    declines_agreeing: int
    in_flight: int


@dataclass(frozen=True)
class Report:
    counts: Counts
    mismatches: tuple[Mismatch, ...]
    since: datetime | None = None

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "since": None if self.since is None else self.since.astimezone(UTC).isoformat(),
            "counts": {**asdict(self.counts), "mismatches": len(self.mismatches)},
            "mismatches": [asdict(m) for m in self.mismatches],
        }


# -- the comparison: facts in, mismatches out ------------------------------------------------------


def match(
    payments: Sequence[StoredPayment], charges: Sequence[StoredCharge]
) -> tuple[dict[str, StoredCharge], list[tuple[StoredCharge, str]]]:
    """Each payment's charge (by payment id), and the charges no payment claims, each with why."""
    by_charge_id = {p.charge_id: p for p in payments if p.charge_id}
    by_key = {p.key: p for p in payments}
    by_order: dict[str, list[StoredPayment]] = defaultdict(list)
    for p in payments:
        by_order[p.order_id].append(p)
    claimed: dict[str, StoredCharge] = {}
    strays: list[tuple[StoredCharge, str]] = []
    by_order_only: list[StoredCharge] = []
    for c in sorted(charges, key=lambda c: c.charge_id):
        owner = by_charge_id.get(c.charge_id) or by_key.get(c.idempotency_key)
        if owner is None:
            by_order_only.append(c)
        elif owner.payment_id in claimed:
            strays.append((c, f"a second charge of payment {owner.payment_id}, which charge "
                              f"{claimed[owner.payment_id].charge_id} pays"))
        else:
            claimed[owner.payment_id] = c
    for c in by_order_only:
        # The merchant's own payment of the order first; another merchant's is a mis-tagged charge (kind f).
        candidates = sorted(by_order.get(c.order_id, []), key=lambda p: p.merchant_id != c.merchant_id)
        free = next((p for p in candidates if p.payment_id not in claimed), None)
        if free is not None:
            claimed[free.payment_id] = c
        elif candidates:
            paid = ", ".join(f"{p.payment_id} by {claimed[p.payment_id].charge_id}" for p in candidates)
            strays.append((c, f"a second charge of order {c.order_id}, whose payment is paid ({paid})"))
        else:
            strays.append((c, "no payment has its charge id, its idempotency key or its order"))
    return claimed, strays


def stuck_after(p: StoredPayment) -> datetime | None:
    """When an in-flight payment counts as stuck; None when it is not in flight (or has no deadline)."""
    if p.deadline is None:
        return None
    if p.status == "PROCESSING":
        return p.deadline + GIVE_UP_GRACE
    if p.status == "REFUNDING":
        return max(p.deadline, p.refund_asked or p.deadline) + REFUND_GRACE
    return None


def money(amount_minor: int, currency: str) -> str:
    return f"{amount_minor} {currency}".strip()


def described(c: StoredCharge) -> str:
    code = f" ({c.decline_code})" if c.decline_code else ""
    return f"{c.status}{code} {money(c.amount_minor, c.currency)}"


def mismatch(kind: str, p: StoredPayment, c: StoredCharge | None, ours: str | None, theirs: str | None,
             detail: str) -> Mismatch:
    return Mismatch(kind, p.merchant_id, p.order_id, p.payment_id, c.charge_id if c else "", ours, theirs, detail)


def check_payment(p: StoredPayment, c: StoredCharge | None, refunds: Sequence[GatewayRefund],
                  now: datetime) -> list[Mismatch]:
    """What is wrong between one payment and its charge (None: it has none) with that charge's refunds."""
    out = []
    if c is not None and c.merchant_id != p.merchant_id:
        out.append(mismatch("merchant_mismatch", p, c, p.merchant_id, c.merchant_id,
                            f"the charge is tagged with merchant {c.merchant_id}, the payment is {p.merchant_id}'s"))
    if c is not None and (c.amount_minor, c.currency) != (p.amount_minor, p.currency):
        ours, theirs = money(p.amount_minor, p.currency), money(c.amount_minor, c.currency)
        out.append(mismatch("amount_mismatch", p, c, ours, theirs, f"the payment is for {ours}, the charge {theirs}"))
    if p.status in IN_FLIGHT_PAYMENTS:
        return out + check_in_flight(p, c, refunds, now)
    return out + check_outcome(p, c, refunds)


def check_in_flight(p: StoredPayment, c: StoredCharge | None, refunds: Sequence[GatewayRefund],
                    now: datetime) -> list[Mismatch]:
    """A PROCESSING or REFUNDING payment is in flight until its deadline; past it, stuck, with what the gateway did."""
    due = stuck_after(p)
    if due is None or now <= due:
        return []
    if p.status == "PROCESSING":
        did = (f"the gateway has no charge with its key {p.key}" if c is None
               else f"the gateway {'charged' if c.taken else 'declined'} it: {described(c)}")
    else:
        asked = p.refund_asked.isoformat(timespec="seconds") if p.refund_asked else "at an unknown time"
        did = (f"refund asked {asked}; the gateway's refunds of its charge sum to "
               f"{sum(r.amount_minor for r in refunds)}, the payment records {p.refunded_minor}")
    return [mismatch("payment_stuck", p, c, p.status, described(c) if c else None,
                     f"{p.status} past {due.isoformat(timespec='seconds')}; {did}")]


def check_outcome(p: StoredPayment, c: StoredCharge | None, refunds: Sequence[GatewayRefund]) -> list[Mismatch]:
    """A settled payment against what the gateway did: charged or not, declined alike, refunded alike."""
    if c is None:
        if p.status not in CHARGED:
            return []
        return [mismatch("payment_without_charge", p, c, f"{p.status} {money(p.amount_minor, p.currency)}", None,
                         f"no charge at the gateway has charge id {p.charge_id or '(none)'} or idempotency key "
                         f"{p.key}")]
    if c.taken and p.status in CHARGED:
        given_back = sum(r.amount_minor for r in refunds)
        if p.refunded_minor == given_back == c.refunded_minor:
            return []
        own = "" if given_back == c.refunded_minor else f"; the charge itself records {c.refunded_minor}"
        return [mismatch("refunded_mismatch", p, c, str(p.refunded_minor), str(given_back),
                         f"the payment ({p.status}) records {p.refunded_minor} refunded, the gateway's "
                         f"{plural(len(refunds), 'refund')} of the charge sum to {given_back}{own}")]
    if c.taken:  # and the payment says no money was taken: wrong while the gateway keeps some
        if not c.kept_minor:
            return []
        return [mismatch("status_mismatch", p, c, p.status, described(c),
                         f"the gateway keeps {money(c.kept_minor, c.currency)}; the payment is {p.status}")]
    code = f" ({p.failure_code})" if p.failure_code else ""
    other_code = p.status == "FAILED" and p.failure_code and c.decline_code and p.failure_code != c.decline_code
    if p.status in ("FAILED", "VOIDED") and not other_code:
        return []
    return [mismatch("status_mismatch", p, c, f"{p.status}{code}", described(c),
                     f"the gateway declined the charge; the payment is {p.status}{code}")]


def check_stray(c: StoredCharge, why: str) -> list[Mismatch]:
    """A charge no payment claims: a mismatch while the gateway keeps money of it."""
    if not c.kept_minor:
        return []
    return [Mismatch("charge_without_payment", c.merchant_id, c.order_id, "", c.charge_id, None, described(c),
                     f"the gateway keeps {money(c.kept_minor, c.currency)}; {why}")]


def compare(payments: Sequence[StoredPayment], charges: Sequence[StoredCharge],
            refunds: Sequence[GatewayRefund], now: datetime, since: datetime | None = None) -> Report:
    """Every payment against its charge and that charge's refunds; every charge no payment claims."""
    claimed, strays = match(payments, charges)
    refunds_of: dict[str, list[GatewayRefund]] = defaultdict(list)
    for r in refunds:
        refunds_of[r.charge_id].append(r)
    found: list[Mismatch] = []
    declines = in_flight = 0
    for p in payments:
        c = claimed.get(p.payment_id)
        wrong = check_payment(p, c, refunds_of[c.charge_id] if c else [], now)
        found += wrong
        if p.status in IN_FLIGHT_PAYMENTS and not any(m.kind == "payment_stuck" for m in wrong):
            in_flight += 1
        declines += bool(c and not c.taken and p.status in ("FAILED", "VOIDED") and not wrong)
    for c, why in strays:
        found += check_stray(c, why)
    order = {kind: i for i, kind in enumerate(KINDS)}
    found.sort(key=lambda m: (order.get(m.kind, len(order)), m.merchant_id, m.order_id, m.payment_id, m.charge_id))
    charge_ids = {c.charge_id for c in charges}
    counts = Counts(
        payments=len(payments),
        charges=len(charges),
        refunds=sum(r.charge_id in charge_ids for r in refunds),
        payments_by_status=dict(sorted(Counter(p.status for p in payments).items())),
        charges_by_status=dict(sorted(Counter(c.status for c in charges).items())),
        declines_agreeing=declines,
        in_flight=in_flight,
    )
    return Report(counts, tuple(found), since)


# -- the text report --------------------------------------------------------------------------------


def plural(n: int, word: str, many: str = "") -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def by_status(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{status} {n}" for status, n in counts.items()) or "none"


def format_text(report: Report) -> str:
    """All agree: the figures by status. Else one line per mismatch, then the figures."""
    c = report.counts
    scope = f"{plural(c.payments, 'payment')} and {plural(c.charges, 'charge')}, {plural(c.refunds, 'refund')}"
    window = f" created since {report.since.astimezone(UTC).isoformat(timespec='seconds')}" if report.since else ""
    lines = [
        f"{m.kind}: merchant {m.merchant_id or '-'}, order {m.order_id or '-'}, payment {m.payment_id or '-'}, "
        f"charge {m.charge_id or '-'}: ours {m.ours or 'none'}, theirs {m.theirs or 'none'} ({m.detail})"
        for m in report.mismatches
    ]
    if report.ok:
        lines.append(f"reconciled {scope}{window}: all agree")
    else:
        kinds = Counter(m.kind for m in report.mismatches)
        lines.append(f"reconciled {scope}{window}: {plural(len(report.mismatches), 'mismatch', 'mismatches')} ("
                     f"{', '.join(f'{k} {n}' for k, n in kinds.items())})")
    lines.append(f"payments: {by_status(c.payments_by_status)}")
    lines.append(f"charges: {by_status(c.charges_by_status)}")
    lines.append(f"{plural(c.declines_agreeing, 'declined charge')} agreeing with a FAILED or VOIDED payment; "
                 f"{plural(c.in_flight, 'payment')} in flight")
    return "\n".join(lines)


# -- reading the stores, read-only -----------------------------------------------------------------


class StoreNotFound(Exception):
    """No store at the URL (a SQLite file that does not exist): nothing to reconcile."""


class StoreUnreadable(Exception):
    """A store is there but cannot be read (refused, not a paymesh store); the message names it."""


def sqlite_file(url: str) -> str | None:
    """The file a SQLite URL names; None for another database (or an in-memory one)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return parsed.database


def require_files(urls: Mapping[str, str]) -> None:
    """StoreNotFound for a SQLite store whose file is missing: opening it would make an empty one."""
    for name, url in urls.items():
        path = sqlite_file(url)
        if path is not None and not Path(path).is_file():
            raise StoreNotFound(f"no {name} store at {path}")


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class _Store:
    """One service's store, open on a read-only transaction; errors name the store."""

    def __init__(self, name: str, url: str, conn: AsyncConnection) -> None:
        self.name, self.url, self.conn = name, url, conn

    @classmethod
    async def open(cls, stack: contextlib.AsyncExitStack, name: str, url: str, md: MetaData) -> _Store:
        from sqlalchemy.exc import SQLAlchemyError

        from paymesh.chassis.db import Database
        from paymesh.ops.databases import shown

        try:
            db = Database(url, md)
            stack.push_async_callback(db.dispose)
            conn = await stack.enter_async_context(db.read())
            # Belt and braces: this job never writes, and the database refuses it should it try.
            await conn.exec_driver_sql("PRAGMA query_only = ON" if db.is_sqlite else "SET TRANSACTION READ ONLY")
        except (OSError, ValueError, SQLAlchemyError) as err:
            raise StoreUnreadable(f"cannot open {name}'s store at {shown(url)}: {first_line(err)}") from err
        return cls(name, url, conn)

    async def rows(self, query: Any) -> list[Any]:
        from sqlalchemy.exc import SQLAlchemyError

        from paymesh.ops.databases import shown

        try:
            return list((await self.conn.execute(query)).all())
        except (OSError, SQLAlchemyError) as err:
            raise StoreUnreadable(f"cannot read {self.name}'s store at {shown(self.url)}: {first_line(err)}") from err

    async def rows_in(self, table: Table, columns: Iterable[tuple[Column[Any], set[str]]]) -> list[Any]:
        """The rows of `table` whose column holds one of its values, for each (column, values), chunked; each once."""
        from sqlalchemy import select

        out: dict[Any, Any] = {}
        for column, values in columns:
            ordered = sorted(values)
            for start in range(0, len(ordered), IN_CHUNK):
                for row in await self.rows(select(table).where(column.in_(ordered[start:start + IN_CHUNK]))):
                    out[row[0]] = row  # the first column: the primary key or the unique seq
        return list(out.values())


async def reconcile(env: Mapping[str, str], since: datetime | None = None, *, now: datetime | None = None) -> Report:
    """Read payment_svc's and the gateway's stores (`<SVC>_DB_URL`, else the data dir's SQLite files), read-only,
    and compare them: payments and charges created since `since` (None: all), each with its partner on the other
    side whenever that was created, and the gateway's refunds of those charges."""
    from payment_svc.store import Tables
    from paymesh.chassis.config import db_url
    from paymesh.chassis.db import as_utc
    from paymesh.chassis.migrations import service_metadata
    from paymesh.ops.services import spec

    specs = {name: spec(name) for name in ("payment_svc", "gateway_mock")}
    urls = {name: db_url(s, env) for name, s in specs.items()}
    require_files(urls)
    since = None if since is None else since.astimezone(UTC)
    ours_md, theirs_md = service_metadata(specs["payment_svc"]), service_metadata(specs["gateway_mock"])
    async with contextlib.AsyncExitStack() as stack:
        ours = await _Store.open(stack, "payment_svc", urls["payment_svc"], ours_md)
        theirs = await _Store.open(stack, "gateway_mock", urls["gateway_mock"], theirs_md)
        tables = Tables(ours_md)
        payments, charges = await read_window(ours, tables.payments, theirs, theirs_md.tables["charges"], since)
        refunds_t, pending_t = theirs_md.tables["refunds"], tables.refunds
        refunds = await theirs.rows_in(refunds_t, [(refunds_t.c.charge_id, {r.charge_id for r in charges})])
        # When each REFUNDING payment's pending refund was asked: its stuck clock starts there.
        refunding = {r.payment_id for r in payments if r.status == "REFUNDING"}
        pending = await ours.rows_in(pending_t, [(pending_t.c.payment_id, refunding)])
    asked: dict[str, datetime] = {}
    for r in sorted((r for r in pending if r.status == "PENDING"), key=lambda r: r.create_time, reverse=True):
        asked[r.payment_id] = as_utc(r.create_time)  # the oldest pending refund's, written last
    return compare([_payment(r, asked.get(r.payment_id)) for r in payments], [_charge(r) for r in charges],
                   [GatewayRefund(r.refund_id, r.charge_id, r.amount_minor) for r in refunds],
                   now or datetime.now(UTC), since)


async def read_window(ours: _Store, payments_t: Table, theirs: _Store, charges_t: Table,
                      since: datetime | None) -> tuple[list[Any], list[Any]]:
    """The payments and charges rows created since `since`, with every partner of one on the other side:
    a window's edge must not split a payment from its charge."""
    from sqlalchemy import select

    if since is None:
        return await ours.rows(select(payments_t)), await theirs.rows(select(charges_t))
    payments = await ours.rows(select(payments_t).where(payments_t.c.create_time >= since))
    charges = await theirs.rows(select(charges_t).where(charges_t.c.create_time >= since))
    p, c = payments_t.c, charges_t.c
    have = {r.payment_id for r in payments}
    payments += [r for r in await ours.rows_in(payments_t, [
        (p.idempotency_key, {r.idempotency_key for r in charges}),
        (p.charge_id, {r.charge_id for r in charges}),
        (p.order_id, {r.order_id for r in charges if r.order_id}),
    ]) if r.payment_id not in have]
    have = {r.charge_id for r in charges}
    charges += [r for r in await theirs.rows_in(charges_t, [
        (c.idempotency_key, {r.idempotency_key for r in payments}),
        (c.charge_id, {r.charge_id for r in payments if r.charge_id}),
        (c.order_id, {r.order_id for r in payments}),
    ]) if r.charge_id not in have]
    return payments, charges


def _payment(r: Any, refund_asked: datetime | None) -> StoredPayment:
    from paymesh.chassis.db import as_utc

    return StoredPayment(
        payment_id=r.payment_id, order_id=r.order_id, status=r.status, amount_minor=r.amount_minor,
        refunded_minor=r.refunded_minor, charge_id=r.charge_id, failure_code=r.failure_code,
        merchant_id=r.merchant_id, currency=r.currency, idempotency_key=r.idempotency_key,
        deadline=as_utc(r.deadline), create_time=as_utc(r.create_time), refund_asked=refund_asked,
    )


def _charge(r: Any) -> StoredCharge:
    from paymesh.chassis.db import as_utc

    return StoredCharge(
        charge_id=r.charge_id, order_id=r.order_id, status=r.status, amount_minor=r.amount_minor,
        refunded_minor=r.refunded_minor, merchant_id=r.merchant_id, currency=r.currency,
        idempotency_key=r.idempotency_key, decline_code=r.decline_code, create_time=as_utc(r.create_time),
    )


# -- the command ----------------------------------------------------------------------------------


def since_time(text: str, now: datetime) -> datetime:
    """`--since`: an ISO time (UTC unless it carries an offset) or a duration back from `now` (24h, 30m, 7d)."""
    from paymesh.ops.keys import parse_duration

    try:
        return now - parse_duration(text)
    except (ValueError, OverflowError):
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO time (2025-06-01T12:00:00Z; UTC unless it has an offset) "
                         "nor a duration back from now (24h, 30m, 7d)") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def since_arg(text: str) -> datetime:
    try:
        return since_time(text, datetime.now(UTC))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run_reconcile(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import os

    from paymesh.ops.mesh_file import data_dir_of, path_of, running_env

    env, found = running_env(os.environ, args.data_dir)
    if found is None and args.data_dir:  # no running mesh: the stores of that data dir, if they are there
        env["PAYMESH_DATA_DIR"] = str(Path(args.data_dir).resolve())
    try:
        report = asyncio.run(reconcile(env, args.since))
    except StoreNotFound as err:
        if found is None:
            where = path_of(data_dir_of(env, args.data_dir))
            print(f"paymesh: no mesh running: no live {where} and {err} (--data-dir, or <SVC>_DB_URL, names one)",
                  file=sys.stderr)
        else:
            print(f"paymesh: the mesh of {found.path} runs, but {err}", file=sys.stderr)
        return 2
    except StoreUnreadable as err:
        print(f"paymesh: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=2) if args.json else format_text(report))
    return 0 if report.ok else 1


def add_reconcile(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subcommands.add_parser(
        "reconcile",
        help="payments against the gateway's charges and refunds, every merchant; exit 1 naming each mismatch",
        description=(
            "Read payment_svc's and the gateway's stores directly, read-only (those of the mesh `paymesh up` runs "
            "with the data dir, else <SVC>_DB_URL, else the data dir's SQLite files) and compare every merchant's "
            "payments with the charges and refunds at the gateway: a charge with no payment, a charged payment "
            "with no charge, amounts or currency, refunded totals, payments stuck PROCESSING or REFUNDING past "
            "their deadline, the merchant a charge is tagged with, and outcomes that disagree. Exits 0 printing "
            "the counts per status when all agree, 1 naming each mismatch, 2 when there is no store to read."
        ),
    )
    parser.add_argument("--since", type=since_arg, metavar="T",
                        help="only payments and charges created since T: an ISO time (UTC unless it has an offset) "
                             "or a duration back from now, 24h, 30m, 7d (default: all)")
    parser.add_argument("--json", action="store_true",
                        help="print machine-readable JSON (its schema: pydoc paymesh.ops.reconcile)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="the data dir of `paymesh up`: its mesh.json, else its SQLite files (default: "
                             "$PAYMESH_DATA_DIR, else ./.paymesh)")
    parser.set_defaults(handler=run_reconcile)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m paymesh.ops.reconcile [options]`: the subcommand on a parser of its own."""
    parser = argparse.ArgumentParser(prog="paymesh")
    add_reconcile(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["reconcile", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
