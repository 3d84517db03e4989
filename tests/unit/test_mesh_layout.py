"""Where `paymesh up --replicas/--postgres` puts things: replica addresses, gRPC targets, database URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from paymesh.ops.databases import DatabaseSetupError, admin_dsn, database_name, service_url, shown
from paymesh.ops.launcher import LaunchError, Mesh, check_service_ports, grpc_target, replica_addr, replica_name


def test_replica_r_listens_on_the_first_port_plus_100_per_replica() -> None:
    assert replica_addr("127.0.0.1:50051", 1) == "127.0.0.1:50051"
    assert replica_addr("127.0.0.1:50051", 2) == "127.0.0.1:50151"
    assert replica_addr("[::1]:50051", 3) == "[::1]:50251"
    assert [replica_name("order_svc", r) for r in (1, 2)] == ["order_svc", "order_svc#2"]


def test_a_target_names_every_ipv4_replica_else_the_first() -> None:
    assert grpc_target(["127.0.0.1:1"]) == "127.0.0.1:1"
    assert grpc_target(["127.0.0.1:1", "127.0.0.1:2"]) == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert grpc_target(["localhost:1", "localhost:2"]) == "localhost:1"


def test_replica_ports_colliding_with_another_service_are_named() -> None:
    env = {"ORDER_SVC_GRPC_ADDR": "127.0.0.1:40000", "INVENTORY_SVC_GRPC_ADDR": "127.0.0.1:40100"}
    with pytest.raises(LaunchError, match=r"inventory_svc and order_svc#2 are both set to port 40100"):
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
