"""How a service describes itself to the chassis and the launcher: the one thing each `service.py` exports."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from sqlalchemy import MetaData

if TYPE_CHECKING:
    from paymesh.chassis.service import Runtime, Wiring

S = TypeVar("S")


def no_settings(env: Mapping[str, str]) -> None:
    """For a service that reads nothing of its own from the environment."""
    return None


@dataclass(frozen=True)
class Durable:
    """A durable consumer through which a service reads a stream (its own or a peer's)."""

    stream: str
    name: str


@dataclass(frozen=True)
class ServiceSpec(Generic[S]):
    """A service of the mesh: what the chassis runs and migrates, and what the launcher starts.

    `S` is the type of the service's own settings (`settings(env)` reads them; `wire` receives
    them beside the chassis' `Runtime`), so a setting only one service has lives in that service."""

    name: str  # its package and process name: `python -m <name>`, `<name>.db`
    env_prefix: str  # `<prefix>_GRPC_ADDR`, `<prefix>_DB_URL`, ...
    grpc_port: int  # its default port on 127.0.0.1
    stream: str | None  # the JetStream stream it owns (`ORDER` holds `order.>`), if it publishes events
    metadata: Callable[[], MetaData]  # its own tables; the chassis adds outbox, inbox and request log
    migrations: str  # the dotted name of the package holding its Alembic scripts
    wire: Callable[[Runtime, S], Wiring]
    settings: Callable[[Mapping[str, str]], S]
    # The durables its wiring consumes through, declared here so the bus's authorization can be written before
    # any service runs (paymesh.ops.nats_auth); the chassis refuses to start a wiring that differs.
    consumes: tuple[Durable, ...] = ()

    @property
    def default_grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"
