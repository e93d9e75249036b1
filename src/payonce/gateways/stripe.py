"""The Stripe adapter: ``from payonce.gateways.stripe import StripeGateway`` (extra ``stripe``)."""

from payonce.gateways._stripe import AsyncStripeGateway, StripeGateway

__all__ = ["AsyncStripeGateway", "StripeGateway"]
