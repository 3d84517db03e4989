"""`python -m paymesh.ops.healthcheck ADDR [SERVICE]`: exit 0 when ADDR's gRPC health says SERVING, else 1.

The container health probe (docker-compose.yml), so the image needs no grpcurl. It asks
`grpc.health.v1.Health/Check` for SERVICE (default "": the whole server), gives up after
2 s, and prints one line saying what it saw. Any answer but SERVING (NOT_SERVING,
UNKNOWN, SERVICE_UNKNOWN, nothing listening, a timeout, bad arguments) exits 1: Docker
reads 0 as healthy and 1 as unhealthy, and reserves every other code.

A wildcard host (`0.0.0.0:50051`, `[::]:50051`, `:50051`, what a service binds inside a
container) is dialled on loopback (`[::]` on `[::1]`), so the probe can take a service's `*_GRPC_ADDR` as it is.
With PAYMESH_TLS_CA set it dials TLS, verified against that CA; under mTLS it shows PAYMESH_TLS_CLIENT_CERT, else
the certificate of the container's service (the one `<SVC>_TLS_CERT` in its environment).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paymesh.chassis.config import ConfigError
from paymesh.chassis.tls import ClientTls, blocking_channel
from paymesh.ops.addresses import dial_addr

TIMEOUT_S = 2.0
USAGE = "usage: python -m paymesh.ops.healthcheck ADDR [SERVICE]   (e.g. 127.0.0.1:50051 paymesh.order.v1.OrderService)"

def own_prefix(env: Mapping[str, str]) -> str | None:
    """The service whose certificate the environment holds, when it holds exactly one (`ORDER_SVC`)."""
    prefixes = [name.removesuffix("_TLS_CERT") for name in env if name.endswith("_TLS_CERT")]
    return prefixes[0] if len(prefixes) == 1 else None


def check(addr: str, service: str = "", timeout: float = TIMEOUT_S,
          env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """(serving, what was seen) for one Health/Check of `service` at `addr`; TLS as `env` says (ConfigError if
    its files cannot be read)."""
    env = os.environ if env is None else env
    target = dial_addr(addr)
    tls = ClientTls.from_env(env, own_prefix(env))
    # The probe only dials its own container: never through an http_proxy from the environment.
    options = [("grpc.enable_http_proxy", 0)]
    with blocking_channel(target, tls, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            name = code.name if code is not None else "ERROR"
            return False, f"{target} {service or '(server)'}: {name}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target} {service or '(server)'}: {status}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2 or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 1
    addr, service = args[0], (args[1] if len(args) == 2 else "")
    try:
        serving, seen = check(addr, service)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"{exc}\n{USAGE}", file=sys.stderr)
        return 1
    print(seen, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    raise SystemExit(main())
