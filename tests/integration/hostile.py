"""Hostile request bodies for any gRPC method, made from its input message's descriptor (hypothesis strategies):
random bytes, messages with boundary values and huge repeated fields, the same bytes mutated, unknown fields,
wrong wire types, invalid UTF-8, deep nesting, and page tokens that were altered, replayed or made by hand."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

F = FieldDescriptor
INT_RANGES = {
    **dict.fromkeys((F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32), (-(2**31), 2**31 - 1)),
    **dict.fromkeys((F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64), (-(2**63), 2**63 - 1)),
    **dict.fromkeys((F.TYPE_UINT32, F.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((F.TYPE_UINT64, F.TYPE_FIXED64), (0, 2**64 - 1)),
}
# Text a validator must not trip on: empty, control characters, limits and one past them, huge, other
# scripts, direction overrides, a card number, ids in the right shape, and what injections look like.
AWKWARD_TEXT = [
    "", " ", "\x00", "\t\r\n", "a" * 64, "a" * 65, "a" * 10_000, "é", "😀" * 50, "\u202e\u0000x", "ﬃ",
    "4242 4242 4242 4242", "ord_" + "0" * 32, "00000000-0000-0000-0000-000000000000", "../../etc/passwd",
    "' OR 1=1 --", "%s%n%x", "${jndi:ldap://x/a}", "*", ">", "a.b.c",
]
# Bytes that are not UTF-8: a lone continuation byte, a truncated pair, a surrogate, past U+10FFFF.
NOT_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xfe"]
HUGE_COUNTS = [1_000, 20_000]
MAX_BODY = 4 * 1024 * 1024  # grpc's default receive limit


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


def ints(kind: int) -> st.SearchStrategy[int]:
    lo, hi = INT_RANGES[kind]
    edges = [v for v in (lo, lo + 1, -1, 0, 1, hi - 1, hi) if lo <= v <= hi]
    return st.sampled_from(edges) | st.integers(lo, hi)


Texts = Callable[[FieldDescriptor], st.SearchStrategy[str]]


def plausible(seen: Mapping[str, Sequence[str]]) -> Texts:
    """A string field's plausible values: what the mesh has shown under the field's name (ids of what exists,
    a sku, a currency, a test card, in requests and answers alike), or a fresh UUID (a request id), or empty;
    so a good share of requests get past validation to the repositories and the state machines."""

    def texts(field: FieldDescriptor) -> st.SearchStrategy[str]:
        values = sorted(set(seen.get(field.name, ())))
        known = [st.sampled_from(values)] * 3 if values else []  # seen values three times as likely as the rest
        return st.one_of(*known, st.uuids().map(str), st.just(""))

    return texts


def scalar(field: FieldDescriptor, texts: Texts | None = None) -> st.SearchStrategy[Any]:
    """Boundary and random values of the field's type; with `texts`, plausible ones: its strings from `texts`,
    small numbers, known enum values."""
    if texts is not None and field.type in INT_RANGES:
        lo, hi = INT_RANGES[field.type]
        return st.integers(max(lo, -2), min(hi, 200))
    if texts is not None and field.type == F.TYPE_ENUM:
        assert field.enum_type is not None
        return st.sampled_from([v.number for v in field.enum_type.values])
    if field.type in INT_RANGES:
        return ints(field.type)
    if field.type == F.TYPE_STRING:
        return texts(field) if texts is not None else st.sampled_from(AWKWARD_TEXT) | st.text(max_size=70)
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_ENUM:
        assert field.enum_type is not None
        return st.sampled_from([v.number for v in field.enum_type.values]) | ints(F.TYPE_INT32)
    if field.type == F.TYPE_DOUBLE:
        return st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e308, float("nan"), float("inf")]) | st.floats()
    if field.type == F.TYPE_FLOAT:
        return st.floats(width=32)
    raise AssertionError(f"no strategy for field type {field.type} of {field.full_name}")


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


@st.composite
def message_of(
    draw: st.DrawFn, descriptor: Descriptor, depth: int = 0, texts: Texts | None = None
) -> Message:
    """A message of `descriptor` with some fields set to boundary or random values (plausible ones with
    `texts`, see `scalar`); a repeated field now and then holds thousands of entries."""
    msg = message_class(descriptor)()
    for field in descriptor.fields:
        # Plausible messages have most of their fields, as valid requests do; the others half of them.
        if not draw(st.booleans() if texts is None else st.integers(0, 7).map(bool)):
            continue
        target = getattr(msg, field.name)
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            key, value = sub.fields_by_name["key"], sub.fields_by_name["value"]
            if value.message_type is None:
                target.update(draw(st.dictionaries(scalar(key, texts), scalar(value, texts), max_size=3)))
        elif field.is_repeated:
            if sub is not None and depth >= 2:
                continue
            element = message_of(sub, depth + 1, texts) if sub is not None else scalar(field, texts)
            values = draw(st.lists(element, max_size=3))
            if values and texts is None and draw(st.integers(0, 7)) == 0:
                values = values * (draw(st.sampled_from(HUGE_COUNTS)) // len(values))
            if sub is not None:
                for value in values:
                    target.add().CopyFrom(value)
            else:
                target.extend(values)
        elif sub is not None:
            if depth < 2:
                target.CopyFrom(draw(message_of(sub, depth + 1, texts)))
        else:
            setattr(msg, field.name, draw(scalar(field, texts)))
    return msg


@st.composite
def mutated(draw: st.DrawFn, raw: bytes) -> bytes:
    """`raw` with one byte flipped, cut short, spliced or extended."""
    raw = raw or b"\x00"
    at = draw(st.integers(0, len(raw) - 1))
    match draw(st.sampled_from(["flip", "cut", "insert", "delete", "append"])):
        case "flip":
            return raw[:at] + bytes([raw[at] ^ (1 << draw(st.integers(0, 7)))]) + raw[at + 1 :]
        case "cut":
            return raw[:at]
        case "insert":
            return raw[:at] + draw(st.binary(min_size=1, max_size=4)) + raw[at:]
        case "delete":
            return raw[:at] + raw[at + 1 :]
        case _:
            return raw + draw(st.binary(min_size=1, max_size=8))


@st.composite
def unknown_field(draw: st.DrawFn, descriptor: Descriptor) -> bytes:
    """A field the message does not have, of any wire type; or a known one sent with the wrong wire type."""
    known = {f.number: f for f in descriptor.fields}
    number = draw(st.integers(1, 2**29 - 1))
    wire_type = draw(st.sampled_from([0, 1, 2, 5]))
    payload = {
        0: varint(draw(st.integers(0, 2**64 - 1))),
        1: draw(st.binary(min_size=8, max_size=8)),
        2: varint(3) + b"abc",
        5: draw(st.binary(min_size=4, max_size=4)),
    }[wire_type]
    if number in known and draw(st.booleans()):
        return tag(number, wire_type) + payload  # maybe the wrong wire type for a known field
    return tag(number + 1000 if number in known else number, wire_type) + payload


def _string_paths(descriptor: Descriptor, depth: int = 0) -> list[list[int]]:
    """Field-number paths to every string field, nested messages included (two levels)."""
    paths: list[list[int]] = []
    for field in descriptor.fields:
        if field.type == F.TYPE_STRING:
            paths.append([field.number])
        elif field.message_type is not None and depth < 2 and not field.message_type.GetOptions().map_entry:
            paths += [[field.number, *rest] for rest in _string_paths(field.message_type, depth + 1)]
    return paths


def not_utf8(descriptor: Descriptor) -> list[bytes]:
    """For each string field (nested too), a body setting it to bytes that are not UTF-8."""
    bodies = []
    for path in _string_paths(descriptor):
        for bad in NOT_UTF8[:2]:
            body = length_delimited(path[-1], bad)
            for number in reversed(path[:-1]):
                body = length_delimited(number, body)
            bodies.append(body)
    return bodies


def structural(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Bodies no encoder makes: a lone zero byte, groups nested past any limit, lengths past the end, a
    truncated varint, bodies up to and past grpc's size limit (built when drawn: they are large)."""
    first = descriptor.fields[0].number if descriptor.fields else 1
    builders = [
        lambda: b"\x00",
        lambda: tag(first, 3) * 5000,  # start-group, 5000 deep
        lambda: tag(19_999, 3) * 100 + tag(19_999, 4) * 100,
        lambda: tag(first, 2) + varint(2**31) + b"x",
        lambda: tag(first, 0) + b"\xff" * 11,
        lambda: length_delimited(first, b"a" * (1 << 20)),
        lambda: length_delimited(first, b"a" * (MAX_BODY + 1)),
    ]
    return st.sampled_from(builders).map(lambda build: build())


