"""The recorded outcome bodies (L1: pure): what a SUCCEEDED or FAILED record holds and replays.

The guard and the Reconciler both record outcomes; they build them here so that a replay reads
the same shape whoever recorded it.
"""

from __future__ import annotations

import json
from typing import Any

from payonce._keys import canonical_json
from payonce._model import GatewayAnswer

__all__ = ["failure_body", "is_declined", "recorded_object", "success_body"]


def success_body(value: Any) -> str:
    """The body of a SUCCEEDED record.

    Raises:
        TypeError, ValueError: ``value`` is not JSON (NaN and infinities included), or holds
            text that is not valid Unicode (``UnicodeEncodeError``: a lone surrogate, which no
            store can write and no ledger entry can hash).
    """
    return _storable(canonical_json({"value": value}))


def failure_body(code: str | None, *, declined: bool, value: Any = None) -> str:
    """The body of a FAILED record: the code and what the gateway kept, never an exception's
    message, which may carry anything, secrets included (I8). Raises as ``success_body``."""
    body: dict[str, Any] = {"error": {"code": code, "kind": "declined" if declined else "definite"}}
    if value is not None:
        body["value"] = value
    return _storable(canonical_json(body))


def _storable(body: str) -> str:
    body.encode("utf-8")  # lone surrogates raise here, before any store is asked to write them
    return body


def is_declined(answer: GatewayAnswer) -> bool:
    """Whether a definite failure is a payment decline (the adapters keep its decline code)."""
    return bool((answer.value or {}).get("decline_code"))


def recorded_object(outcome: str | None) -> dict[str, Any]:
    """The provider object a recorded body holds: its ``value`` when that is a JSON object (what
    ``guard.execute`` records), else an empty dict."""
    value = json.loads(outcome or "{}").get("value")
    return value if isinstance(value, dict) else {}
