"""The operator commands' pure parts: durations, scopes named by a person, merchant records, finding the mesh's NATS."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from paymesh.chassis.auth import MERCHANT_SCOPES, Scope
from paymesh.chassis.auth.merchants import Merchant, checked_name, new_merchant_id
from paymesh.chassis.errors import InvalidArgument
from paymesh.ops.keys import OperatorError, merchant_scopes, named_id, parse_duration
from paymesh.ops.mesh_nats import MeshNotFound, NatsAddress, find_nats
from paymesh.ops.natsserver import NatsServer


@pytest.mark.parametrize(("text", "expected"), [
    ("30d", timedelta(days=30)), ("24h", timedelta(hours=24)), ("90m", timedelta(minutes=90)),
    ("45s", timedelta(seconds=45)), (" 0s ", timedelta(0)),
])
def test_a_duration_is_a_whole_number_and_one_unit(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "1.5h", "-1h", "1h30m", "3w", "30 days", "99999999999999d"])
def test_anything_else_is_refused_saying_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="duration|longer than"):
        parse_duration(text)


def test_scopes_named_repeated_or_comma_separated_and_none_means_every_merchant_scope() -> None:
    assert merchant_scopes([]) == MERCHANT_SCOPES
    assert merchant_scopes(["orders:read", "catalog:read,payments:read"]) == {
        Scope.ORDERS_READ, Scope.CATALOG_READ, Scope.PAYMENTS_READ}
    with pytest.raises(OperatorError, match="unknown scope orders:delete: use one of orders:read"):
        merchant_scopes(["orders:delete"])
    with pytest.raises(OperatorError, match="never a merchant's"):
        merchant_scopes(["operator"])


def test_an_id_on_the_command_line_is_never_a_secret_echoed_back() -> None:
    assert named_id("KEY_ID", "key_abc") == "key_abc"
    secret = "sk_mesh_" + "A" * 43
    with pytest.raises(OperatorError) as refused:
        named_id("KEY_ID", secret)
    assert secret not in str(refused.value)
    with pytest.raises(OperatorError, match="not an id"):
        named_id("--merchant", "mer 1")


def test_a_merchant_record_reads_back_and_ignores_fields_it_does_not_know() -> None:
    merchant = Merchant(new_merchant_id(), "Acme", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert merchant.merchant_id.startswith("mer_") and len(merchant.merchant_id) == 4 + 16
    raw = json.loads(merchant.to_json())
    assert set(raw) == {"merchant_id", "name", "created_at"}
    assert Merchant.from_json(json.dumps(raw | {"future": 1}).encode()) == merchant
    assert checked_name("  Acme Ltd ") == "Acme Ltd"
    for bad in ("", "   ", "a\nb", "x" * 201):
        with pytest.raises(InvalidArgument):
            checked_name(bad)


def test_the_mesh_is_the_flag_else_the_environment_else_what_paymesh_up_left_in_the_data_dir(tmp_path: Path) -> None:
    with pytest.raises(MeshNotFound, match="no mesh found"):
        find_nats(None, {}, tmp_path)
    conf = tmp_path / "nats" / "nats-server.conf"
    conf.parent.mkdir()
    conf.write_text(NatsServer(conf.parent, port=4333).config_text())  # what `paymesh up`'s nats-server writes
    assert find_nats(None, {}, tmp_path).servers == ["nats://127.0.0.1:4333"]
    env = {"PAYMESH_NATS_URL": "nats://a:1, nats://b:2", "PAYMESH_STREAM_REPLICAS": "3"}
    assert find_nats(None, env, tmp_path) == NatsAddress(["nats://a:1", "nats://b:2"], "PAYMESH_NATS_URL", 3)
    assert find_nats("nats://c:3", env, tmp_path).servers == ["nats://c:3"]


def test_a_cluster_of_paymesh_up_is_found_with_every_node_and_r3(tmp_path: Path) -> None:
    for i, port in enumerate((5001, 5002, 5003), start=1):
        node = tmp_path / "nats-cluster" / f"n{i}"
        node.mkdir(parents=True)
        (node / "nats-server.conf").write_text(NatsServer(node, port=port).config_text())
    found = find_nats(None, {}, tmp_path)
    assert found.servers == ["nats://127.0.0.1:5001", "nats://127.0.0.1:5002", "nats://127.0.0.1:5003"]
    assert found.replicas == 3


def test_a_password_in_a_nats_url_is_masked_when_shown() -> None:
    shown = NatsAddress(["nats://ops:hunter2@10.0.0.1:4222", "nats://10.0.0.2:4222"], "PAYMESH_NATS_URL").shown()
    assert "hunter2" not in shown and "ops" not in shown
    assert shown == "nats://***@10.0.0.1:4222, nats://10.0.0.2:4222"
