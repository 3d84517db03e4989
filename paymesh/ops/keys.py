"""`paymesh merchants` and `paymesh keys`: the operator's commands on the merchants and API keys of a running mesh."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats.errors

from paymesh.chassis.auth.keys import MERCHANT_PREFIX, OPERATOR_PREFIX, ApiKey, ApiKeyRecord, Pepper
from paymesh.chassis.auth.merchants import MerchantStore
from paymesh.chassis.auth.pepper import PEPPER_ENV, PEPPER_FILE, load_pepper
from paymesh.chassis.auth.registry import utc_now
from paymesh.chassis.auth.scopes import MERCHANT_SCOPES, Scope
from paymesh.chassis.auth.store import KeyStore
from paymesh.chassis.config import ConfigError
from paymesh.chassis.config import data_dir as configured_data_dir
from paymesh.chassis.errors import ServiceError
from paymesh.ops.mesh_nats import MeshNotFound, connect, find_nats

# An operator key names no merchant of its own; the record still needs one.
OPERATOR_MERCHANT = "platform"
SHOWN_ONCE = "This API key will not be shown again: store it now (a secret manager, or PAYMESH_API_KEY)."
_ID = re.compile(r"[-_=.a-zA-Z0-9]+")  # what a KV entry name holds; every id paymesh makes is of these


class OperatorError(Exception):
    """One line a person can act on; the command prints it to stderr and exits 2. Never holds a secret."""


_DURATION = re.compile(r"\s*(\d+)\s*([dhms])\s*")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(text: str) -> timedelta:
    """`30d`, `24h`, `90m`, `45s`: a whole number and one unit."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration: a whole number and a unit d, h, m or s (30d, 24h, 90m, 45s)")
    try:
        return timedelta(**{_UNITS[match[2]]: int(match[1])})
    except OverflowError:
        raise ValueError(f"{text!r} is longer than any key will live") from None


def merchant_scopes(names: Sequence[str]) -> frozenset[Scope]:
    """The scopes named (`--scope a --scope b` or `a,b`); none named: every merchant scope."""
    wanted = [part.strip() for name in names for part in name.split(",") if part.strip()]
    if not wanted:
        return MERCHANT_SCOPES
    valid = [s.value for s in Scope if s in MERCHANT_SCOPES]
    unknown = [name for name in wanted if name not in valid]
    not_merchants = [name for name in unknown if name in {s.value for s in Scope}]
    if not_merchants:
        raise OperatorError(f"scope {', '.join(not_merchants)} is never a merchant's: "
                            "`paymesh keys create --operator` makes an operator key")
    if unknown:
        raise OperatorError(f"unknown scope {', '.join(unknown)}: use one of {', '.join(valid)}")
    return frozenset(Scope(name) for name in wanted)


@dataclass(frozen=True)
class Session:
    """What a command's body works with: the stores on the mesh's bucket, and how to print."""

    merchants: MerchantStore
    keys: KeyStore
    as_json: bool


def operator_pepper(env: Mapping[str, str], data_dir: Path) -> Pepper:
    """The mesh's pepper: keys hashed with another would never be found by the services."""
    made_here = not env.get(PEPPER_ENV) and not (data_dir / PEPPER_FILE).exists()
    try:
        pepper = load_pepper(env, data_dir)
    except ConfigError as err:
        raise OperatorError(str(err)) from None
    if made_here:
        warn(f"made a new key pepper {data_dir / PEPPER_FILE}: the services must hash with the same one "
             f"({PEPPER_ENV}, else that file in their data dir)")
    return pepper


def warn(line: str) -> None:
    print(f"paymesh: {line}", file=sys.stderr, flush=True)


async def against_mesh(args: argparse.Namespace, env: Mapping[str, str],
                       body: Callable[[Session], Awaitable[None]], *, hashes: bool) -> None:
    data_dir = (Path(args.data_dir) if args.data_dir else configured_data_dir(env)).resolve()
    address = find_nats(args.nats_url, env, data_dir)
    # list and revoke hash nothing, so they need no pepper (and make none).
    pepper = operator_pepper(env, data_dir) if hashes else Pepper(b"")
    nc = await connect(address, "paymesh-operator")
    try:
        js = nc.jetstream()
        merchants = await MerchantStore.open(js, replicas=address.replicas)
        keys = await KeyStore.open(js, pepper, replicas=address.replicas)
        await body(Session(merchants, keys, args.json))
    except (nats.errors.Error, TimeoutError) as err:
        raise OperatorError(f"the mesh's NATS at {address.shown()} did not answer as expected "
                            f"({type(err).__name__}); is JetStream on?") from None
    finally:
        await nc.close()


