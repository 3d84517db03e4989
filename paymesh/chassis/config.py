"""Settings of a service, read from environment variables with the documented defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paymesh.chassis.spec import ServiceSpec

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("PAYMESH_DATA_DIR", ".paymesh"))


def grpc_addr(spec: ServiceSpec[Any], env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get(f"{spec.env_prefix}_GRPC_ADDR") or spec.default_grpc_addr


def db_url(spec: ServiceSpec[Any], env: Mapping[str, str] | None = None, *, shared: bool = False) -> str:
    """`<SVC>_DB_URL`, else a SQLite file under the data dir. The default runs sqlite3 on the
    event loop (`sqlite+inloop`), right for one process per file; `shared` (several replicas
    on the file) gives aiosqlite's thread instead, so waiting on another process's lock never
    holds the loop."""
    env = os.environ if env is None else env
    driver = "sqlite+aiosqlite" if shared else "sqlite+inloop"
    return env.get(f"{spec.env_prefix}_DB_URL") or f"{driver}:///{data_dir(env) / f'{spec.name}.db'}"


EVENT_LOOPS = ("uvloop", "asyncio")


def event_loop(env: Mapping[str, str] | None = None) -> str:
    """PAYMESH_EVENT_LOOP: `uvloop` (the default) or `asyncio` (the standard library's loop)."""
    env = os.environ if env is None else env
    choice = env.get("PAYMESH_EVENT_LOOP") or "uvloop"
    if choice not in EVENT_LOOPS:
        raise ConfigError(f"PAYMESH_EVENT_LOOP={choice!r}: use one of {', '.join(EVENT_LOOPS)}")
    return choice


def env_float(env: Mapping[str, str], name: str, default: float, *, zero_means_off: bool = False) -> float:
    """A positive number (or 0 where `zero_means_off`); `default` when unset or empty."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if zero_means_off and value < 0:
        raise ConfigError(f"{name}={raw!r} must be 0 (off) or positive")
    if not zero_means_off and value <= 0:
        raise ConfigError(f"{name}={raw!r} must be greater than 0")
    return value


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be greater than 0")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything a service reads from its environment; built once in `__main__`, passed down."""

    service: str
    env_prefix: str
    grpc_addr: str
    db_url: str
    nats_urls: list[str]
    stream: str | None
    stream_replicas: int
    saga_timeout_s: float
    data_dir: Path
    shutdown_grace_s: float
    # PAYMESH_KEY_PEPPER; None: the file under data_dir (paymesh.chassis.auth.pepper). Never printed.
    key_pepper: str | None = field(default=None, repr=False)
    # Calls a second per merchant on this replica (PAYMESH_RATE_LIMIT_RPS; 0 off) and the burst above it.
    rate_limit_rps: float = 10_000.0
    rate_limit_burst: float | None = None

    @classmethod
    def from_env(cls, spec: ServiceSpec[Any], env: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        nats = env.get("PAYMESH_NATS_URL") or DEFAULT_NATS_URL
        return cls(
            service=spec.name,
            env_prefix=spec.env_prefix,
            grpc_addr=grpc_addr(spec, env),
            db_url=db_url(spec, env),
            nats_urls=[u.strip() for u in nats.split(",") if u.strip()],
            stream=spec.stream,
            stream_replicas=env_int(env, "PAYMESH_STREAM_REPLICAS", 1),
            saga_timeout_s=env_float(env, "PAYMESH_SAGA_TIMEOUT_S", 30.0),
            data_dir=data_dir(env),
            shutdown_grace_s=env_float(env, "PAYMESH_SHUTDOWN_GRACE_S", 5.0),
            key_pepper=env.get("PAYMESH_KEY_PEPPER") or None,
            rate_limit_rps=env_float(env, "PAYMESH_RATE_LIMIT_RPS", 10_000.0, zero_means_off=True),
            rate_limit_burst=env_float(env, "PAYMESH_RATE_LIMIT_BURST", 1.0) if env.get("PAYMESH_RATE_LIMIT_BURST")
            else None,
        )
