"""The services of the mesh, in the order they start: the one list the launcher, tools and tests read."""

from __future__ import annotations

from typing import Any

from gateway_mock.service import SPEC as GATEWAY_MOCK
from inventory_svc.service import SPEC as INVENTORY_SVC
from order_svc.service import SPEC as ORDER_SVC
from payment_svc.service import SPEC as PAYMENT_SVC
from paymesh.chassis.spec import ServiceSpec
from webhook_svc.service import SPEC as WEBHOOK_SVC

# A dependency first: payment_svc calls the gateway, order_svc is what clients reach first; webhook_svc reads
# the streams order_svc and payment_svc make.
SPECS: tuple[ServiceSpec[Any], ...] = (GATEWAY_MOCK, INVENTORY_SVC, PAYMENT_SVC, ORDER_SVC, WEBHOOK_SVC)
NAMES: tuple[str, ...] = tuple(s.name for s in SPECS)
_BY_NAME = {s.name: s for s in SPECS}


def spec(name: str) -> ServiceSpec[Any]:
    """The spec of the service called `name` (`order_svc`); KeyError naming the known ones otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; the mesh has {', '.join(NAMES)}") from None