def when(value: datetime | None, never: str = "never") -> str:
    return never if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def scope_list(record: ApiKeyRecord) -> list[str]:
    return sorted(s.value for s in record.scopes)


def scopes_shown(record: ApiKeyRecord) -> str:
    return "every merchant scope" if record.scopes == MERCHANT_SCOPES else ", ".join(scope_list(record))


def state(record: ApiKeyRecord, now: datetime) -> str:
    if record.revoked_at is not None:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= now:
        return "expired"
    if record.replaced_by is not None:
        return f"rolled to {record.replaced_by}"
    return "active"


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def emit(session: Session, data: Any, human: str) -> None:
    print(json.dumps(data, indent=2) if session.as_json else human, flush=True)


def new_key_out(record: ApiKeyRecord, secret: ApiKey) -> dict[str, Any]:
    return {"key_id": record.key_id, "api_key": secret.reveal(), "merchant_id": record.merchant_id,
            "scopes": scope_list(record), "expires_at": iso(record.expires_at)}


def new_key_rows(record: ApiKeyRecord, secret: ApiKey) -> list[tuple[str, str]]:
    return [("key", record.key_id), ("merchant", record.merchant_id), ("scopes", scopes_shown(record)),
            ("expires", when(record.expires_at)), ("api key", secret.reveal())]


def shown_once(rows: Sequence[tuple[str, str]], *after: str) -> str:
    return "\n".join([table(rows), *after, "", SHOWN_ONCE])


def create_merchant(name: str, merchant_id: str | None = None) -> Callable[[Session], Awaitable[None]]:
    async def body(session: Session) -> None:
        merchant = await session.merchants.create(name, merchant_id)
        try:
            record, secret = await session.keys.create(merchant.merchant_id, MERCHANT_SCOPES)
        except (nats.errors.Error, TimeoutError):
            raise OperatorError(f"merchant {merchant.merchant_id} was created but its key was not: "
                                f"`paymesh keys create --merchant {merchant.merchant_id}` makes one") from None
        out = {"merchant_id": merchant.merchant_id, "name": merchant.name, "key_id": record.key_id,
               "api_key": secret.reveal()}
        emit(session, out, shown_once([("merchant", f"{merchant.merchant_id}  {merchant.name}"), ("key", record.key_id),
                                      ("scopes", scopes_shown(record)), ("api key", secret.reveal())]))

    return body


async def list_merchants(session: Session) -> None:
    merchants = await session.merchants.list()
    rows = [("merchant", "name", "created")] + [(m.merchant_id, m.name, when(m.created_at)) for m in merchants]
    out = [{"merchant_id": m.merchant_id, "name": m.name, "created_at": iso(m.created_at)} for m in merchants]
    emit(session, out, table(rows) if merchants else "no merchants yet: `paymesh merchants create NAME` makes one")


def create_key(args: argparse.Namespace) -> Callable[[Session], Awaitable[None]]:
    if args.operator and (args.merchant or args.scope):
        raise OperatorError("--operator makes an operator key, which has no merchant and only the operator scope: "
                            "leave out --merchant and --scope")
    if not args.operator and not args.merchant:
        raise OperatorError("name the key's merchant with --merchant ID (`paymesh merchants list`), "
                            "or make an operator key with --operator")
    merchant_id = None if args.operator else named_id("--merchant", args.merchant)
    scopes = frozenset[Scope]() if args.operator else merchant_scopes(args.scope or [])
    expires_in = duration("--expires-in", args.expires_in)
    if expires_in is not None and expires_in <= timedelta(0):
        raise OperatorError("--expires-in must be longer than 0")

    async def body(session: Session) -> None:
        merchant = OPERATOR_MERCHANT if merchant_id is None else (await session.merchants.get(merchant_id)).merchant_id
        record, secret = await session.keys.create(merchant, scopes, expires_in=expires_in, operator=args.operator)
        emit(session, new_key_out(record, secret), shown_once(new_key_rows(record, secret)))

    return body


