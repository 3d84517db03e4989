"""Settings of a service, read from environment variables with the documented defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# service name -> (environment prefix, default gRPC port, JetStream stream it owns)
SERVICES: dict[str, tuple[str, int, str | None]] = {
    "order_svc": ("ORDER_SVC", 50051, "ORDER"),
    "inventory_svc": ("INVENTORY_SVC", 50052, "INVENTORY"),
    "payment_svc": ("PAYMENT_SVC", 50053, "PAYMENT"),
    "gateway_mock": ("GATEWAY_MOCK", 50054, None),
}

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def data_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("PAYMESH_DATA_DIR", ".paymesh"))


def grpc_addr(service: str, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    prefix, port, _ = SERVICES[service]
    return env.get(f"{prefix}_GRPC_ADDR", f"127.0.0.1:{port}")


def db_url(service: str, env: dict[str, str] | None = None, *, shared: bool = False) -> str:
    """`<SVC>_DB_URL`, else a SQLite file under the data dir. The default runs sqlite3 on the
    event loop (`sqlite+inloop`), right for one process per file; `shared` (several replicas
    on the file) gives aiosqlite's thread instead, so waiting on another process's lock never
    holds the loop."""
    env = os.environ if env is None else env
    prefix, _, _ = SERVICES[service]
    driver = "sqlite+aiosqlite" if shared else "sqlite+inloop"
    return env.get(f"{prefix}_DB_URL") or f"{driver}:///{data_dir(env) / f'{service}.db'}"


EVENT_LOOPS = ("uvloop", "asyncio")


def event_loop(env: dict[str, str] | None = None) -> str:
    """PAYMESH_EVENT_LOOP: `uvloop` (the default) or `asyncio` (the standard library's loop)."""
    env = os.environ if env is None else env
    choice = env.get("PAYMESH_EVENT_LOOP") or "uvloop"
    if choice not in EVENT_LOOPS:
        raise ConfigError(f"PAYMESH_EVENT_LOOP={choice!r}: use one of {', '.join(EVENT_LOOPS)}")
    return choice


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be greater than 0")
    return value


def _int(env: dict[str, str], name: str, default: int) -> int:
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
    grpc_addr: str
    db_url: str
    nats_urls: list[str]
    stream: str | None
    stream_replicas: int
    saga_timeout_s: float
    data_dir: Path
    gateway_addr: str
    shutdown_grace_s: float

    @classmethod
    def from_env(cls, service: str, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        if service not in SERVICES:
            raise ConfigError(f"unknown service {service!r}; expected one of {sorted(SERVICES)}")
        nats = env.get("PAYMESH_NATS_URL") or DEFAULT_NATS_URL
        return cls(
            service=service,
            grpc_addr=grpc_addr(service, env),
            db_url=db_url(service, env),
            nats_urls=[u.strip() for u in nats.split(",") if u.strip()],
            stream=SERVICES[service][2],
            stream_replicas=_int(env, "PAYMESH_STREAM_REPLICAS", 1),
            saga_timeout_s=_float(env, "PAYMESH_SAGA_TIMEOUT_S", 30.0),
            data_dir=data_dir(env),
            gateway_addr=env.get("PAYMENT_SVC_GATEWAY_ADDR") or grpc_addr("gateway_mock", env),
            shutdown_grace_s=_float(env, "PAYMESH_SHUTDOWN_GRACE_S", 5.0),
        )
