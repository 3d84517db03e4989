"""Page tokens: what one binding issues reads back on it alone; anything altered, replayed elsewhere or made
by hand is refused on page_token, never an error of another kind."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paymesh.chassis.auth import Pepper
from paymesh.chassis.errors import InvalidArgument
from paymesh.chassis.page_tokens import MAX_TOKEN_CHARS, REFUSAL, PageTokens
from paymesh.chassis.validation import Violations

pytestmark = pytest.mark.timeout(30)

PAGES = PageTokens.from_pepper(Pepper(b"p" * 32))
METHOD = "paymesh.order.v1.OrderService.ListOrders"
BOUND = PAGES.bind(METHOD, "mer_a", ["3", "cus_1"])
CURSOR = ["2026-01-01T00:00:00+00:00", "ord_0123"]


def read(token: str, binding=BOUND, fields: int = 2):  # type: ignore[no-untyped-def]
    v = Violations()
    cursor = binding.read(v, token, fields)
    return cursor, v.items


def refused(token: str, binding=BOUND, fields: int = 2) -> bool:  # type: ignore[no-untyped-def]
    cursor, violations = read(token, binding, fields)
    return cursor is None and violations == [("page_token", REFUSAL)]


def test_a_token_reads_back_its_cursor_and_no_token_is_the_first_page() -> None:
    token = BOUND.issue(CURSOR)
    assert read(token) == (tuple(CURSOR), [])
    assert read("") == (None, [])
    # URL-safe as it is; the binding is signed, not carried: no merchant or filter is in the token.
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert b"mer_a" not in raw and b"cus_1" not in raw
    # The same bytes spelt otherwise are not the token: padded, or with what a base64 decoder skips.
    for spelling in (token + "=", token + "\n", " " + token, token[:4] + "\n" + token[4:]):
        assert refused(spelling), spelling


@pytest.mark.parametrize(
    "other",
    [
        PAGES.bind(METHOD, "mer_b", ["3", "cus_1"]),  # another merchant
        PAGES.bind(METHOD, "mer_a", ["3", "cus_2"]),  # other filters
        PAGES.bind(METHOD, "mer_a", ["3cus_1"]),  # the same characters framed otherwise
        PAGES.bind(METHOD, "mer_a", ["3", "cus_1", ""]),  # one filter more
        PAGES.bind("paymesh.payment.v1.PaymentService.ListPayments", "mer_a", ["3", "cus_1"]),  # another list
        PageTokens.from_pepper(Pepper(b"q" * 32)).bind(METHOD, "mer_a", ["3", "cus_1"]),  # another mesh's key
    ],
)
def test_a_token_is_refused_by_every_other_binding(other) -> None:  # type: ignore[no-untyped-def]
    assert refused(BOUND.issue(CURSOR), other)


def test_the_key_is_derived_from_the_pepper_not_the_pepper_itself() -> None:
    pepper = Pepper(b"p" * 32)
    assert PageTokens.from_pepper(pepper).key not in {pepper.value, b""}
    assert PageTokens.from_pepper(pepper) == PAGES  # every replica derives the same
    assert repr(PAGES) == "PageTokens()"  # the key stays out of logs and tracebacks


@pytest.mark.parametrize(
    "token",
    [
        base64.urlsafe_b64encode(b"[" * 5000).decode(),  # deep nesting, the RecursionError of the JSON tokens
        base64.urlsafe_b64encode(json.dumps({"t": "2026-01-01", "id": "o", "s": "", "c": ""}).encode()).decode(),
        "not a token",
        "%%%",
        "A",
        "AAAA",
        "A" * (MAX_TOKEN_CHARS + 1),
        "é",
        "\x00",
    ],
)
def test_tokens_not_issued_here_are_refused(token: str) -> None:
    assert refused(token)


def test_filters_of_any_length_bind_a_token() -> None:
    # Bound before they are validated, so a filter of a megabyte (grpc allows it) must not fail the binding.
    huge = PAGES.bind(METHOD, "mer_a", ["x" * (1 << 20)])
    assert refused(BOUND.issue(CURSOR), huge)
    assert read(huge.issue(CURSOR), huge) == (tuple(CURSOR), [])


def test_a_token_read_with_another_shape_is_refused() -> None:
    assert refused(BOUND.issue(["only one"]))
    assert refused(BOUND.issue([*CURSOR, "extra"]))


def test_the_refusal_is_one_page_token_violation_beside_the_others() -> None:
    v = Violations()
    v.add("page_size", "must not be negative")
    BOUND.read(v, "garbage", 2)
    with pytest.raises(InvalidArgument) as err:
        v.raise_if_any()
    assert [field for field, _ in err.value.violations] == ["page_size", "page_token"]
    assert "page_token: is not valid or has expired" in err.value.message
    assert err.value.message.endswith("start again without one")


@settings(derandomize=True, database=None, max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=4))
def test_any_cursor_of_text_reads_back(cursor: list[str]) -> None:
    assert read(BOUND.issue(cursor), fields=len(cursor)) == (tuple(cursor), [])


@settings(derandomize=True, database=None, max_examples=300, deadline=None)
@given(st.data())
def test_any_change_to_a_token_is_refused(data: st.DataObject) -> None:
    # Cursors of every length modulo 3, so the last character's spare bits are in some of the tokens.
    token = BOUND.issue([CURSOR[0], CURSOR[1] + "x" * data.draw(st.integers(0, 2))])
    at = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.text(min_size=0, max_size=3))
    altered = token[:at] + replacement + token[at + 1 :]
    if altered != token:
        assert refused(altered), (token, altered)


@settings(derandomize=True, database=None, max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=150).map(lambda b: base64.urlsafe_b64encode(b).decode()))
def test_random_tokens_are_refused(token: str) -> None:
    assert token == "" or refused(token)
