"""The simulated payment provider: ``from payonce.gateways.simulated import SimulatedGateway``."""

from payonce.gateways._simulated import AsyncSimulatedGateway, SimulatedGateway

__all__ = ["AsyncSimulatedGateway", "SimulatedGateway"]
