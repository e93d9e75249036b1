"""The recorded outcome bodies (L1: pure): what a SUCCEEDED or FAILED record holds and replays.

The guard and the Reconciler both record outcomes; they build them here so that a replay reads
the same shape whoever recorded it.
"""

from __future__ import annotations

import json
from typing import Any

from payonce._keys import canonical_json
from payonce._model import GatewayAnswer

__all__ = ["failure_body", "is_declined", "recorded_object", "storable_text", "success_body"]


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
    message, which may carry anything, secrets included (I8).

    Never raises: the failure is definite whatever the provider's object held, so a ``value``
    that cannot be stored (as for ``success_body``) is left out, and the code's text is made
    storable (``storable_text``).
    """
    error = {
        "code": None if code is None else storable_text(code),
        "kind": "declined" if declined else "definite",
    }
    if value is not None:
        try:
            return _storable(canonical_json({"error": error, "value": value}))
        except (TypeError, ValueError):
            pass
    return canonical_json({"error": error})


def storable_text(text: str) -> str:
    """``text`` as every store can hold and every entry can hash: NUL (which PostgreSQL text
    refuses) becomes U+FFFD and a lone surrogate (not UTF-8) ``?``. Reasons and codes often
    quote what a provider or an exception said; after money may have moved they must never
    fail the write."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


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
