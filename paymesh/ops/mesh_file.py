"""`$PAYMESH_DATA_DIR/mesh.json`: where a running `paymesh up` mesh listens, for the other `paymesh` commands.

`paymesh up` writes it once every service is SERVING and removes it on a clean stop. It holds addresses and file
paths only, never a secret (the keys stay in their own 0600 files, which it names; a database URL is kept without
its password). A command reads it into its
environment with `running_env`: a variable the caller set wins over the file's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FILE_NAME = "mesh.json"
VERSION = 1
# What a client of the mesh needs from the environment `paymesh up` ran with (paths and addresses only).
CLIENT_VARIABLES = ("PAYMESH_NATS_URL", "PAYMESH_NATS_CREDS", "PAYMESH_STREAM_REPLICAS", "PAYMESH_TLS_CA",
                    "PAYMESH_TLS_CLIENT_CERT", "PAYMESH_TLS_CLIENT_KEY", "PAYMESH_TLS_CLIENT_AUTH")


@dataclass(frozen=True)
class MeshFile:
    """What mesh.json says; `services` maps each service to its replicas' addresses, first replica first."""

    path: Path
    pid: int
    data_dir: Path
    started: str
    services: dict[str, list[str]]
    env_prefixes: dict[str, str]
    variables: dict[str, str]
    dev_key: str | None
    # Each service's replicas' /metrics addresses, first replica first.
    metrics: dict[str, list[str]] = field(default_factory=dict)
    # Each service's store (its SQLAlchemy URL without a password): what the operator's tools read.
    databases: dict[str, str] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        """The `paymesh up` that wrote it still runs (a SIGKILLed one leaves its file behind)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def environment(self) -> dict[str, str]:
        """The variables that point a command at this mesh."""
        env = {f"{self.env_prefixes[name]}_GRPC_ADDR": addrs[0] for name, addrs in self.services.items() if addrs}
        env |= {f"{self.env_prefixes[name]}_METRICS_ADDR": addrs[0] for name, addrs in self.metrics.items() if addrs}
        env |= {f"{self.env_prefixes[name]}_DB_URL": url for name, url in self.databases.items()
                if name in self.env_prefixes}
        env.update(self.variables)
        env["PAYMESH_DATA_DIR"] = str(self.data_dir)
        return env


def path_of(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def write(data_dir: Path, services: Mapping[str, list[str]], env_prefixes: Mapping[str, str],
          env: Mapping[str, str], dev_key: Path | None, *, metrics: Mapping[str, list[str]] | None = None,
          databases: Mapping[str, str] | None = None) -> Path:
    """Write mesh.json atomically (a reader never sees half of it), readable by its owner only."""
    body: dict[str, Any] = {
        "version": VERSION,
        "pid": os.getpid(),
        "data_dir": str(data_dir),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "services": {name: list(addrs) for name, addrs in services.items()},
        "metrics": {name: list(addrs) for name, addrs in (metrics or {}).items()},
        "databases": dict(databases or {}),
        "env_prefixes": dict(env_prefixes),
        "variables": {name: env[name] for name in CLIENT_VARIABLES if env.get(name)},
        "dev_key": None if dev_key is None else str(dev_key),
    }
    target = path_of(data_dir)
    partial = target.with_suffix(".json.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(body, out, indent=2)
        out.write("\n")
    os.replace(partial, target)
    return target


def remove(data_dir: Path) -> None:
    path_of(data_dir).unlink(missing_ok=True)


def load(data_dir: Path) -> MeshFile | None:
    """mesh.json of `data_dir`; None when there is none or it cannot be read as one."""
    path = path_of(data_dir)
    try:
        raw = json.loads(path.read_text())
        return MeshFile(
            path=path,
            pid=int(raw["pid"]),
            data_dir=Path(raw["data_dir"]),
            started=str(raw["started"]),
            services={str(k): [str(a) for a in v] for k, v in raw["services"].items()},
            env_prefixes={str(k): str(v) for k, v in raw["env_prefixes"].items()},
            variables={str(k): str(v) for k, v in raw.get("variables", {}).items()},
            dev_key=raw.get("dev_key"),
            metrics={str(k): [str(a) for a in v] for k, v in raw.get("metrics", {}).items()},
            databases={str(k): str(v) for k, v in raw.get("databases", {}).items()},
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def data_dir_of(env: Mapping[str, str], flag: str | None = None) -> Path:
    return Path(flag or env.get("PAYMESH_DATA_DIR") or ".paymesh").resolve()


def running_env(env: Mapping[str, str], flag: str | None = None) -> tuple[dict[str, str], MeshFile | None]:
    """`env` over the running mesh's mesh.json (the environment wins), and that file; `env` alone, and None, when
    no `paymesh up` runs for the data dir."""
    found = load(data_dir_of(env, flag))
    if found is None or not found.alive:
        return dict(env), None
    return {**found.environment(), **env}, found
