"""Keys, provider keys and fingerprints (L1: pure; DESIGN §4).

Every key is ``HMAC-SHA256(secret, domain ‖ len-prefixed fields)``. Each field is UTF-8 with a
4-byte big-endian length in front, so ``("ab", "c")`` and ``("a", "bc")`` never meet, and the
first field is a domain string, so a key can never equal a provider key or a family digest.
Only digests leave this module: raw references and customer ids never appear in a key (I8).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Final

from payonce._errors import ConfigurationError
from payonce._intent import Intent
from payonce._model import quick_init

__all__ = [
    "MAX_PROVIDER_KEY",
    "KeyMaterial",
    "Keys",
    "canonical_flat",
    "canonical_json",
    "fingerprint",
    "fingerprint_of",
    "length_prefixed",
]

MAX_PROVIDER_KEY: Final = 255  # Stripe's limit on Idempotency-Key
MIN_SECRET_BYTES: Final = 32
_PREFIX_CACHE: Final = 64
_DOMAIN_KEY: Final = "payonce/key/v1"
_DOMAIN_FAMILY: Final = "payonce/family/v1"
_DOMAIN_WINDOW_KEY: Final = "payonce/window-key/v1"
_DOMAIN_PROVIDER: Final = "payonce/provider-key/v1"


def canonical_json(value: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, strings unchanged (no Unicode normalisation).

    Intents reach it validated, so their money is integers; outcome bodies may hold finite
    floats, which Python's ``repr`` round-trips exactly.

    Raises:
        TypeError: for values JSON cannot represent.
        ValueError: for NaN and infinities.
    """
    if _make_encoder is None:
        return _CANONICAL.encode(value)
    # The C encoder ``json`` itself uses, without its per-call Python set-up (a third of the
    # cost of a small value); a fresh one per call keeps json's circular-reference check.
    return "".join(
        _make_encoder({}, _unsupported, _quote, None, ":", ",", True, False, False)(value, 0)
    )


_CANONICAL: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
# The C encoder of ``json`` (None on interpreters without ``_json``) and its string quoting for
# ensure_ascii=False (escapes only; non-ASCII text stays as it is).
_make_encoder: Final[Any] = getattr(json.encoder, "c_make_encoder", None)
_quote: Final = json.encoder.encode_basestring


def _unsupported(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def canonical_flat(value: list[Any] | dict[str, Any]) -> str:
    """``canonical_json`` of a list or dict of str, int, bool and None that payonce built
    itself: a ledger entry's fields, an entry's detail.

    Such a value cannot contain itself, so it needs no circular-reference check, and one encoder
    serves every call (a third faster than ``canonical_json`` for an entry). The bytes are the
    same. Values from callers (intents, outcome bodies) go through ``canonical_json``.
    """
    if _FLAT is None:
        return canonical_json(value)
    return "".join(_FLAT(value, 0))


_FLAT: Final[Any] = (
    None
    if _make_encoder is None
    else _make_encoder(None, _unsupported, _quote, None, ":", ",", True, False, False)
)


def length_prefixed(*fields: str) -> bytes:
    """Encode fields unambiguously: a 4-byte big-endian length, then the UTF-8 bytes, per field."""
    out = bytearray()
    for item in fields:
        data = item.encode("utf-8")
        out += len(data).to_bytes(4, "big")
        out += data
    return bytes(out)


def fingerprint(intent: Intent) -> str:
    """SHA-256 over the canonical full intent: detects reuse of a key with other parameters."""
    return fingerprint_of(canonical_json(intent.canonical()))


def fingerprint_of(intent_json: str) -> str:
    """The fingerprint of an intent already in canonical JSON (saves serialising it twice)."""
    return hashlib.sha256(intent_json.encode("utf-8")).hexdigest()


@quick_init
@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """What the guard needs to claim an intent.

    ``key`` is set for an intent with a reference. A reference-less intent has a ``family`` (the
    digest of its dedup material) instead; its key depends on the generation the dedup window
    picks, see ``Keys.window_key``.
    """

    key: str | None
    family: str | None


class Keys:
    """Derives keys for one deployment secret.

    Args:
        secret: at least 32 random bytes, e.g. ``secrets.token_bytes(32)``.
        version: the secret's version, a small integer. It prefixes every key (``k1_…``) and
            provider key (``po1_…``) so that a rotated secret is recognisable.

    Raises:
        ConfigurationError: for a secret that is not bytes or too short, or a bad version.
    """

    __slots__ = ("_mac", "_prefixed", "_secret", "version")

    def __init__(self, secret: bytes, *, version: int = 1) -> None:
        if not isinstance(secret, bytes | bytearray):
            raise ConfigurationError(
                "secret must be bytes (at least 32 random bytes, e.g. secrets.token_bytes(32)); "
                f"got {type(secret).__name__}"
            )
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"secret must be at least {MIN_SECRET_BYTES} bytes; got {len(secret)}. Generate "
                "one with secrets.token_bytes(32) and keep it in your secret manager."
            )
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= 999:
            raise ConfigurationError("secret version must be an integer from 1 to 999")
        self._secret = bytes(secret)
        # The keyed inner and outer states, computed once; each digest copies them.
        self._mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        # The same states with (domain, scope) already fed in: a guard derives every key of
        # one scope, so the shared prefix is hashed once. Bounded: cleared when full.
        self._prefixed: dict[tuple[str, str], Any] = {}
        self.version = version

    def __repr__(self) -> str:
        return f"Keys(secret=<{len(self._secret)} bytes, hidden>, version={self.version})"

    def _digest(self, domain: str, scope: str, *fields: str) -> str:
        base = self._prefixed.get((domain, scope))
        if base is None:
            if len(self._prefixed) >= _PREFIX_CACHE:
                self._prefixed.clear()
            base = self._mac.copy()
            base.update(length_prefixed(domain, scope))
            self._prefixed[(domain, scope)] = base
        mac = base.copy()
        mac.update(length_prefixed(*fields))
        return mac.hexdigest()

    def material(self, scope: str, intent: Intent) -> KeyMaterial:
        """The key (intent with a reference) or the dedup family (intent without one)."""
        if intent.reference is not None:
            digest = self._digest(
                _DOMAIN_KEY, scope, intent.operation, intent.reference, str(intent.sequence)
            )
            return KeyMaterial(key=f"k{self.version}_{digest}", family=None)
        counterparty = intent.counterparty
        assert counterparty is not None  # Intent refuses reference-less intents without one
        digest = self._digest(
            _DOMAIN_FAMILY,
            scope,
            intent.operation,
            counterparty,
            str(intent.amount),
            intent.currency,
            str(intent.sequence),
        )
        return KeyMaterial(key=None, family=f"f{self.version}_{digest}")

    def window_key(self, family: str, generation: int) -> str:
        """The key of generation ``generation`` of a reference-less family."""
        return f"k{self.version}_{self._digest(_DOMAIN_WINDOW_KEY, family, str(generation))}"

    def provider_key(self, scope: str, key: str) -> str:
        """The idempotency key sent to the provider; fixed at claim, reused by every retry."""
        out = f"po{self.version}_{self._digest(_DOMAIN_PROVIDER, scope, key)}"
        assert len(out) <= MAX_PROVIDER_KEY
        return out

    def same_secret(self, other: Keys) -> bool:
        """Constant-time comparison of two deployments' secrets."""
        return hmac.compare_digest(self._secret, other._secret)
