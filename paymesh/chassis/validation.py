"""Request validation: collect every field violation, then refuse once with all of them.

Page tokens are made and read by paymesh.chassis.page_tokens (signed, bound to the query)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import TypeVar

from paymesh.chassis.errors import invalid_argument

T = TypeVar("T")

MAX_ID_LEN = 64
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class Violations:
    """`v = Violations(); v.check(ok, field, why); ...; v.raise_if_any()`."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def check(self, ok: bool, field: str, description: str) -> bool:
        if not ok:
            self.add(field, description)
        return ok

    def identifier(self, field: str, value: str, *, required: bool = True, max_len: int = MAX_ID_LEN) -> None:
        """An id or sku: 1..max_len characters of letters, digits and . _ : -"""
        if not value:
            if required:
                self.add(field, "is required")
            return
        if len(value) > max_len:
            self.add(field, f"must be at most {max_len} characters, got {len(value)}")
        elif not ID_PATTERN.match(value):
            self.add(field, "may contain only letters, digits and . _ : - (and must start with a letter or digit)")

    def request_id(self, field: str, value: str) -> None:
        """AIP-155: a UUID chosen by the client, so a retry can be recognised."""
        if not value:
            self.add(field, "is required: a UUID that identifies this request across retries")
            return
        try:
            uuid.UUID(value)
        except ValueError:
            self.add(field, f"must be a UUID (e.g. {uuid.UUID(int=0x1234)}), got {value[:80]!r}")

    def raise_if_any(self) -> None:
        if self.items:
            raise invalid_argument(self.items)


def page_size(v: Violations, value: int) -> int:
    """AIP-158: 0 means the default; more than the maximum is clamped; negative is refused."""
    if value < 0:
        v.add("page_size", "must not be negative")
        return DEFAULT_PAGE_SIZE
    if value == 0:
        return DEFAULT_PAGE_SIZE
    return min(value, MAX_PAGE_SIZE)


def page_limit(page_size: int) -> int:
    """How many rows a list reads: one more than a page tells whether another page follows."""
    return page_size + 1


def split_page(rows: Sequence[T], page_size: int) -> tuple[list[T], T | None]:
    """Rows read with `page_limit(page_size)`: the page, and its last row when another page follows
    (the row the next page token is made from), else None."""
    page = list(rows[:page_size])
    return page, (page[-1] if len(rows) > page_size and page else None)
