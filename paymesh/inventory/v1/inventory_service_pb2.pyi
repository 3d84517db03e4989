from paymesh.inventory.v1 import inventory_pb2 as _inventory_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PutProductRequest(_message.Message):
    __slots__ = ("sku", "name", "available", "request_id")
    SKU_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    sku: str
    name: str
    available: int
    request_id: str
    def __init__(self, sku: _Optional[str] = ..., name: _Optional[str] = ..., available: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class PutProductResponse(_message.Message):
    __slots__ = ("product",)
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    product: _inventory_pb2.Product
    def __init__(self, product: _Optional[_Union[_inventory_pb2.Product, _Mapping]] = ...) -> None: ...

class AdjustStockRequest(_message.Message):
    __slots__ = ("request_id", "sku", "delta")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    sku: str
    delta: int
    def __init__(self, request_id: _Optional[str] = ..., sku: _Optional[str] = ..., delta: _Optional[int] = ...) -> None: ...

class AdjustStockResponse(_message.Message):
    __slots__ = ("product",)
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    product: _inventory_pb2.Product
    def __init__(self, product: _Optional[_Union[_inventory_pb2.Product, _Mapping]] = ...) -> None: ...

class GetProductRequest(_message.Message):
    __slots__ = ("sku",)
    SKU_FIELD_NUMBER: _ClassVar[int]
    sku: str
    def __init__(self, sku: _Optional[str] = ...) -> None: ...

class GetProductResponse(_message.Message):
    __slots__ = ("product",)
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    product: _inventory_pb2.Product
    def __init__(self, product: _Optional[_Union[_inventory_pb2.Product, _Mapping]] = ...) -> None: ...

class ListProductsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListProductsResponse(_message.Message):
    __slots__ = ("products", "next_page_token")
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    products: _containers.RepeatedCompositeFieldContainer[_inventory_pb2.Product]
    next_page_token: str
    def __init__(self, products: _Optional[_Iterable[_Union[_inventory_pb2.Product, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetReservationRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetReservationResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: _inventory_pb2.Reservation
    def __init__(self, reservation: _Optional[_Union[_inventory_pb2.Reservation, _Mapping]] = ...) -> None: ...