def page_token_field(descriptor: Descriptor) -> FieldDescriptor | None:
    field = descriptor.fields_by_name.get("page_token")
    return field if field is not None and field.type == F.TYPE_STRING else None


def crafted_tokens() -> list[str]:
    """Page tokens nobody issued: nesting past the recursion limit, the JSON of the release before signed
    tokens, base64 of nothing, not base64, a huge one."""
    b64 = lambda raw: base64.urlsafe_b64encode(raw).decode()  # noqa: E731
    return [
        b64(b"[" * 5000),
        b64(b'{"a":' * 3000),
        b64(json.dumps({"after": "a"}).encode()),
        b64(json.dumps({"t": "2026-01-01T00:00:00+00:00", "id": "ord_x", "s": "", "c": ""}).encode()),
        b64(json.dumps({"before": 10**30, "filters": {}}).encode()),
        "=", "%%%", "a b", "\x00", "é", "A" * 100_000,
    ]


@st.composite
def tampered_token(draw: st.DrawFn, issued: Sequence[str]) -> str:
    """A token some list issued (perhaps to another merchant, under other filters, for another list), altered
    or as it is; or one made by hand."""
    if issued and draw(st.booleans()):
        token = draw(st.sampled_from(list(issued)))
        match draw(st.sampled_from(["as issued", "character", "cut", "longer", "bytes"])):
            case "as issued":
                return token
            case "character":
                at = draw(st.integers(0, len(token) - 1))
                return token[:at] + draw(st.sampled_from("AQgw-_9z")) + token[at + 1 :]
            case "cut":
                return token[: draw(st.integers(0, len(token) - 1))]
            case "longer":
                return token + draw(st.text("ABCxyz019-_", min_size=1, max_size=4))
            case _:
                raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
                at = draw(st.integers(0, len(raw) - 1))
                raw[at] ^= 1 << draw(st.integers(0, 7))
                return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    return draw(st.sampled_from(crafted_tokens()) | st.text(max_size=60))


