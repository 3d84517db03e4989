"""The credentials a mesh's data dir keeps: the bank's platform key, the development merchant's key and
an operator key, each made once (mode 0600) and read by every `paymesh` command that talks to the mesh.

The environment wins over the files: PAYMESH_API_KEY (a merchant's key, what `paymesh demo`, `bench` and
`chaos` call with), PAYMESH_OPERATOR_KEY (gateway Configure), PAYMESH_PLATFORM_KEY (the bank's side).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from paymesh.chassis.auth import MERCHANT_SCOPES, ApiKey, KeyStore, Pepper, Scope
from paymesh.chassis.auth.keys import PLATFORM_MERCHANT, PLATFORM_PREFIX, check, is_platform_key, new_platform_key
from paymesh.chassis.auth.merchants import MerchantNotFound, MerchantStore
from paymesh.chassis.auth.registry import utc_now
from paymesh.chassis.auth.store import KeyNotFound
from paymesh.chassis.config import ConfigError
from paymesh.chassis.errors import ServiceError
from paymesh.chassis.tls import ClientTls

API_KEY_ENV = "PAYMESH_API_KEY"
OPERATOR_KEY_ENV = "PAYMESH_OPERATOR_KEY"
PLATFORM_KEY_ENV = "PAYMESH_PLATFORM_KEY"
# What the two sides of the bank read: gateway_mock accepts it, payment_svc presents it.
GATEWAY_ACCEPTS = "GATEWAY_MOCK_PLATFORM_KEY"
PAYMENT_PRESENTS = "PAYMENT_SVC_GATEWAY_API_KEY"
DEV_KEY_FILE = "dev_key.json"
OPERATOR_KEY_FILE = "operator_key.json"
PLATFORM_KEY_FILE = "platform_key"
DEV_MERCHANT_NAME = "Development merchant"


@dataclass(frozen=True)
class KeyFile:
    """A key `paymesh up` made and kept: which merchant and key it is, and the secret."""

    merchant_id: str
    key_id: str
    api_key: ApiKey

    def to_json(self) -> str:
        return json.dumps({"merchant_id": self.merchant_id, "key_id": self.key_id,
                           "api_key": self.api_key.reveal()}, indent=2) + "\n"

    @classmethod
    def read(cls, path: Path) -> KeyFile | None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(str(raw["merchant_id"]), str(raw["key_id"]), ApiKey(str(raw["api_key"])))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(f"{path} does not read as the key file `paymesh up` writes; remove it and start "
                              "`paymesh up` again to make a new key") from None


def write_private(path: Path, text: str) -> None:
    """Written whole to a 0600 temporary file, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def platform_key(env: Mapping[str, str], data_dir: Path) -> ApiKey:
    """The bank's key for paymesh: PAYMESH_PLATFORM_KEY, else the data dir's file, made on first use."""
    if named := env.get(PLATFORM_KEY_ENV):
        if not is_platform_key(named):
            raise ConfigError(f"{PLATFORM_KEY_ENV} is not a platform key (they start {PLATFORM_PREFIX}); "
                              "unset it and `paymesh up` makes one")
        return ApiKey(named)
    path = data_dir / PLATFORM_KEY_FILE
    try:
        return ApiKey(path.read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        key = new_platform_key()
        write_private(path, key.reveal() + "\n")
        return key


def platform_env(env: Mapping[str, str], data_dir: Path) -> dict[str, str]:
    """The variables that give both sides of the bank the same platform key (a side already set is kept)."""
    key = platform_key(env, data_dir).reveal()
    return {name: env.get(name) or key for name in (GATEWAY_ACCEPTS, PAYMENT_PRESENTS)}


async def _still_valid(keys: KeyStore, kept: KeyFile | None) -> bool:
    if kept is None:
        return False
    try:
        check(await keys.get(kept.key_id), utc_now())
    except (KeyNotFound, ServiceError):  # gone (a new NATS store), revoked or expired: make another
        return False
    return True


async def ensure_dev_key(nc: NATS, pepper: Pepper, data_dir: Path, replicas: int = 1) -> tuple[KeyFile, bool]:
    """The development merchant's key: the kept one while the mesh's bucket still knows it, else a new
    key (for the kept merchant if it is still there, else a new merchant). True when made now."""
    js = nc.jetstream()
    keys = await KeyStore.open(js, pepper, replicas=replicas)
    merchants = await MerchantStore.open(js, replicas=replicas)
    path = data_dir / DEV_KEY_FILE
    kept = KeyFile.read(path)
    if await _still_valid(keys, kept):
        assert kept is not None
        return kept, False
    merchant_id = None
    if kept is not None:
        with contextlib.suppress(MerchantNotFound):
            merchant_id = (await merchants.get(kept.merchant_id)).merchant_id
    if merchant_id is None:
        merchant_id = (await merchants.create(DEV_MERCHANT_NAME)).merchant_id
    record, secret = await keys.create(merchant_id, MERCHANT_SCOPES)
    made = KeyFile(merchant_id, record.key_id, secret)
    write_private(path, made.to_json())
    return made, True


async def ensure_operator_key(nc: NATS, pepper: Pepper, data_dir: Path, replicas: int = 1) -> KeyFile:
    """An operator key for the mesh's own tools (gateway Configure in `bench` and `chaos`), kept like the dev key."""
    keys = await KeyStore.open(nc.jetstream(), pepper, replicas=replicas)
    path = data_dir / OPERATOR_KEY_FILE
    kept = KeyFile.read(path)
    if await _still_valid(keys, kept):
        assert kept is not None
        return kept
    record, secret = await keys.create(PLATFORM_MERCHANT, frozenset(), operator=True)
    made = KeyFile(PLATFORM_MERCHANT, record.key_id, secret)
    write_private(path, made.to_json())
    return made


async def new_merchant_key(
    nc: NATS, pepper: Pepper, name: str, replicas: int = 1, scopes: frozenset[Scope] = MERCHANT_SCOPES
) -> KeyFile:
    """A new merchant and its first key (every merchant scope unless told), as `paymesh merchants create` makes them."""
    js = nc.jetstream()
    merchant = await (await MerchantStore.open(js, replicas=replicas)).create(name)
    record, secret = await (await KeyStore.open(js, pepper, replicas=replicas)).create(merchant.merchant_id, scopes)
    return KeyFile(merchant.merchant_id, record.key_id, secret)


@dataclass(frozen=True)
class MeshCredentials:
    """What a client of a mesh calls with; None where neither the environment nor the data dir has one. `tls`:
    the CA (and client certificate) of a TLS mesh, from PAYMESH_TLS_CA (paymesh.chassis.tls.ClientTls)."""

    api_key: ApiKey | None = None
    operator_key: ApiKey | None = None
    platform_key: ApiKey | None = None
    tls: ClientTls | None = None

    def client_options(self) -> dict[str, Any]:
        """The keyword arguments of `paymesh.client.MeshClient` that carry these keys and the TLS to dial with."""
        return {"api_key": self.api_key, "platform_key": self.platform_key, "operator_key": self.operator_key,
                "tls": self.tls}

    @classmethod
    def load(cls, env: Mapping[str, str], data_dir: Path) -> MeshCredentials:
        """The environment's keys, else the files `paymesh up` keeps in `data_dir`; never makes one."""

        def kept(variable: str, name: str) -> ApiKey | None:
            if named := env.get(variable):
                return ApiKey(named)
            with contextlib.suppress(ConfigError):
                found = KeyFile.read(data_dir / name)
                return None if found is None else found.api_key
            return None

        platform = env.get(PLATFORM_KEY_ENV) or env.get(PAYMENT_PRESENTS)
        if not platform:
            with contextlib.suppress(OSError):
                platform = (data_dir / PLATFORM_KEY_FILE).read_text(encoding="utf-8").strip()
        return cls(api_key=kept(API_KEY_ENV, DEV_KEY_FILE), operator_key=kept(OPERATOR_KEY_ENV, OPERATOR_KEY_FILE),
                   platform_key=ApiKey(platform) if platform else None, tls=ClientTls.from_env(env))