def list_keys(merchant_id: str | None) -> Callable[[Session], Awaitable[None]]:
    async def body(session: Session) -> None:
        records, now = await session.keys.list(merchant_id), utc_now()
        used = {r.key_id: await session.keys.last_used(r.key_id) for r in records}
        rows = [("key", "merchant", "scopes", "prefix", "created", "expires", "last used", "state")]
        rows += [(r.key_id, r.merchant_id, scopes_shown(r), r.display_prefix + "…", when(r.created_at),
                  when(r.expires_at), when(used[r.key_id]), state(r, now)) for r in records]
        # The record's own fields, minus the digest: a secret's hash is nobody's business on a terminal.
        out = [{"key_id": r.key_id, "merchant_id": r.merchant_id, "scopes": scope_list(r),
                "display_prefix": r.display_prefix, "operator": r.operator, "created_at": iso(r.created_at),
                "expires_at": iso(r.expires_at), "revoked_at": iso(r.revoked_at), "replaced_by": r.replaced_by,
                "last_used_at": iso(used[r.key_id]),
                "state": state(r, now).split(" ")[0]} for r in records]
        emit(session, out, table(rows) if records else "no API keys" + (f" of {merchant_id}" if merchant_id else ""))

    return body


def roll_key(key_id: str, grace_text: str) -> Callable[[Session], Awaitable[None]]:
    grace = duration("--grace", grace_text) or timedelta(0)

    async def body(session: Session) -> None:
        new, secret = await session.keys.roll(key_id, grace)
        old = await session.keys.get(key_id)
        out = new_key_out(new, secret) | {"replaces": key_id, "old_key_expires_at": iso(old.expires_at)}
        emit(session, out, shown_once(new_key_rows(new, secret),
                                     f"\nthe old key {key_id} works until {when(old.expires_at)}, then is refused"))

    return body


def revoke_key(key_id: str) -> Callable[[Session], Awaitable[None]]:
    async def body(session: Session) -> None:
        now = utc_now()
        record = await session.keys.revoke(key_id, now)
        already = record.revoked_at != now
        out = {"key_id": record.key_id, "merchant_id": record.merchant_id, "revoked_at": iso(record.revoked_at),
               "already_revoked": already}
        emit(session, out, f"{key_id} {'was already' if already else 'is'} revoked (since {when(record.revoked_at)})")

    return body


def named_id(what: str, text: str) -> str:
    """A key or merchant id from the command line; a secret pasted in its place is refused without echoing it."""
    if text.startswith((MERCHANT_PREFIX, OPERATOR_PREFIX)):
        raise OperatorError(f"{what}: that is an API key's secret, not an id (ids read key_... or mer_...); "
                            "`paymesh keys list` shows them")
    if not _ID.fullmatch(text):
        raise OperatorError(f"{what}: {text!r} is not an id paymesh makes (key_..., mer_...)")
    return text


def duration(flag: str, text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as err:
        raise OperatorError(f"{flag}: {err}") from None


def command(args: argparse.Namespace) -> tuple[Callable[[Session], Awaitable[None]], bool]:
    """The body of the command asked for, and whether it hashes (so needs the pepper)."""
    match args.command, args.action:
        case "merchants", "create":
            chosen = getattr(args, "merchant_id", None)
            return create_merchant(args.name, chosen and named_id("--id", chosen)), True
        case "merchants", "list":
            return list_merchants, False
        case "keys", "create":
            return create_key(args), True
        case "keys", "list":
            return list_keys(args.merchant and named_id("--merchant", args.merchant)), False
        case "keys", "roll":
            return roll_key(named_id("KEY_ID", args.key_id), args.grace), True
        case "keys", "revoke":
            return revoke_key(named_id("KEY_ID", args.key_id)), False
    raise ValueError(f"no command paymesh {args.command} {args.action}")


def main(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """`paymesh merchants ...` and `paymesh keys ...`: 0, or 2 with one line on stderr."""
    try:
        body, hashes = command(args)
        asyncio.run(against_mesh(args, env, body, hashes=hashes))
    # ServiceError: KeyNotFound, MerchantNotFound, a roll of a revoked key, a merchant name refused.
    except (OperatorError, MeshNotFound, ServiceError, ValueError) as err:
        warn(err.message if isinstance(err, ServiceError) else str(err))
        return 2
    return 0
