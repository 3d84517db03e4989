"""TLS on a service as ServiceHost runs it: TLS only, verified clients, mTLS and who called, a rotated certificate
served without a restart, and start-up refused with the variable named; real NATS, SQLite, certificates made by
paymesh.ops.tls."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paymesh.chassis.auth.bearer import key_metadata
from paymesh.chassis.config import ConfigError
from paymesh.chassis.service import ServiceHost
from paymesh.chassis.tls import ClientTls, channel
from paymesh.ops.addresses import split_addr
from paymesh.ops.healthcheck import check
from paymesh.ops.natsserver import NatsServer
from paymesh.ops.tls import CertPair, MeshTls, ensure_mesh_tls, issue, read_pair, san_names, service_hosts
from paymesh.order.v1 import order_service_pb2, order_service_pb2_grpc
from tests.integration.chassis_harness import make_host, settings_for
from tests.keys import MERCHANT_A
from tests.keys import issue as issue_key
from tests.probes import health

pytestmark = [pytest.mark.timeout(60), pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def certificates(where: Path) -> MeshTls:
    return ensure_mesh_tls(where, {"order_svc": "127.0.0.1", "payment_svc": "127.0.0.1"})


def tls_env(certs: MeshTls, *, mutual: bool = False) -> dict[str, str]:
    pair = certs.services["order_svc"]
    env = {"ORDER_SVC_TLS_CERT": str(pair.cert), "ORDER_SVC_TLS_KEY": str(pair.key), "PAYMESH_TLS_CA": str(certs.ca)}
    return env | ({"PAYMESH_TLS_CLIENT_AUTH": "require"} if mutual else {})


def client(ca: Path, pair: CertPair | None = None) -> ClientTls:
    mtls = None if pair is None else (("CERT", pair.cert), ("KEY", pair.key))
    return ClientTls.load(ca, *(mtls or ()))


@contextlib.asynccontextmanager
async def served(nats: NatsServer, db_url: str, tmp_path: Path, env: dict[str, str]) -> AsyncIterator[ServiceHost]:
    host = make_host(settings_for(nats, db_url, tmp_path, **env))
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


def served_serial(addr: str, ca: Path) -> int:
    """The serial of the certificate a new TLS connection to `addr` is shown (read with the ssl module)."""
    host, port = split_addr(addr)
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, port), timeout=5) as raw, context.wrap_socket(raw, server_hostname=host) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def file_serial(pair: CertPair) -> int:
    return x509.load_pem_x509_certificate(pair.cert.read_bytes()).serial_number


def reissued(certs: MeshTls, where: Path) -> CertPair:
    """A new certificate and key for order_svc from the same CA, written beside the served ones (not over them)."""
    ca = read_pair(CertPair(certs.ca, certs.ca.with_name("ca.key")))
    assert ca is not None
    where.mkdir(exist_ok=True)
    pair = CertPair(where / "order_svc.pem", where / "order_svc.key")
    issue(pair, "order_svc", san_names(service_hosts("order_svc", "127.0.0.1")), True, *ca)
    return pair


async def test_a_tls_service_answers_a_client_that_trusts_its_ca_and_refuses_plaintext_and_another_ca(
    nats_server: NatsServer, db_url: str, tmp_path: Path
) -> None:
    certs, other = certificates(tmp_path / "pki"), certificates(tmp_path / "other-pki")
    _, key = await issue_key(nats_server.url, MERCHANT_A)
    async with served(nats_server, db_url, tmp_path, tls_env(certs)) as host:
        addr = host.runtime.settings.grpc_addr
        assert await health(addr, client(certs.ca)) == "SERVING"
        # A keyed call over TLS: the bearer key still admits it (NOT_FOUND comes from the handler).
        async with channel(addr, client(certs.ca)) as tls:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await order_service_pb2_grpc.OrderServiceStub(tls).GetOrder(
                    order_service_pb2.GetOrderRequest(order_id="o-none"), metadata=key_metadata(key), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert await health(addr, None) == "UNAVAILABLE", "a plaintext client is refused"
        assert await health(addr, client(other.ca)) == "UNAVAILABLE", "a client trusting another CA is refused"
        # The container probe dials TLS when PAYMESH_TLS_CA is set.
        assert (await asyncio.to_thread(check, addr, "", 5.0, {"PAYMESH_TLS_CA": str(certs.ca)}))[0]
        assert not (await asyncio.to_thread(check, addr, "", 5.0, {}))[0]


async def test_under_mtls_a_client_without_a_certificate_is_refused_and_the_service_knows_who_called(
    nats_server: NatsServer, db_url: str, tmp_path: Path
) -> None:
    certs, other = certificates(tmp_path / "pki"), certificates(tmp_path / "other-pki")
    _, key = await issue_key(nats_server.url, MERCHANT_A)
    async with served(nats_server, db_url, tmp_path, tls_env(certs, mutual=True)) as host:
        addr = host.runtime.settings.grpc_addr
        assert await health(addr, client(certs.ca)) == "UNAVAILABLE", "no client certificate: refused"
        assert await health(addr, client(certs.ca, other.tools)) == "UNAVAILABLE", "another CA's certificate: refused"
        assert await health(addr, None) == "UNAVAILABLE"
        for pair in (certs.tools, certs.services["payment_svc"]):
            async with channel(addr, client(certs.ca, pair)) as mtls:
                await order_service_pb2_grpc.OrderServiceStub(mtls).CreateOrder(
                    order_service_pb2.CreateOrderRequest(items=[{"sku": "x"}]), metadata=key_metadata(key), timeout=5)
        assert host.wiring.services[0].servicer.peers == ["paymesh-tools", "payment_svc"]
        # The probe inside a service's container shows that service's certificate.
        probe_env = tls_env(certs, mutual=True)
        assert (await asyncio.to_thread(check, addr, "", 5.0, probe_env))[0]


async def test_a_rotated_certificate_is_served_on_new_connections_without_a_restart(
    nats_server: NatsServer, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    certs = certificates(tmp_path / "pki")
    served_pair = certs.services["order_svc"]
    async with served(nats_server, db_url, tmp_path, tls_env(certs)) as host:
        addr, tls = host.runtime.settings.grpc_addr, client(certs.ca)
        first = await asyncio.to_thread(served_serial, addr, certs.ca)
        assert first == file_serial(served_pair)
        async with channel(addr, tls) as before:
            stub = health_pb2_grpc.HealthStub(before)
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)

            # Half a rotation (the new certificate, the old key): the old certificate is still served.
            new = reissued(certs, tmp_path / "next")
            os.replace(new.cert, served_pair.cert)
            assert await asyncio.to_thread(served_serial, addr, certs.ca) == first
            assert "keeping certificate serial" in caplog.text
            # The key lands: the next connection is shown the new certificate, by the same process.
            os.replace(new.key, served_pair.key)
            second = await asyncio.to_thread(served_serial, addr, certs.ca)
            assert second == file_serial(served_pair) != first
            assert await health(addr, tls) == "SERVING"
            # A connection made before the rotation goes on as it was.
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)

        # SIGHUP reads the files even when nothing about them looks changed (a coarse mtime).
        third = reissued(certs, tmp_path / "again")
        os.replace(third.key, served_pair.key)
        os.replace(third.cert, served_pair.cert)
        assert host.tls is not None
        host.tls._signature = host.tls.signature()  # as if the change had gone unseen
        assert await asyncio.to_thread(served_serial, addr, certs.ca) == second
        host.reload_tls()
        assert await asyncio.to_thread(served_serial, addr, certs.ca) == file_serial(served_pair) != second


def start_up_error(settings_env: dict[str, str], nats: NatsServer, db_url: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        make_host(settings_for(nats, db_url, tmp_path, **settings_env))
    return str(err.value)


async def test_a_missing_or_unreadable_tls_file_stops_start_up_naming_its_variable(
    nats_server: NatsServer, db_url: str, tmp_path: Path
) -> None:
    certs = certificates(tmp_path / "pki")
    env = tls_env(certs)
    missing = str(tmp_path / "nowhere.pem")
    cases: list[tuple[dict[str, Any], str]] = [
        ({**env, "ORDER_SVC_TLS_CERT": missing}, "ORDER_SVC_TLS_CERT"),
        ({**env, "ORDER_SVC_TLS_KEY": str(tmp_path)}, "ORDER_SVC_TLS_KEY"),  # a directory: unreadable as a file
        ({**env, "ORDER_SVC_TLS_KEY": str(certs.services["payment_svc"].key)}, "ORDER_SVC_TLS_KEY"),  # not its key
        ({**tls_env(certs, mutual=True), "PAYMESH_TLS_CA": missing}, "PAYMESH_TLS_CA"),
        ({**env, "ORDER_SVC_TLS_CERT": str(certs.ca.with_name("ca.key"))}, "ORDER_SVC_TLS_CERT"),  # not a cert
    ]
    for case, variable in cases:
        assert variable in start_up_error(case, nats_server, db_url, tmp_path), case
    with pytest.raises(ConfigError, match="ORDER_SVC_TLS_KEY"):
        settings_for(nats_server, db_url, tmp_path, ORDER_SVC_TLS_CERT=str(certs.services["order_svc"].cert))

    # As an operator sees it: the process ends at once, exit 2, the variable named.
    run_env = {**os.environ, **env, "ORDER_SVC_TLS_CERT": missing, "PAYMESH_NATS_URL": nats_server.url,
               "PAYMESH_DATA_DIR": str(tmp_path), "ORDER_SVC_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'o.db'}"}
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "order_svc"], env=run_env,
                                   capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert f"ORDER_SVC_TLS_CERT={missing}: cannot read it" in done.stderr
