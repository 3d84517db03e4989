"""Bad input to each RPC: INVALID_ARGUMENT with the field violated, and nothing written."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from paymesh.gateway.v1 import gateway_service_pb2 as pb
from tests.integration.gateway.harness import all_charges, charge_request, error_info, violated_fields

pytestmark = pytest.mark.timeout(30)

# (rpc, request, the fields the BadRequest must name, in order)
CASES: list[tuple[str, Any, list[str]]] = [
    ("Charge", charge_request(""), ["idempotency_key"]),
    ("Charge", charge_request("k" * 65), ["idempotency_key"]),
    ("Charge", charge_request("has space"), ["idempotency_key"]),
    ("Charge", charge_request("k-1", amount=0), ["amount_minor"]),
    ("Charge", charge_request("k-1", amount=-5), ["amount_minor"]),
    ("Charge", charge_request("k-1", currency="usd"), ["currency"]),
    ("Charge", charge_request("k-1", currency="XXY"), ["currency"]),
    ("Charge", charge_request("k-1", currency=""), ["currency"]),
    ("Charge", charge_request("k-1", token=""), ["payment_method_token"]),
    ("Charge", charge_request("k-1", token="tok_mastercard"), ["payment_method_token"]),
    ("Charge", charge_request("k-1", order_id="ord/1"), ["order_id"]),
    ("Charge", charge_request("k-1", description="x" * 501), ["description"]),
    ("Charge", charge_request("k-1", merchant_id=""), ["merchant_id"]),
    ("Charge", charge_request("k-1", merchant_id="m" * 41), ["merchant_id"]),
    ("Charge", charge_request("k-1", merchant_id="mer/a"), ["merchant_id"]),
    ("Charge", pb.ChargeRequest(),
     ["idempotency_key", "amount_minor", "currency", "payment_method_token", "merchant_id"]),
    ("Refund", pb.RefundRequest(charge_id="ch_1"), ["idempotency_key"]),
    ("Refund", pb.RefundRequest(idempotency_key="r-1"), ["charge_id"]),
    ("Refund", pb.RefundRequest(idempotency_key="r-1", charge_id="ch_1", amount_minor=-1), ["amount_minor"]),
    ("GetCharge", pb.GetChargeRequest(), ["charge_id"]),
    ("GetCharge", pb.GetChargeRequest(charge_id=""), ["charge_id"]),
    ("GetCharge", pb.GetChargeRequest(idempotency_key="k" * 65), ["idempotency_key"]),
    ("ListCharges", pb.ListChargesRequest(page_size=-1), ["page_size"]),
    ("ListCharges", pb.ListChargesRequest(page_token="not-a-token"), ["page_token"]),
    ("ListCharges", pb.ListChargesRequest(status=99), ["status"]),  # type: ignore[arg-type]
    ("ListCharges", pb.ListChargesRequest(merchant_id="mer a"), ["merchant_id"]),
    ("ListCharges", pb.ListChargesRequest(merchant_id="m" * 41), ["merchant_id"]),
    ("Configure", pb.ConfigureRequest(decline_rate=1.5), ["decline_rate"]),
    ("Configure", pb.ConfigureRequest(transient_error_rate=-0.1), ["transient_error_rate"]),
    ("Configure", pb.ConfigureRequest(lost_response_rate=float("nan")), ["lost_response_rate"]),
    ("Configure", pb.ConfigureRequest(latency_ms=-1, reset=True), ["latency_ms"]),
]


async def test_bad_input_is_refused_field_by_field_and_writes_nothing(gateway: Any, operator: Any) -> None:
    await gateway.Charge(charge_request("k-1", amount=1000))
    before = await all_charges(gateway)
    config_before = (await operator.Configure(pb.ConfigureRequest())).config
    for rpc, request, fields in CASES:
        stub = operator if rpc == "Configure" else gateway
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(stub, rpc)(request)
        case = f"{rpc}({request})"
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert error_info(err.value).reason == "INVALID_ARGUMENT", case
        assert violated_fields(err.value) == fields, case
        assert await all_charges(gateway) == before, case
    assert (await operator.Configure(pb.ConfigureRequest())).config == config_before
