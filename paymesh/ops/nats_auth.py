"""Least privilege on the bus: one NATS user per service and one for the operator's tools, what each may
publish and subscribe to, and their nkey seed files. The one source of the authorization `paymesh up` writes
into its nats-server config and deploy/nats/*.conf carry for docker-compose (tests/deploy checks they agree).

A service may publish only its own stream's subjects, the DLQ subjects of its own consumers, and the
JetStream API calls of its own stream and its own durables (plus reading the peers' streams' and the DLQ's
info, to wait for them, and reading the keys' bucket, where it writes only a key's last use). It reads only
the replies to its own requests (its inbox prefix, paymesh.chassis.nats_creds). Everything else is refused by
the server: inventory_svc cannot publish `payment.succeeded`, bind another service's durable, or delete a
stream. The operator's user administers: it makes the shared streams, manages keys, reads and replays the DLQ.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys  # type: ignore[import-untyped]  # nkeys publishes no type information

from paymesh.chassis.auth.bucket import BUCKET
from paymesh.chassis.consumer import dlq_subject
from paymesh.chassis.jetstream import DLQ_STREAM, stream_subjects
from paymesh.chassis.nats_creds import OPERATOR_CREDS_ENV, NatsCredentials, inbox_prefix
from paymesh.chassis.spec import ServiceSpec
from paymesh.ops.credentials import write_private

OPERATOR = "operator"
# Under the data dir of `paymesh up`: one seed file per user, mode 0600, in a directory only its owner reads.
CREDS_DIR = "nats-creds"
SEED_SUFFIX = ".nk"
API = "$JS.API"
KV_STREAM = f"KV_{BUCKET}"
# What a service writes into the keys' bucket: when a key was last used (paymesh.chassis.auth.bucket).
KV_LAST_USE = f"$KV.{BUCKET}.used.>"


def creds_variable(spec: ServiceSpec[Any]) -> str:
    """What the service reads its seed file's path from (paymesh.chassis.config)."""
    return f"{spec.env_prefix}_NATS_CREDS"


def users(specs: Iterable[ServiceSpec[Any]]) -> list[str]:
    """Every user of the mesh's NATS: one per service, then the operator."""
    return [*(spec.name for spec in specs), OPERATOR]


