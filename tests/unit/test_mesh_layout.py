"""Where `paymesh up --replicas/--postgres` puts things: replica addresses, gRPC targets, database URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from paymesh.ops.addresses import bind_host, dial_addr, grpc_target, join_host_port, replica_addr, split_addr
from paymesh.ops.databases import DatabaseSetupError, admin_dsn, database_name, service_url, shown
from paymesh.ops.launcher import LaunchError, Mesh, check_service_ports, replica_name
from paymesh.ops.ports import replica_ports


def test_replica_r_listens_on_the_first_port_plus_100_per_replica() -> None:
    assert replica_addr("127.0.0.1:50051", 1) == "127.0.0.1:50051"
    assert replica_addr("127.0.0.1:50051", 2) == "127.0.0.1:50151"
    assert replica_addr("[::1]:50051", 3) == "[::1]:50251"
    assert [replica_name("order_svc", r) for r in (1, 2)] == ["order_svc", "order_svc#2"]


def test_a_target_names_every_ipv4_replica_else_the_first() -> None:
    assert grpc_target(["127.0.0.1:1"]) == "127.0.0.1:1"
    assert grpc_target(["127.0.0.1:1", "127.0.0.1:2"]) == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert grpc_target(["localhost:1", "localhost:2"]) == "localhost:1"


def test_a_target_names_every_ipv6_replica_in_brackets_and_mixed_families_take_the_first() -> None:
    assert grpc_target(["[::1]:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"
    assert grpc_target(["[::1]:1", "127.0.0.1:2"]) == "[::1]:1"


def test_addresses_split_and_join_with_ipv6_in_brackets() -> None:
    assert split_addr("127.0.0.1:50051") == ("127.0.0.1", 50051)
    assert split_addr("[::1]:50051") == ("::1", 50051)
    assert split_addr("[::]:50051") == ("::", 50051)
    assert split_addr(":50051") == ("", 50051)
    assert join_host_port("::1", 50051) == "[::1]:50051"
    assert join_host_port("localhost", 50051) == "localhost:50051"
    for bad in ("50051", "localhost", "[::1]", "host:port"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            split_addr(bad)


def test_a_wildcard_host_is_dialled_on_the_loopback_of_its_family() -> None:
    assert dial_addr("0.0.0.0:50051") == "127.0.0.1:50051"
    assert dial_addr(":50051") == "127.0.0.1:50051"
    assert dial_addr("[::]:50051") == "[::1]:50051"
    assert dial_addr("::1:50051") == "[::1]:50051"  # an unbracketed IPv6 host comes back bracketed
    assert dial_addr("[::1]:50051") == "[::1]:50051"
    assert dial_addr("[fd00::7]:50051") == "[fd00::7]:50051"
    assert dial_addr("order-svc:50051") == "order-svc:50051"
    # Probing whether a wildcard port is free means every interface, whatever the family.
    assert [bind_host(h) for h in ("", "0.0.0.0", "::", "127.0.0.1")] == ["0.0.0.0"] * 3 + ["127.0.0.1"]


def test_the_mesh_and_the_health_probe_dial_an_ipv6_wildcard_alike(tmp_path: Path) -> None:
    from paymesh.ops import healthcheck

    mesh = Mesh({"ORDER_SVC_GRPC_ADDR": "[::]:41051"}, tmp_path, replicas=2, out=lambda _: None)
    assert mesh.addrs("order_svc") == ["[::1]:41051", "[::1]:41151"]
    assert mesh.target("order_svc") == "ipv6:[::1]:41051,[::1]:41151"
    assert replica_addr("[::]:41051", 2) == "[::]:41151"
    assert healthcheck.dial_addr is dial_addr


def test_replica_ports_colliding_with_another_service_are_named() -> None:
    # Ports the check finds free (it probes them before it compares): fixed ones could be anyone's.
    (order_port,) = replica_ports(1, 2)
    second = order_port + 100
    env = {"ORDER_SVC_GRPC_ADDR": f"127.0.0.1:{order_port}", "INVENTORY_SVC_GRPC_ADDR": f"127.0.0.1:{second}"}
    with pytest.raises(LaunchError, match=rf"inventory_svc and order_svc#2 are both set to port {second}"):
        check_service_ports(env, ["order_svc", "inventory_svc"], {"order_svc": 2, "inventory_svc": 1})


def test_each_replica_gets_its_own_address_and_payment_dials_every_gateway(tmp_path: Path) -> None:
    env = {"PAYMENT_SVC_GRPC_ADDR": "127.0.0.1:41053", "GATEWAY_MOCK_GRPC_ADDR": "127.0.0.1:41054"}
    mesh = Mesh(env, tmp_path, replicas=2, out=lambda _: None)
    second = mesh.replica_env("payment_svc", 2)
    assert second["PAYMENT_SVC_GRPC_ADDR"] == "127.0.0.1:41153"
    assert second["PAYMENT_SVC_GATEWAY_ADDR"] == "ipv4:127.0.0.1:41154,127.0.0.1:41054"
    assert mesh.replica_env("payment_svc", 1)["PAYMENT_SVC_GATEWAY_ADDR"] == "ipv4:127.0.0.1:41054,127.0.0.1:41154"
    assert mesh.addrs("payment_svc") == ["127.0.0.1:41053", "127.0.0.1:41153"]
    assert "PAYMENT_SVC_GATEWAY_ADDR" not in Mesh(env, tmp_path, out=lambda _: None).replica_env("payment_svc", 1)


def test_replicas_on_one_sqlite_file_wait_for_its_lock_off_the_event_loop(tmp_path: Path) -> None:
    env = {"PAYMESH_DATA_DIR": str(tmp_path)}
    mesh = Mesh(env, tmp_path, replicas={"order_svc": 2, "payment_svc": 1}, out=lambda _: None)
    assert mesh.replica_env("order_svc", 2)["ORDER_SVC_DB_URL"] == f"sqlite+aiosqlite:///{tmp_path}/order_svc.db"
    assert mesh.replica_env("payment_svc", 1)["PAYMENT_SVC_DB_URL"] == f"sqlite+inloop:///{tmp_path}/payment_svc.db"


def test_service_databases_sit_on_the_given_server() -> None:
    server = "postgresql://app:s3cret@db.internal:6432/postgres?sslmode=require"
    url = service_url(server, database_name("order_svc"))
    assert url == "postgresql+asyncpg://app:s3cret@db.internal:6432/paymesh_order_svc?sslmode=require"
    assert admin_dsn("postgresql+asyncpg://app@h/postgres") == "postgresql://app@h/postgres"
    assert "s3cret" not in shown(url)
    with pytest.raises(DatabaseSetupError):
        database_name("order_svc", prefix='x"; DROP')
