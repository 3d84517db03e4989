"""inventory_svc's input checks: each RPC's request becomes its command, or every violation at once."""

from __future__ import annotations

import pytest

from inventory_svc import validate
from paymesh.chassis.errors import InvalidArgument
from paymesh.chassis.page_tokens import PageTokens
from paymesh.inventory.v1 import inventory_service_pb2 as pb

pytestmark = pytest.mark.timeout(5)

RID = "00000000-0000-0000-0000-000000001234"


def test_valid_requests_become_commands() -> None:
    put = pb.PutProductRequest(request_id=RID, sku="mug", name="Mug", available=3)
    assert validate.put_product(put) == validate.ProductUpdate("mug", "Mug", 3)
    assert validate.adjust_stock(pb.AdjustStockRequest(request_id=RID, sku="mug", delta=-2)) == (
        validate.StockAdjustment("mug", -2)
    )
    assert validate.get_product(pb.GetProductRequest(sku="mug")) == "mug"
    assert validate.get_reservation(pb.GetReservationRequest(order_id="ord_1")) == "ord_1"


def test_a_page_token_names_where_the_next_page_starts() -> None:
    pages = PageTokens(b"k" * 32)
    first = validate.list_products(pb.ListProductsRequest(), pages, "mer_a")
    assert (first.page_size, first.after) == (50, None)
    token = first.next_token("mug")
    following = validate.list_products(pb.ListProductsRequest(page_size=2, page_token=token), pages, "mer_a")
    assert (following.page_size, following.after) == (2, "mug")
    # Another merchant's token is no token of this one's.
    with pytest.raises(InvalidArgument) as refused:
        validate.list_products(pb.ListProductsRequest(page_token=token), pages, "mer_b")
    assert [field for field, _ in refused.value.violations] == ["page_token"]


def test_every_violation_is_refused_at_once() -> None:
    with pytest.raises(InvalidArgument) as refused:
        validate.adjust_stock(pb.AdjustStockRequest(request_id="x", sku="", delta=0))
    assert [field for field, _ in refused.value.violations] == ["request_id", "sku", "delta"]