def _durable_api(stream: str, durable: str) -> list[str]:
    """A durable pull consumer's calls: create or update it (each subject nats-py and the server use for
    that), read its state, pull from it, and acknowledge, nak or term what it delivered."""
    return [
        f"{API}.CONSUMER.CREATE.{stream}.{durable}",
        f"{API}.CONSUMER.CREATE.{stream}.{durable}.>",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"{API}.CONSUMER.INFO.{stream}.{durable}",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _key_reader() -> list[str]:
    """Following the keys' bucket: its info, ordered (ephemeral) consumers and their info, their flow control,
    and the last-use writes. No delete: the server drops an ephemeral consumer its subscriber left."""
    return [
        f"{API}.STREAM.INFO.{KV_STREAM}",
        f"{API}.CONSUMER.CREATE.{KV_STREAM}",
        f"{API}.CONSUMER.CREATE.{KV_STREAM}.>",
        f"{API}.CONSUMER.INFO.{KV_STREAM}.>",
        f"$JS.FC.{KV_STREAM}.>",
        KV_LAST_USE,
    ]


def permissions_for(spec: ServiceSpec[Any]) -> dict[str, Any]:
    """What the service's user may publish and subscribe to; nothing else."""
    publish: list[str] = []
    if spec.stream:
        publish += stream_subjects(spec.stream)
        publish += [f"{API}.STREAM.{call}.{spec.stream}" for call in ("INFO", "CREATE", "UPDATE")]
        # Reading (never changing) the durables on its own stream: it reports their lag (paymesh.chassis.metrics).
        publish.append(f"{API}.CONSUMER.LIST.{spec.stream}")
    if spec.consumes:
        publish += [dlq_subject(spec.name, durable.name) for durable in spec.consumes]
        # Streams it waits for and binds, never creates: its peers' and the DLQ.
        bound = sorted({durable.stream for durable in spec.consumes} - {spec.stream or ""} | {DLQ_STREAM})
        publish += [f"{API}.STREAM.INFO.{stream}" for stream in bound]
        for durable in spec.consumes:
            publish += _durable_api(durable.stream, durable.name)
    publish += _key_reader()
    return {"publish": {"allow": publish}, "subscribe": {"allow": [f"{inbox_prefix(spec.name)}.>"]}}


def operator_permissions(specs: Sequence[ServiceSpec[Any]]) -> dict[str, Any]:
    """The operator's tools: the whole JetStream API (shared streams, keys, DLQ reads and deletes), replaying a
    dead letter onto any stream's subjects, acknowledging and flow control of what it reads, and reading all."""
    streams = [subject for spec in specs if spec.stream for subject in stream_subjects(spec.stream)]
    publish = [f"{API}.>", "$JS.ACK.>", "$JS.FC.>", f"$KV.{BUCKET}.>", *streams]
    return {"publish": {"allow": publish}, "subscribe": {"allow": [">"]}}


def authorization(public_keys: Mapping[str, str], specs: Sequence[ServiceSpec[Any]]) -> dict[str, Any]:
    """The nats-server `authorization` block: each user by its public nkey, with its permissions.
    `public_keys` maps every name of `users(specs)` to its `U...` key."""
    missing = [name for name in users(specs) if name not in public_keys]
    if missing:
        raise ValueError(f"no public key for NATS users {', '.join(missing)}")
    entries = [{"nkey": public_keys[spec.name], "permissions": permissions_for(spec)} for spec in specs]
    entries.append({"nkey": public_keys[OPERATOR], "permissions": operator_permissions(specs)})
    return {"users": entries}


def new_seed() -> str:
    """A new user nkey's seed (`SU...`): 256 random bits."""
    return str(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode())


def seed_path(directory: Path, user: str) -> Path:
    return directory / f"{user}{SEED_SUFFIX}"


def ensure_seeds(directory: Path, names: Iterable[str]) -> dict[str, NatsCredentials]:
    """Each user's seed file in `directory`, made (mode 0600) where missing and kept otherwise, so a mesh
    restarted on the same data dir keeps its users."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    out: dict[str, NatsCredentials] = {}
    for user in names:
        path = seed_path(directory, user)
        if not path.exists():
            write_private(path, new_seed() + "\n")
        out[user] = NatsCredentials.read(user, path, str(path))
    return out


def operator_credentials(env: Mapping[str, str], data_dir: Path) -> NatsCredentials | None:
    """PAYMESH_NATS_CREDS, else the operator's seed `paymesh up` keeps in the data dir, else None (a NATS
    without authorization). A named file that cannot be read raises CredentialsError naming the variable."""
    if named := env.get(OPERATOR_CREDS_ENV):
        return NatsCredentials.read(OPERATOR, Path(named), OPERATOR_CREDS_ENV)
    kept = seed_path(data_dir / CREDS_DIR, OPERATOR)
    if not kept.exists():
        return None
    return NatsCredentials.read(OPERATOR, kept, str(kept))


@dataclass(frozen=True)
class MeshUsers:
    """The users of a mesh's own NATS: their seed files under the data dir, and the authorization admitting them."""

    credentials: dict[str, NatsCredentials]
    authorization: dict[str, Any]

    @property
    def operator(self) -> NatsCredentials:
        return self.credentials[OPERATOR]

    def env_of(self, spec: ServiceSpec[Any]) -> dict[str, str]:
        """The variable that gives the service its own user."""
        return {creds_variable(spec): str(self.credentials[spec.name].path)}


def mesh_users(data_dir: Path, specs: Sequence[ServiceSpec[Any]]) -> MeshUsers:
    """The users `paymesh up` runs its NATS with: seeds kept under `<data_dir>/nats-creds/`, made on first start."""
    credentials = ensure_seeds(data_dir / CREDS_DIR, users(specs))
    keys = {user: creds.public_key for user, creds in credentials.items()}
    return MeshUsers(credentials, authorization(keys, specs))


def operator_options(env: Mapping[str, str]) -> dict[str, Any]:
    """The `nats.connect` keyword arguments that sign a tool in as the operator of the mesh `env` describes
    (PAYMESH_NATS_CREDS, else the seed in its PAYMESH_DATA_DIR); none on a NATS without users."""
    credentials = operator_credentials(env, Path(env.get("PAYMESH_DATA_DIR") or ".paymesh"))
    return credentials.connect_options() if credentials is not None else {}
