import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from paymesh.payment.v1 import payment_pb2 as _payment_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PaymentSucceeded(_message.Message):
    __slots__ = ("event_id", "order_id", "occurred_at", "payment_id", "charge_id", "amount_minor", "currency", "merchant_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    order_id: str
    occurred_at: _timestamp_pb2.Timestamp
    payment_id: str
    charge_id: str
    amount_minor: int
    currency: str
    merchant_id: str
    def __init__(self, event_id: _Optional[str] = ..., order_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payment_id: _Optional[str] = ..., charge_id: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., merchant_id: _Optional[str] = ...) -> None: ...

class PaymentFailed(_message.Message):
    __slots__ = ("event_id", "order_id", "occurred_at", "payment_id", "failure_code", "reason", "merchant_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    order_id: str
    occurred_at: _timestamp_pb2.Timestamp
    payment_id: str
    failure_code: str
    reason: str
    merchant_id: str
    def __init__(self, event_id: _Optional[str] = ..., order_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payment_id: _Optional[str] = ..., failure_code: _Optional[str] = ..., reason: _Optional[str] = ..., merchant_id: _Optional[str] = ...) -> None: ...

class PaymentRefunded(_message.Message):
    __slots__ = ("event_id", "order_id", "occurred_at", "payment_id", "amount_minor", "refund_id", "currency", "refunded_minor", "cause", "merchant_id", "payment")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    REFUND_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_MINOR_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    order_id: str
    occurred_at: _timestamp_pb2.Timestamp
    payment_id: str
    amount_minor: int
    refund_id: str
    currency: str
    refunded_minor: int
    cause: str
    merchant_id: str
    payment: _payment_pb2.Payment
    def __init__(self, event_id: _Optional[str] = ..., order_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payment_id: _Optional[str] = ..., amount_minor: _Optional[int] = ..., refund_id: _Optional[str] = ..., currency: _Optional[str] = ..., refunded_minor: _Optional[int] = ..., cause: _Optional[str] = ..., merchant_id: _Optional[str] = ..., payment: _Optional[_Union[_payment_pb2.Payment, _Mapping]] = ...) -> None: ...

class PaymentVoided(_message.Message):
    __slots__ = ("event_id", "order_id", "occurred_at", "payment_id", "cause", "merchant_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    order_id: str
    occurred_at: _timestamp_pb2.Timestamp
    payment_id: str
    cause: str
    merchant_id: str
    def __init__(self, event_id: _Optional[str] = ..., order_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payment_id: _Optional[str] = ..., cause: _Optional[str] = ..., merchant_id: _Optional[str] = ...) -> None: ...

class PaymentRefundFailed(_message.Message):
    __slots__ = ("event_id", "order_id", "occurred_at", "payment_id", "failure_code", "reason", "cause", "merchant_id", "payment")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    order_id: str
    occurred_at: _timestamp_pb2.Timestamp
    payment_id: str
    failure_code: str
    reason: str
    cause: str
    merchant_id: str
    payment: _payment_pb2.Payment
    def __init__(self, event_id: _Optional[str] = ..., order_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payment_id: _Optional[str] = ..., failure_code: _Optional[str] = ..., reason: _Optional[str] = ..., cause: _Optional[str] = ..., merchant_id: _Optional[str] = ..., payment: _Optional[_Union[_payment_pb2.Payment, _Mapping]] = ...) -> None: ...
