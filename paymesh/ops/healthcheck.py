"""`python -m paymesh.ops.healthcheck ADDR [SERVICE]`: exit 0 when ADDR's gRPC health says SERVING, else 1.

The container health probe (docker-compose.yml), so the image needs no grpcurl. It asks
`grpc.health.v1.Health/Check` for SERVICE (default "": the whole server), gives up after
2 s, and prints one line saying what it saw. Any answer but SERVING (NOT_SERVING,
UNKNOWN, SERVICE_UNKNOWN, nothing listening, a timeout, bad arguments) exits 1: Docker
reads 0 as healthy and 1 as unhealthy, and reserves every other code.

A wildcard host (`0.0.0.0:50051`, `[::]:50051`, `:50051`, what a service binds inside a
container) is dialled on loopback (`[::]` on `[::1]`), so the probe can take a service's `*_GRPC_ADDR` as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paymesh.ops.addresses import dial_addr

TIMEOUT_S = 2.0
USAGE = "usage: python -m paymesh.ops.healthcheck ADDR [SERVICE]   (e.g. 127.0.0.1:50051 paymesh.order.v1.OrderService)"

def check(addr: str, service: str = "", timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """(serving, what was seen) for one Health/Check of `service` at `addr`."""
    target = dial_addr(addr)
    # The probe only dials its own container: never through an http_proxy from the environment.
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(target, options=options) as channel:
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
    except ValueError as exc:
        print(f"{exc}\n{USAGE}", file=sys.stderr)
        return 1
    print(seen, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    raise SystemExit(main())
