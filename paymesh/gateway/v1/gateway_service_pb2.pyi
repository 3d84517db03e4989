from paymesh.gateway.v1 import gateway_pb2 as _gateway_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChargeRequest(_message.Message):
    __slots__ = ("idempotency_key", "amount_minor", "currency", "payment_method_token", "order_id", "description", "merchant_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_METHOD_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    amount_minor: int
    currency: str
    payment_method_token: str
    order_id: str
    description: str
    merchant_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., payment_method_token: _Optional[str] = ..., order_id: _Optional[str] = ..., description: _Optional[str] = ..., merchant_id: _Optional[str] = ...) -> None: ...

class ChargeResponse(_message.Message):
    __slots__ = ("charge",)
    CHARGE_FIELD_NUMBER: _ClassVar[int]
    charge: _gateway_pb2.Charge
    def __init__(self, charge: _Optional[_Union[_gateway_pb2.Charge, _Mapping]] = ...) -> None: ...

class RefundRequest(_message.Message):
    __slots__ = ("idempotency_key", "charge_id", "amount_minor", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    charge_id: str
    amount_minor: int
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., charge_id: _Optional[str] = ..., amount_minor: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RefundResponse(_message.Message):
    __slots__ = ("refund", "charge")
    REFUND_FIELD_NUMBER: _ClassVar[int]
    CHARGE_FIELD_NUMBER: _ClassVar[int]
    refund: _gateway_pb2.Refund
    charge: _gateway_pb2.Charge
    def __init__(self, refund: _Optional[_Union[_gateway_pb2.Refund, _Mapping]] = ..., charge: _Optional[_Union[_gateway_pb2.Charge, _Mapping]] = ...) -> None: ...

class GetChargeRequest(_message.Message):
    __slots__ = ("charge_id", "idempotency_key")
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    charge_id: str
    idempotency_key: str
    def __init__(self, charge_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GetChargeResponse(_message.Message):
    __slots__ = ("charge",)
    CHARGE_FIELD_NUMBER: _ClassVar[int]
    charge: _gateway_pb2.Charge
    def __init__(self, charge: _Optional[_Union[_gateway_pb2.Charge, _Mapping]] = ...) -> None: ...

class ListChargesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "order_id", "status", "merchant_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    order_id: str
    status: _gateway_pb2.ChargeStatus
    merchant_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., order_id: _Optional[str] = ..., status: _Optional[_Union[_gateway_pb2.ChargeStatus, str]] = ..., merchant_id: _Optional[str] = ...) -> None: ...

class ListChargesResponse(_message.Message):
    __slots__ = ("charges", "next_page_token")
    CHARGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    charges: _containers.RepeatedCompositeFieldContainer[_gateway_pb2.Charge]
    next_page_token: str
    def __init__(self, charges: _Optional[_Iterable[_Union[_gateway_pb2.Charge, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ConfigureRequest(_message.Message):
    __slots__ = ("latency_ms", "decline_rate", "transient_error_rate", "lost_response_rate", "seed", "reset")
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DECLINE_RATE_FIELD_NUMBER: _ClassVar[int]
    TRANSIENT_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    LOST_RESPONSE_RATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    latency_ms: int
    decline_rate: float
    transient_error_rate: float
    lost_response_rate: float
    seed: int
    reset: bool
    def __init__(self, latency_ms: _Optional[int] = ..., decline_rate: _Optional[float] = ..., transient_error_rate: _Optional[float] = ..., lost_response_rate: _Optional[float] = ..., seed: _Optional[int] = ..., reset: _Optional[bool] = ...) -> None: ...

class ConfigureResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: _gateway_pb2.FaultConfig
    def __init__(self, config: _Optional[_Union[_gateway_pb2.FaultConfig, _Mapping]] = ...) -> None: ...
