"""The NATS of a running mesh, for the operator's commands: where it is, and a connection to it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import nats
import nats.errors
from nats.aio.client import Client as NATS

from paymesh.chassis.config import env_int
from paymesh.chassis.jetstream import is_authorization_refusal
from paymesh.chassis.nats_creds import CredentialsError, NatsCredentials
from paymesh.ops.launcher import MAX_STREAM_REPLICAS, NATS_CLUSTER_DIR, NATS_DIR
from paymesh.ops.nats_auth import operator_credentials
from paymesh.ops.natsserver import CONF_NAME as NATS_CONF

# What `paymesh up` leaves under its data dir: its nats-server's config (`start_nats` puts the server's
# store at <data_dir>/nats, `NatsServer.start` writes this file there), or one per node of its cluster
# (<data_dir>/nats-cluster/n<i>); each holds the host and port the server listens on.
CONNECT_TIMEOUT_S = 3.0
CONNECT_DEADLINE_S = 10.0


class MeshNotFound(Exception):
    """No NATS named, found or answering; the message says what to do, and holds no credential."""


@dataclass(frozen=True)
class NatsAddress:
    servers: list[str]
    source: str  # where the address came from, for the message when nothing answers there
    replicas: int = 1  # for a bucket or stream the command would be the first to create
    # The operator's NATS user: PAYMESH_NATS_CREDS, else the seed `paymesh up` keeps in the data dir, else none.
    credentials: NatsCredentials | None = None

    def shown(self) -> str:
        """The servers, fit to print: a user or password in a URL is masked."""
        return ", ".join(_masked(url) for url in self.servers)


def _masked(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def nats_of_data_dir(data_dir: Path) -> NatsAddress | None:
    """The NATS `paymesh up` last ran with this data dir (its nats-server, or its cluster's nodes), if any."""
    single = [p for p in [data_dir / NATS_DIR / NATS_CONF] if p.is_file()]
    cluster = sorted((data_dir / NATS_CLUSTER_DIR).glob(f"n*/{NATS_CONF}"))
    written = [paths for paths in (single, cluster) if paths]
    if not written:
        return None
    newest = max(written, key=lambda paths: max(p.stat().st_mtime for p in paths))
    servers = []
    for path in newest:
        try:
            conf = json.loads(path.read_text(encoding="utf-8"))
            servers.append(f"nats://{conf['host']}:{int(conf['port'])}")
        except (OSError, ValueError, KeyError, TypeError):
            raise MeshNotFound(f"{path} does not read as the config `paymesh up` writes: "
                               "name the mesh's NATS with --nats-url or PAYMESH_NATS_URL") from None
    if newest is cluster:
        return NatsAddress(servers, str(data_dir / NATS_CLUSTER_DIR), min(len(servers), MAX_STREAM_REPLICAS))
    return NatsAddress(servers, str(newest[0]))


def find_nats(flag: str | None, env: Mapping[str, str], data_dir: Path) -> NatsAddress:
    """--nats-url, else PAYMESH_NATS_URL, else what `paymesh up` left in the data dir; signed in as the operator
    (PAYMESH_NATS_CREDS, else the operator's seed in the data dir)."""
    replicas = env_int(env, "PAYMESH_STREAM_REPLICAS", 0)  # as the services read it; 0: not set
    try:
        credentials = operator_credentials(env, data_dir)
    except CredentialsError as exc:
        raise MeshNotFound(str(exc)) from None
    for named, source in ((flag, "--nats-url"), (env.get("PAYMESH_NATS_URL"), "PAYMESH_NATS_URL")):
        if named:
            return NatsAddress([u.strip() for u in named.split(",") if u.strip()], source, replicas or 1, credentials)
    found = nats_of_data_dir(data_dir)
    if found is None:
        raise MeshNotFound(f"no mesh found: {data_dir} holds no NATS of `paymesh up`; start one with "
                           "`paymesh up`, pass --data-dir, or name its NATS with --nats-url or PAYMESH_NATS_URL")
    return NatsAddress(found.servers, found.source, replicas or found.replicas, credentials)


async def connect(address: NatsAddress, name: str) -> NATS:
    async def quiet(exc: Exception) -> None:
        """nats-py would log each failed attempt with a traceback; the one MeshNotFound line says it instead."""

    signed_in = address.credentials.connect_options() if address.credentials is not None else {}
    try:
        # Each server is tried twice (on 0 attempts nats-py tries for ever), all of it under one deadline.
        async with asyncio.timeout(CONNECT_DEADLINE_S):
            return await nats.connect(servers=address.servers, name=name, connect_timeout=CONNECT_TIMEOUT_S,
                                      allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.25,
                                      error_cb=quiet, **signed_in)
    except (nats.errors.Error, OSError, TimeoutError, ValueError) as exc:
        if not is_authorization_refusal(exc):
            raise MeshNotFound(f"no mesh reachable: nothing answers at {address.shown()} (from {address.source}); "
                               "is `paymesh up` running?") from None
        who = (f"the operator's credentials {address.credentials.path}" if address.credentials
               else "a connection without credentials")
        raise MeshNotFound(f"the mesh's NATS at {address.shown()} refused {who}: set PAYMESH_NATS_CREDS to the "
                           f"operator's seed file (`paymesh up` keeps it in its data dir, nats-creds/operator.nk)"
                           ) from None
