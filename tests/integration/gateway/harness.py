"""Helpers for the gateway's integration tests: requests, rich error details, every page of ListCharges."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from paymesh.gateway.v1 import gateway_service_pb2 as pb
from tests.keys import MERCHANT_A


def charge_request(key: str, token: str = "tok_visa", amount: int = 1000, **fields: Any) -> pb.ChargeRequest:
    """A charge for MERCHANT_A unless `merchant_id` says otherwise."""
    return pb.ChargeRequest(idempotency_key=key, amount_minor=amount, currency=fields.pop("currency", "USD"),
                            payment_method_token=token, merchant_id=fields.pop("merchant_id", MERCHANT_A),
                            **fields)


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None, f"no rich status on {err.code()}: {err.details()}"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "paymesh.dev"
    return info


def violated_fields(err: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(err)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details), "no BadRequest detail"
    return [v.field for v in bad.field_violations]


async def all_charges(stub: Any, **filters: Any) -> list[Any]:
    """Every charge, walking the pages."""
    charges, token = [], ""
    while True:
        page = await stub.ListCharges(pb.ListChargesRequest(page_size=100, page_token=token, **filters))
        charges.extend(page.charges)
        token = page.next_page_token
        if not token:
            return charges
