import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from paymesh.inventory.v1 import inventory_pb2 as _inventory_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InventoryReserved(_message.Message):
    __slots__ = ("event_id", "order_id", "occurred_at", "lines", "merchant_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    order_id: str
    occurred_at: _timestamp_pb2.Timestamp
    lines: _containers.RepeatedCompositeFieldContainer[_inventory_pb2.ReservationLine]
    merchant_id: str
    def __init__(self, event_id: _Optional[str] = ..., order_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lines: _Optional[_Iterable[_Union[_inventory_pb2.ReservationLine, _Mapping]]] = ..., merchant_id: _Optional[str] = ...) -> None: ...

class InventoryRejected(_message.Message):
    __slots__ = ("event_id", "order_id", "occurred_at", "reason", "sku", "requested", "available", "merchant_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    order_id: str
    occurred_at: _timestamp_pb2.Timestamp
    reason: str
    sku: str
    requested: int
    available: int
    merchant_id: str
    def __init__(self, event_id: _Optional[str] = ..., order_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., sku: _Optional[str] = ..., requested: _Optional[int] = ..., available: _Optional[int] = ..., merchant_id: _Optional[str] = ...) -> None: ...

class InventoryCommitted(_message.Message):
    __slots__ = ("event_id", "order_id", "occurred_at", "lines", "merchant_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    order_id: str
    occurred_at: _timestamp_pb2.Timestamp
    lines: _containers.RepeatedCompositeFieldContainer[_inventory_pb2.ReservationLine]
    merchant_id: str
    def __init__(self, event_id: _Optional[str] = ..., order_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lines: _Optional[_Iterable[_Union[_inventory_pb2.ReservationLine, _Mapping]]] = ..., merchant_id: _Optional[str] = ...) -> None: ...

class InventoryReleased(_message.Message):
    __slots__ = ("event_id", "order_id", "occurred_at", "lines", "held", "cause", "merchant_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    order_id: str
    occurred_at: _timestamp_pb2.Timestamp
    lines: _containers.RepeatedCompositeFieldContainer[_inventory_pb2.ReservationLine]
    held: bool
    cause: str
    merchant_id: str
    def __init__(self, event_id: _Optional[str] = ..., order_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lines: _Optional[_Iterable[_Union[_inventory_pb2.ReservationLine, _Mapping]]] = ..., held: _Optional[bool] = ..., cause: _Optional[str] = ..., merchant_id: _Optional[str] = ...) -> None: ...
