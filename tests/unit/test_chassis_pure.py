"""Pure parts of the chassis: settings, error mapping, event envelope, backoff."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest
from google.rpc import error_details_pb2

from payment_svc.service import PaymentSettings
from paymesh.chassis.backoff import Backoff
from paymesh.chassis.config import ConfigError, Settings, db_url, event_loop
from paymesh.chassis.db import DatabaseConfigError, create_engine
from paymesh.chassis.errors import AlreadyExists, invalid_argument, to_status
from paymesh.chassis.events import OutboundEvent, UndecodableEvent, child_traceparent, decode, message_types
from paymesh.chassis.schema_steps import LEGACY_MERCHANT_ID
from paymesh.ops.services import spec
from paymesh.order.v1 import events_pb2
from tests.keys import PLATFORM_KEY


def test_settings_defaults() -> None:
    s = Settings.from_env(spec("payment_svc"), {})
    assert s.grpc_addr == "127.0.0.1:50053"
    assert s.db_url == "sqlite+inloop:///.paymesh/payment_svc.db"
    assert s.nats_urls == ["nats://127.0.0.1:4222"]
    assert s.stream == "PAYMENT"
    key = {"PAYMENT_SVC_GATEWAY_API_KEY": PLATFORM_KEY}
    assert PaymentSettings.from_env(key).gateway_addr == "127.0.0.1:50054"
    assert PaymentSettings.from_env({**key, "GATEWAY_MOCK_GRPC_ADDR": "127.0.0.1:7"}).gateway_addr == "127.0.0.1:7"
    assert PaymentSettings.from_env({**key, "PAYMENT_SVC_GATEWAY_ADDR": "gw:1"}).gateway_addr == "gw:1"
    assert s.saga_timeout_s == 30.0


def test_settings_from_environment() -> None:
    env = {
        "PAYMESH_NATS_URL": "nats://a:1, nats://b:2",
        "ORDER_SVC_GRPC_ADDR": "127.0.0.1:6000",
        "ORDER_SVC_DB_URL": "postgresql+asyncpg://postgres@127.0.0.1/orders",
        "PAYMESH_SAGA_TIMEOUT_S": "2.5",
        "PAYMESH_DATA_DIR": "/var/paymesh",
    }
    s = Settings.from_env(spec("order_svc"), env)
    assert s.nats_urls == ["nats://a:1", "nats://b:2"]
    assert (s.grpc_addr, s.db_url, s.saga_timeout_s) == ("127.0.0.1:6000", env["ORDER_SVC_DB_URL"], 2.5)
    assert Settings.from_env(spec("inventory_svc"), {"PAYMESH_DATA_DIR": "/d"}).db_url == "sqlite+inloop:////d/inventory_svc.db"


def test_replicas_sharing_a_sqlite_file_get_aiosqlite_and_an_explicit_url_is_kept() -> None:
    assert db_url(spec("order_svc"), {"PAYMESH_DATA_DIR": "/d"}, shared=True) == "sqlite+aiosqlite:////d/order_svc.db"
    explicit = {"ORDER_SVC_DB_URL": "sqlite+inloop:////x/o.db"}
    assert db_url(spec("order_svc"), explicit, shared=True) == "sqlite+inloop:////x/o.db"


def test_event_loop_defaults_to_uvloop_and_refuses_unknown_names() -> None:
    assert event_loop({}) == "uvloop"
    assert event_loop({"PAYMESH_EVENT_LOOP": "asyncio"}) == "asyncio"
    with pytest.raises(ConfigError, match="PAYMESH_EVENT_LOOP='tokio': use one of uvloop, asyncio"):
        event_loop({"PAYMESH_EVENT_LOOP": "tokio"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PAYMESH_SAGA_TIMEOUT_S", "soon", "PAYMESH_SAGA_TIMEOUT_S='soon' is not a number"),
        ("PAYMESH_SAGA_TIMEOUT_S", "0", "must be greater than 0"),
        ("PAYMESH_STREAM_REPLICAS", "3.5", "is not an integer"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(spec("order_svc"), {name: value})


def test_unknown_database_driver_is_refused() -> None:
    expected = "use one of sqlite\\+aiosqlite, sqlite\\+inloop, postgresql\\+asyncpg"
    with pytest.raises(DatabaseConfigError, match=expected):
        create_engine("mysql://root@localhost/x")


def test_rich_status_carries_error_info_and_field_violations() -> None:
    err = invalid_argument([("items[0].quantity", "must be greater than 0")])
    status = to_status(err)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "invalid request: items[0].quantity: must be greater than 0"
    (key, value), = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    from google.rpc import status_pb2

    rich = status_pb2.Status.FromString(value)
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert rich.details[0].Unpack(info) and rich.details[1].Unpack(bad)
    assert info.domain == "paymesh.dev" and info.reason == "INVALID_ARGUMENT"
    assert [(v.field, v.description) for v in bad.field_violations] == [("items[0].quantity", "must be greater than 0")]


def test_error_metadata_values_are_strings() -> None:
    err = AlreadyExists("request_id reused", reason="REQUEST_ID_REUSED", metadata={"request_id": "r", "n": 3})
    assert err.metadata == {"request_id": "r", "n": "3"}
    assert to_status(err).code == grpc.StatusCode.ALREADY_EXISTS


def raw(data: bytes, headers: dict[str, str] | None, subject: str = "order.placed.o1") -> SimpleNamespace:
    return SimpleNamespace(subject=subject, data=data, headers=headers, metadata=SimpleNamespace(num_delivered=1))


TYPES = message_types(events_pb2.OrderPlaced)


def test_event_round_trip_keeps_id_type_merchant_and_trace() -> None:
    placed = events_pb2.OrderPlaced(event_id="e1", order_id="o1", amount_minor=5, merchant_id="mer_a")
    event = OutboundEvent.of("order.placed.o1", placed)
    assert event.nats_headers()["Paymesh-Merchant"] == "mer_a"
    inbound = decode(raw(event.payload, event.nats_headers()), TYPES)
    assert (inbound.event_id, inbound.type, inbound.order_id) == ("e1", "paymesh.order.v1.OrderPlaced", "o1")
    assert (inbound.message.amount_minor, inbound.merchant_id) == (5, "mer_a")
    assert inbound.traceparent == event.headers["traceparent"]


def test_an_event_names_its_merchant_and_the_header_must_agree() -> None:
    with pytest.raises(ValueError, match="has no merchant_id"):
        OutboundEvent.of("order.placed.o1", events_pb2.OrderPlaced(event_id="e1", order_id="o1"))
    placed = events_pb2.OrderPlaced(event_id="e1", order_id="o1", merchant_id="mer_a")
    event = OutboundEvent.of("order.placed.o1", placed)
    forged = {**event.nats_headers(), "Paymesh-Merchant": "mer_b"}
    with pytest.raises(UndecodableEvent, match="'mer_b' differs from its payload's merchant_id 'mer_a'"):
        decode(raw(event.payload, forged), TYPES)
    # Published by a release before merchants: no header, no field; its rows went to the legacy merchant.
    old = events_pb2.OrderPlaced(event_id="e0", order_id="o0").SerializeToString()
    inbound = decode(raw(old, {"Paymesh-Type": "paymesh.order.v1.OrderPlaced"}, "order.placed.o0"), TYPES)
    assert inbound.merchant_id == LEGACY_MERCHANT_ID


def test_the_payload_event_id_wins_over_a_new_msg_id() -> None:
    event = OutboundEvent.of("order.placed.o1", events_pb2.OrderPlaced(event_id="e1", order_id="o1", merchant_id="m"))
    headers = {**event.nats_headers(), "Nats-Msg-Id": "republished"}
    assert decode(raw(event.payload, headers), TYPES).event_id == "e1"


@pytest.mark.parametrize(
    ("data", "headers", "message"),
    [
        (b"x", None, "no Paymesh-Type header"),
        (b"x", {"Paymesh-Type": "paymesh.order.v1.Nope"}, "unknown event type"),
        (b"\xff\xff\xff", {"Paymesh-Type": "paymesh.order.v1.OrderPlaced"}, "is not a paymesh.order.v1.OrderPlaced"),
        (b"", {"Paymesh-Type": "paymesh.order.v1.OrderPlaced"}, "has no event id"),
    ],
)
def test_undecodable_messages_are_named(data: bytes, headers: dict[str, str] | None, message: str) -> None:
    with pytest.raises(UndecodableEvent, match=message):
        decode(raw(data, headers), TYPES)


def test_an_event_without_id_cannot_be_published() -> None:
    with pytest.raises(ValueError, match="has no event_id"):
        OutboundEvent.of("order.placed.o1", events_pb2.OrderPlaced(order_id="o1"))


def test_child_traceparent_keeps_the_trace() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    child = child_traceparent(parent)
    assert child.split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert child.split("-")[2] != "b7ad6b7169203331"
    assert len(child_traceparent("garbage").split("-")[1]) == 32


def test_backoff_grows_with_equal_jitter_and_caps() -> None:
    b = Backoff(base_s=0.5, cap_s=4.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 4.0)]:
        for _ in range(50):
            assert ceiling / 2 <= b.delay(attempt) <= ceiling


def test_backoff_jitter_spans_the_upper_half_of_the_ceiling() -> None:
    """Equal jitter, as its docstring says: the draw is uniform over [ceiling/2, ceiling]."""
    b = Backoff(base_s=1.0, cap_s=8.0)
    assert b.delay(3, uniform=lambda lo, hi: lo) == 2.0
    assert b.delay(3, uniform=lambda lo, hi: hi) == 4.0
    assert b.delay(9, uniform=lambda lo, hi: hi) == 8.0


def test_split_page_hands_the_last_row_only_when_another_page_follows() -> None:
    from paymesh.chassis.validation import page_limit, split_page

    assert page_limit(3) == 4
    assert split_page([1, 2, 3, 4], 3) == ([1, 2, 3], 3)  # the fourth row says a page follows
    assert split_page([1, 2, 3], 3) == ([1, 2, 3], None)
    assert split_page([], 3) == ([], None)


async def test_a_jetstream_request_that_times_out_is_asked_again_until_its_deadline() -> None:
    import nats.errors

    from paymesh.chassis.jetstream import ask_until_answered

    answers: list[object] = [nats.errors.TimeoutError(), nats.errors.TimeoutError(), "created"]

    async def request() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    assert await ask_until_answered(request, "consumer d", timeout=10) == "created"
    assert answers == []

    async def never() -> str:
        raise nats.errors.TimeoutError()

    with pytest.raises(nats.errors.TimeoutError):
        await ask_until_answered(never, "consumer d", timeout=0.3)
