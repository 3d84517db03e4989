"""Service addresses: `host:port` split and joined, wildcard hosts dialled on loopback, replica ports, gRPC targets.

The one place that knows that `[::]:50051` is where a service listens on every interface and `[::1]:50051`
where a client on the same machine reaches it; the launcher, the health probe and the mesh client all
ask here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

# Replica r of a service listens on its address's port + 100·(r−1): 50051, 50151, … as in docker-compose.
REPLICA_PORT_STEP = 100
# Hosts that mean "every interface" to a server: "" (`:50051`), IPv4's 0.0.0.0 and IPv6's :: (`[::]:50051`).
IPV4_WILDCARDS = frozenset({"", "0.0.0.0"})
IPV6_WILDCARDS = frozenset({"::"})


def split_addr(addr: str) -> tuple[str, int]:
    """(host, port) of `host:port`, `[v6]:port` or `:port`; the host without brackets. ValueError otherwise."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{addr!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


def join_host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets (`[::1]:50051`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_host(host: str) -> str:
    """The host to probe a port on (port_is_free speaks IPv4): a wildcard address means every interface."""
    return "0.0.0.0" if host in IPV4_WILDCARDS | IPV6_WILDCARDS else host


def dial_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`: a wildcard is loopback of its family."""
    if host in IPV4_WILDCARDS:
        return "127.0.0.1"
    if host in IPV6_WILDCARDS:
        return "::1"
    return host


def dial_addr(addr: str) -> str:
    """Where a client reaches a service listening on `addr`: `0.0.0.0:1` -> `127.0.0.1:1`, `[::]:1` -> `[::1]:1`."""
    host, port = split_addr(addr)
    return join_host_port(dial_host(host), port)


def replica_addr(addr: str, replica: int) -> str:
    """The address replica `replica` listens on, given the first replica's."""
    if replica == 1:
        return addr
    host, port = split_addr(addr)
    return join_host_port(host, port + REPLICA_PORT_STEP * (replica - 1))


def grpc_target(addrs: Sequence[str]) -> str:
    """One gRPC target naming every address (`ipv4:a,b`, `ipv6:[a],[b]`): the channel picks the first that
    answers and fails over to the next. A single address, host names or mixed families stay a plain
    `host:port` (the first)."""
    if len(addrs) == 1:
        return addrs[0]
    try:
        families = {type(ipaddress.ip_address(split_addr(a)[0])) for a in addrs}
    except ValueError:
        return addrs[0]
    if families == {ipaddress.IPv4Address}:
        return "ipv4:" + ",".join(addrs)
    if families == {ipaddress.IPv6Address}:
        return "ipv6:" + ",".join(join_host_port(*split_addr(a)) for a in addrs)
    return addrs[0]
