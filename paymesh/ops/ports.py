"""Free ports for a mesh of its own: `mesh_env`, the environment `paymesh chaos` and the e2e tests start one with."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from paymesh.ops.addresses import REPLICA_PORT_STEP
from paymesh.ops.natsserver import free_port, port_is_free, reserve_port
from paymesh.ops.services import SPECS, spec


def unique_ports(count: int) -> list[int]:
    """`count` distinct free ports, ascending."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def replica_ports(count: int, replicas: int) -> list[int]:
    """`count` free ports p such that p + 100·(r−1) is free too for every replica r (the Mesh's layout)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        spread = [port + REPLICA_PORT_STEP * r for r in range(replicas)]
        taken = {p + REPLICA_PORT_STEP * r for p in ports for r in range(replicas)}
        others_free = all(port_is_free(p) and reserve_port(p) for p in spread[1:])
        if spread[-1] <= 65535 and not taken & set(spread) and others_free:
            ports.append(port)
    return ports


def mesh_env(
    data_dir: Path, db_urls: Mapping[str, str] | None = None, *, replicas: int = 1, **extra: str
) -> dict[str, str]:
    """This process's environment without any PAYMESH_ or service setting, then loopback ports of its own
    for the nats-server and every service (its gRPC and its metrics port), `data_dir`, the services' `db_urls`
    (by name) and `extra`.

    With `replicas`, every replica's port (the Mesh's: the first's + 100·(r−1)) is free too."""
    prefixes = tuple(f"{s.env_prefix}_" for s in SPECS) + ("PAYMESH_",)
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    count = 2 * len(SPECS)  # a gRPC and a metrics port each
    if replicas == 1:
        nats_port, *service_ports = unique_ports(count + 1)
    else:
        nats_port, service_ports = free_port(), replica_ports(count, replicas)
    env["PAYMESH_DATA_DIR"] = str(data_dir)
    env["PAYMESH_NATS_PORT"] = str(nats_port)
    grpc_ports, metrics_ports = service_ports[:len(SPECS)], service_ports[len(SPECS):]
    for service, port, metrics in zip(SPECS, grpc_ports, metrics_ports, strict=True):
        env[f"{service.env_prefix}_GRPC_ADDR"] = f"127.0.0.1:{port}"
        env[f"{service.env_prefix}_METRICS_ADDR"] = f"127.0.0.1:{metrics}"
    for name, url in (db_urls or {}).items():
        env[f"{spec(name).env_prefix}_DB_URL"] = url
    env.update(extra)
    return env
