import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChargeStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHARGE_STATUS_UNSPECIFIED: _ClassVar[ChargeStatus]
    CHARGE_STATUS_SUCCEEDED: _ClassVar[ChargeStatus]
    CHARGE_STATUS_DECLINED: _ClassVar[ChargeStatus]
    CHARGE_STATUS_REFUNDED: _ClassVar[ChargeStatus]
    CHARGE_STATUS_PARTIALLY_REFUNDED: _ClassVar[ChargeStatus]
CHARGE_STATUS_UNSPECIFIED: ChargeStatus
CHARGE_STATUS_SUCCEEDED: ChargeStatus
CHARGE_STATUS_DECLINED: ChargeStatus
CHARGE_STATUS_REFUNDED: ChargeStatus
CHARGE_STATUS_PARTIALLY_REFUNDED: ChargeStatus

class Charge(_message.Message):
    __slots__ = ("charge_id", "idempotency_key", "amount_minor", "refunded_minor", "currency", "status", "decline_code", "order_id", "description", "card_last4", "create_time", "update_time", "merchant_id")
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DECLINE_CODE_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CARD_LAST4_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    charge_id: str
    idempotency_key: str
    amount_minor: int
    refunded_minor: int
    currency: str
    status: ChargeStatus
    decline_code: str
    order_id: str
    description: str
    card_last4: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    merchant_id: str
    def __init__(self, charge_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., amount_minor: _Optional[int] = ..., refunded_minor: _Optional[int] = ..., currency: _Optional[str] = ..., status: _Optional[_Union[ChargeStatus, str]] = ..., decline_code: _Optional[str] = ..., order_id: _Optional[str] = ..., description: _Optional[str] = ..., card_last4: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., merchant_id: _Optional[str] = ...) -> None: ...

class Refund(_message.Message):
    __slots__ = ("refund_id", "charge_id", "idempotency_key", "amount_minor", "currency", "reason", "create_time", "merchant_id")
    REFUND_ID_FIELD_NUMBER: _ClassVar[int]
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    refund_id: str
    charge_id: str
    idempotency_key: str
    amount_minor: int
    currency: str
    reason: str
    create_time: _timestamp_pb2.Timestamp
    merchant_id: str
    def __init__(self, refund_id: _Optional[str] = ..., charge_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., reason: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., merchant_id: _Optional[str] = ...) -> None: ...

class FaultConfig(_message.Message):
    __slots__ = ("latency_ms", "decline_rate", "transient_error_rate", "lost_response_rate", "seed")
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DECLINE_RATE_FIELD_NUMBER: _ClassVar[int]
    TRANSIENT_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    LOST_RESPONSE_RATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    latency_ms: int
    decline_rate: float
    transient_error_rate: float
    lost_response_rate: float
    seed: int
    def __init__(self, latency_ms: _Optional[int] = ..., decline_rate: _Optional[float] = ..., transient_error_rate: _Optional[float] = ..., lost_response_rate: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...
