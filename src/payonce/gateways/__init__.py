"""Gateways (L4): adapters to payment providers, imported on use.

``from payonce.gateways.simulated import SimulatedGateway`` and
``from payonce.gateways.stripe import StripeGateway`` (the names are also here, loaded on first
use). The Stripe adapter needs the ``stripe`` extra; the simulated provider needs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from payonce.gateways._simulated import AsyncSimulatedGateway, SimulatedGateway
    from payonce.gateways._stripe import AsyncStripeGateway, StripeGateway

__all__ = ["AsyncSimulatedGateway", "AsyncStripeGateway", "SimulatedGateway", "StripeGateway"]

_WHERE = {
    "SimulatedGateway": "payonce.gateways._simulated",
    "AsyncSimulatedGateway": "payonce.gateways._simulated",
    "StripeGateway": "payonce.gateways._stripe",
    "AsyncStripeGateway": "payonce.gateways._stripe",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use, so that importing payonce.gateways never imports a provider SDK.
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
