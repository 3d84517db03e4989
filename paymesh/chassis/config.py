"""Settings of a service, read from environment variables with the documented defaults."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paymesh.chassis.nats_creds import CredentialsError, NatsCredentials
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


METRICS_ADDR_OFFSET = 1000  # the default metrics port is the gRPC port plus this


def metrics_addr(spec: ServiceSpec[Any], env: Mapping[str, str] | None = None) -> tuple[str | None, bool]:
    """`<SVC>_METRICS_ADDR` (`off`: no metrics served), else 127.0.0.1 and the gRPC port + 1000; and whether
    it was set explicitly (then a port that cannot be bound stops the start; the default one is only warned of)."""
    env = os.environ if env is None else env
    raw = (env.get(f"{spec.env_prefix}_METRICS_ADDR") or "").strip()
    if raw.lower() == "off":
        return None, True
    if raw:
        return raw, True
    _, _, port = grpc_addr(spec, env).rpartition(":")
    try:
        return f"127.0.0.1:{int(port) + METRICS_ADDR_OFFSET}", False
    except ValueError:
        raise ConfigError(f"{spec.env_prefix}_GRPC_ADDR={grpc_addr(spec, env)!r} has no port") from None


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


# The one reading of a duration (`PAYMESH_STREAM_MAX_AGE`, the operator commands' ages): units may be combined.
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([a-z]*)")
_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
          "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0, "h": 3600.0, "hr": 3600.0,
          "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0, "d": 86400.0, "day": 86400.0, "days": 86400.0,
          "w": 604800.0, "week": 604800.0, "weeks": 604800.0}


def parse_duration(raw: str) -> float | None:
    """Seconds of `7d`, `24h`, `30m`, `3600s`, `3600`, `1h30m`, `2 days`, `168h0m0s`; None when it reads as none."""
    text = raw.strip().lower().replace(" ", "")
    total, end = 0.0, 0
    for part in _DURATION_PART.finditer(text):
        if part.start() != end or part.group(2) not in _UNITS:
            return None
        total += float(part.group(1)) * _UNITS[part.group(2)]
        end = part.end()
    return total if text and end == len(text) else None


def env_duration(env: Mapping[str, str], name: str, default_s: float) -> float:
    """A positive duration in seconds (`parse_duration`); `default_s` when unset or empty."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default_s
    value = parse_duration(raw)
    if value is None:
        raise ConfigError(f"{name}={raw!r} is not a duration: use e.g. 7d, 24h, 30m, 90s")
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be longer than 0")
    return value


STREAM_MAX_AGE_ENV = "PAYMESH_STREAM_MAX_AGE"
DEFAULT_STREAM_MAX_AGE_S = 7 * 86400.0


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


CA_ENV = "PAYMESH_TLS_CA"
CLIENT_AUTH_ENV = "PAYMESH_TLS_CLIENT_AUTH"
CLIENT_AUTH_MODES = ("none", "require")


@dataclass(frozen=True)
class TlsSettings:
    """Where a service's TLS files are (paymesh.chassis.tls reads them): `<SVC>_TLS_CERT` and `<SVC>_TLS_KEY`
    (it serves TLS only when both are set), PAYMESH_TLS_CA (what it trusts as a client, and whose client
    certificates it accepts), PAYMESH_TLS_CLIENT_AUTH=require (mTLS: it demands a client certificate)."""

    env_prefix: str = ""
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_client_auth: bool = False

    @property
    def serves_tls(self) -> bool:
        return self.cert is not None

    @classmethod
    def from_env(cls, env_prefix: str, env: Mapping[str, str]) -> TlsSettings:
        cert_var, key_var = f"{env_prefix}_TLS_CERT", f"{env_prefix}_TLS_KEY"
        cert, key, ca = env.get(cert_var) or None, env.get(key_var) or None, env.get(CA_ENV) or None
        if (cert is None) != (key is None):
            missing, given = (key_var, cert_var) if key is None else (cert_var, key_var)
            raise ConfigError(f"{given} is set but {missing} is not: a TLS server needs its certificate and its key")
        mode = (env.get(CLIENT_AUTH_ENV) or "none").strip().lower()
        if mode not in CLIENT_AUTH_MODES:
            raise ConfigError(f"{CLIENT_AUTH_ENV}={mode!r}: use one of {', '.join(CLIENT_AUTH_MODES)}")
        required = mode == "require"
        if required and cert is None:
            raise ConfigError(f"{CLIENT_AUTH_ENV}=require needs {cert_var} and {key_var}: mTLS is TLS first")
        if required and ca is None:
            raise ConfigError(f"{CLIENT_AUTH_ENV}=require needs {CA_ENV}, the CA whose client certificates to accept")
        return cls(env_prefix, Path(cert) if cert else None, Path(key) if key else None, Path(ca) if ca else None,
                   required)


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
    tls: TlsSettings = field(default_factory=TlsSettings)
    # <SVC>_NATS_CREDS: the service's own NATS user (its nkey seed file); None on a NATS without authorization.
    # Its repr shows the file, never the seed.
    nats_creds: NatsCredentials | None = None
    # <SVC>_METRICS_ADDR (None: `off`) and whether it was set rather than derived from the gRPC port.
    metrics_addr: str | None = None
    metrics_addr_explicit: bool = False
    # PAYMESH_METRICS_PERIOD_S: how often the gauges read from the store and the bus are refreshed.
    metrics_period_s: float = 5.0
    # PAYMESH_DB_POOL_SIZE: PostgreSQL connections kept per process (and as many more under a burst).
    db_pool_size: int = 4
    # PAYMESH_STREAM_MAX_AGE: how long the service's stream keeps an event (applied to it on every start).
    stream_max_age_s: float = DEFAULT_STREAM_MAX_AGE_S

    @classmethod
    def from_env(cls, spec: ServiceSpec[Any], env: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        nats = env.get("PAYMESH_NATS_URL") or DEFAULT_NATS_URL
        metrics, metrics_explicit = metrics_addr(spec, env)
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
            tls=TlsSettings.from_env(spec.env_prefix, env),
            nats_creds=nats_credentials(spec, env),
            metrics_addr=metrics,
            metrics_addr_explicit=metrics_explicit,
            metrics_period_s=env_float(env, "PAYMESH_METRICS_PERIOD_S", 5.0),
            stream_max_age_s=env_duration(env, STREAM_MAX_AGE_ENV, DEFAULT_STREAM_MAX_AGE_S),
            db_pool_size=env_int(env, "PAYMESH_DB_POOL_SIZE", 4),
        )


def nats_credentials(spec: ServiceSpec[Any], env: Mapping[str, str]) -> NatsCredentials | None:
    """The seed file `<SVC>_NATS_CREDS` names, read now: a missing or unreadable one ends the start naming it."""
    path = env.get(f"{spec.env_prefix}_NATS_CREDS")
    if not path:
        return None
    try:
        return NatsCredentials.read(spec.name, Path(path), f"{spec.env_prefix}_NATS_CREDS")
    except CredentialsError as exc:
        raise ConfigError(str(exc)) from None
