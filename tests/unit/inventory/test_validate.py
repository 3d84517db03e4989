"""inventory_svc's input checks: each RPC's request becomes its command, or every violation at once."""

from __future__ import annotations

import pytest

from inventory_svc import validate
from paymesh.chassis.errors import InvalidArgument
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
    assert validate.list_products(pb.ListProductsRequest()) == validate.ProductQuery(50, None)
    token = validate.ProductQuery.next_token("mug")
    assert validate.list_products(pb.ListProductsRequest(page_size=2, page_token=token)) == (
        validate.ProductQuery(2, "mug")
    )


def test_every_violation_is_refused_at_once() -> None:
    with pytest.raises(InvalidArgument) as refused:
        validate.adjust_stock(pb.AdjustStockRequest(request_id="x", sku="", delta=0))
    assert [field for field, _ in refused.value.violations] == ["request_id", "sku", "delta"]