@st.composite
def with_page_token(draw: st.DrawFn, descriptor: Descriptor, issued: Sequence[str]) -> bytes:
    """A request of a List method: filters random or empty, its page token hostile; well-formed otherwise, so
    it reaches the token check."""
    field = page_token_field(descriptor)
    assert field is not None
    msg = draw(message_of(descriptor)) if draw(st.booleans()) else message_class(descriptor)()
    setattr(msg, field.name, draw(tampered_token(issued)))
    return msg.SerializeToString()


def hostile_body(
    descriptor: Descriptor, issued: Sequence[str] = (), seen: Mapping[str, Sequence[str]] | None = None
) -> st.SearchStrategy[bytes]:
    """Any of the kinds of hostile body for a method taking `descriptor`; `issued` are page tokens the lists
    handed out, `seen` the values the mesh has shown by field name (see `plausible`)."""
    messages = message_of(descriptor).map(lambda m: m.SerializeToString())
    likely = message_of(descriptor, texts=plausible(seen or {})).map(lambda m: m.SerializeToString())
    kinds = [
        st.binary(max_size=96),
        messages,
        *[likely] * 4,  # four times as likely as each other kind: these reach furthest
        likely.flatmap(mutated),
        messages.flatmap(mutated),
        st.tuples(messages, st.lists(unknown_field(descriptor), min_size=1, max_size=3)).map(
            lambda parts: parts[0] + b"".join(parts[1])
        ),
        structural(descriptor),
    ]
    if bad := not_utf8(descriptor):
        kinds.append(st.sampled_from(bad))
    if page_token_field(descriptor) is not None:
        kinds.append(with_page_token(descriptor, issued))
    return st.one_of(kinds)
