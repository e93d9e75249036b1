"""Keys, provider keys and fingerprints (DESIGN §4, SCENARIOS S2).

The golden vectors pin every digest payonce derives. If one of them changes, every key already
stored in a deployment stops matching its retries: that is a breaking change that needs a new
version prefix, never a silent edit of the vector.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import struct
import unicodedata

import pytest

from payonce import ConfigurationError, Intent
from payonce._keys import MAX_PROVIDER_KEY, Keys, canonical_json, fingerprint, length_prefixed

GOLDEN_SECRET = b"payonce-golden-secret-32-bytes!!"
GOLDEN_SCOPE = "tenant-a"

GOLDEN_KEY = "k1_1e2c0d2a8596b226f37e68d6b1a380520380d7ded9f6f43f89937b823ac7ffe0"
GOLDEN_PROVIDER_KEY = "po1_6bd57dfc511fc0d26c00c071c4f54b9bc3abe330ce0db8cbf9fe2477ffcdf800"
GOLDEN_FINGERPRINT = "0703e6c5bb01a9b51433eeba6913e590c20b81bf9452ea4c8c73d72fa2193b91"
GOLDEN_FAMILY = "f1_a825be0c4969a61aa993debba3c795ca6e292554ae4b7022c9469a7d97e5b88a"
GOLDEN_WINDOW_KEY_0 = "k1_1b7d9edd7225629e03d789f539a10fe1d7ba24e5614bd737618c481fd899fc0b"
GOLDEN_WINDOW_KEY_1 = "k1_20159be4654a3dacb394fa7c121d0dd23fcb5f7a08a5c3aab967176b5df1636f"
GOLDEN_FAMILY_FINGERPRINT = "312df82686b4f6253dfc34458487e681b2f06878039562d1ff060c1a73d12c05"
GOLDEN_LENGTH_PREFIXED = "0000000261620000000163"


def _referenced(**changes: object) -> Intent:
    fields: dict[str, object] = {
        "operation": "charge",
        "amount": 5000,
        "currency": "usd",
        "customer": "cus_123",
        "reference": "order-42",
    }
    fields.update(changes)
    return Intent(**fields)  # type: ignore[arg-type]


def _reference_less() -> Intent:
    return Intent("charge", 700, "usd", customer="cus_9")


@pytest.fixture
def keys() -> Keys:
    return Keys(GOLDEN_SECRET)


def _key(keys: Keys, intent: Intent, scope: str = GOLDEN_SCOPE) -> str:
    key = keys.material(scope, intent).key
    assert key is not None
    return key


def _family(keys: Keys, intent: Intent, scope: str = GOLDEN_SCOPE) -> str:
    family = keys.material(scope, intent).family
    assert family is not None
    return family


# --- golden vectors -------------------------------------------------------------------------


def test_golden_secret_is_long_enough() -> None:
    assert len(GOLDEN_SECRET) >= 32


def test_golden_key(keys: Keys) -> None:
    material = keys.material(GOLDEN_SCOPE, _referenced())
    assert material.key == GOLDEN_KEY
    assert material.family is None


def test_golden_provider_key(keys: Keys) -> None:
    assert keys.provider_key(GOLDEN_SCOPE, GOLDEN_KEY) == GOLDEN_PROVIDER_KEY


def test_golden_fingerprints() -> None:
    assert fingerprint(_referenced()) == GOLDEN_FINGERPRINT
    assert fingerprint(_reference_less()) == GOLDEN_FAMILY_FINGERPRINT


def test_golden_family_and_window_keys(keys: Keys) -> None:
    material = keys.material(GOLDEN_SCOPE, _reference_less())
    assert material.key is None
    assert material.family == GOLDEN_FAMILY
    assert keys.window_key(GOLDEN_FAMILY, 0) == GOLDEN_WINDOW_KEY_0
    assert keys.window_key(GOLDEN_FAMILY, 1) == GOLDEN_WINDOW_KEY_1


def test_golden_length_prefixed() -> None:
    assert length_prefixed("ab", "c").hex() == GOLDEN_LENGTH_PREFIXED


# --- the same vectors, computed from the documented construction, not from payonce ----------


def _independent_lp(*fields: str) -> bytes:
    return b"".join(struct.pack(">I", len(f.encode())) + f.encode() for f in fields)


def _independent_hmac(*fields: str) -> str:
    return hmac.new(GOLDEN_SECRET, _independent_lp(*fields), hashlib.sha256).hexdigest()


def test_key_matches_documented_construction() -> None:
    digest = _independent_hmac("payonce/key/v1", "tenant-a", "charge", "order-42", "0")
    assert f"k1_{digest}" == GOLDEN_KEY


def test_provider_key_matches_documented_construction() -> None:
    digest = _independent_hmac("payonce/provider-key/v1", "tenant-a", GOLDEN_KEY)
    assert f"po1_{digest}" == GOLDEN_PROVIDER_KEY


def test_family_and_window_keys_match_documented_construction() -> None:
    family = "f1_" + _independent_hmac(
        "payonce/family/v1", "tenant-a", "charge", "cus_9", "700", "usd", "0"
    )
    assert family == GOLDEN_FAMILY
    for generation, expected in ((0, GOLDEN_WINDOW_KEY_0), (1, GOLDEN_WINDOW_KEY_1)):
        window = "k1_" + _independent_hmac("payonce/window-key/v1", family, str(generation))
        assert window == expected


def test_fingerprint_matches_hand_written_canonical_json() -> None:
    # Written out by hand: sorted keys, no whitespace, optional fields left out when unset.
    text = (
        '{"amount":5000,"currency":"usd","customer":"cus_123","operation":"charge",'
        '"reference":"order-42","sequence":0}'
    )
    assert canonical_json(_referenced().canonical()) == text
    assert hashlib.sha256(text.encode()).hexdigest() == GOLDEN_FINGERPRINT


_JSON_VALUES = (
    {"b": 1, "a": [1, 2.5, None, True, False, 'é\u2028\x00"\\'], "c": {"z": -0.0, "y": 1e300}},
    "text",
    0,
    [],
    {},
    {"k": "v" * 1000},
)


@pytest.mark.parametrize("fast", [True, False], ids=["c-encoder", "json-fallback"])
def test_canonical_json_is_the_same_with_and_without_the_c_encoder(
    fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pinned against json.dumps with the canonical options, on both paths: the direct use of
    # json's C encoder must never change a byte of what is hashed or stored.
    if not fast:
        monkeypatch.setattr("payonce._keys._make_encoder", None)
    for value in _JSON_VALUES:
        expected = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        assert canonical_json(value) == expected
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):
        canonical_json(cycle)
    with pytest.raises(ValueError, match="not JSON compliant"):
        canonical_json({"x": math.nan})
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        canonical_json({"x": object()})


def test_length_prefixed_is_four_byte_big_endian_length_then_utf8() -> None:
    assert length_prefixed("ab", "c") == b"\x00\x00\x00\x02ab\x00\x00\x00\x01c"
    assert length_prefixed("é") == b"\x00\x00\x00\x02\xc3\xa9"  # length in bytes, not chars
    assert length_prefixed() == b""
    assert length_prefixed("") == b"\x00\x00\x00\x00"


# --- properties -----------------------------------------------------------------------------


def test_domain_separation_of_field_boundaries() -> None:
    assert length_prefixed("ab", "c") != length_prefixed("a", "bc")
    assert length_prefixed("abc") != length_prefixed("ab", "c")


def test_field_boundaries_separate_keys(keys: Keys) -> None:
    # Plain concatenation would make both "order-1" + "12" and "order-11" + "2" read "order-112".
    a = _key(keys, _referenced(reference="order-1", sequence=12))
    b = _key(keys, _referenced(reference="order-11", sequence=2))
    assert a != b


def test_key_provider_key_and_family_never_meet(keys: Keys) -> None:
    key = _key(keys, _referenced())
    family = _family(keys, _reference_less())
    digests = {
        key[3:],
        keys.provider_key(GOLDEN_SCOPE, key)[4:],
        family[3:],
        keys.window_key(family, 0)[3:],
    }
    assert len(digests) == 4


def test_scopes_give_different_keys(keys: Keys) -> None:
    intent = _referenced()
    assert _key(keys, intent, "tenant-a") != _key(keys, intent, "tenant-b")
    assert _family(keys, _reference_less(), "tenant-a") != _family(
        keys, _reference_less(), "tenant-b"
    )
    assert keys.provider_key("tenant-a", GOLDEN_KEY) != keys.provider_key("tenant-b", GOLDEN_KEY)


def test_other_secret_gives_other_key(keys: Keys) -> None:
    other = Keys(b"another-secret-of-at-least-32-bytes!")
    intent = _referenced()
    assert _key(other, intent) != _key(keys, intent)
    assert other.provider_key(GOLDEN_SCOPE, GOLDEN_KEY) != GOLDEN_PROVIDER_KEY
    assert _family(other, _reference_less()) != GOLDEN_FAMILY
    assert not keys.same_secret(other)
    assert keys.same_secret(Keys(GOLDEN_SECRET))


def test_sequence_is_key_material(keys: Keys) -> None:
    assert _key(keys, _referenced(sequence=1)) != _key(keys, _referenced(sequence=0))
    assert _key(keys, _referenced(sequence=0)) == GOLDEN_KEY


@pytest.mark.parametrize(
    "changes",
    [{"amount": 5001}, {"currency": "eur"}, {"amount": 100, "currency": "gbp"}],
    ids=["amount", "currency", "both"],
)
def test_amount_and_currency_are_not_key_material_but_are_fingerprinted(
    keys: Keys, changes: dict[str, object]
) -> None:
    changed = _referenced(**changes)
    assert _key(keys, changed) == GOLDEN_KEY
    assert fingerprint(changed) != GOLDEN_FINGERPRINT


def test_reference_less_amount_is_family_material(keys: Keys) -> None:
    other = Intent("charge", 701, "usd", customer="cus_9")
    assert _family(keys, other) != GOLDEN_FAMILY


def test_metadata_key_order_does_not_change_fingerprint() -> None:
    a = _referenced(metadata={"alpha": "1", "beta": "2", "gamma": "3"})
    b = _referenced(metadata={"gamma": "3", "alpha": "1", "beta": "2"})
    assert list(a.metadata) != list(b.metadata)
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != GOLDEN_FINGERPRINT


def test_unicode_is_not_normalised() -> None:
    nfc = unicodedata.normalize("NFC", "Café crème")
    nfd = unicodedata.normalize("NFD", "Café crème")
    assert nfc != nfd
    a = _referenced(metadata={"description": nfc})
    b = _referenced(metadata={"description": nfd})
    assert fingerprint(a) != fingerprint(b)
    assert nfd in canonical_json(b.canonical())


def test_provider_key_shape(keys: Keys) -> None:
    provider_key = keys.provider_key("s" * 1000, "k" * 1000)
    assert provider_key.startswith("po1_")
    assert len(provider_key) <= MAX_PROVIDER_KEY == 255
    assert len(provider_key) == 4 + 64


def test_secret_version_prefixes_every_digest() -> None:
    v2 = Keys(GOLDEN_SECRET, version=2)
    key = _key(v2, _referenced())
    assert key.startswith("k2_")
    assert key[3:] == GOLDEN_KEY[3:]  # same secret: the version only labels it
    assert v2.provider_key(GOLDEN_SCOPE, key).startswith("po2_")
    family = _family(v2, _reference_less())
    assert family.startswith("f2_")
    assert v2.window_key(family, 0).startswith("k2_")


def test_raw_reference_and_customer_never_appear_in_digests(keys: Keys) -> None:
    customer = "cus_RAWCUSTOMER77"
    reference = "order-RAW-REFERENCE-77"
    with_ref = Intent("charge", 5000, "usd", customer=customer, reference=reference)
    without_ref = Intent("charge", 5000, "usd", customer=customer)
    key = _key(keys, with_ref)
    family = _family(keys, without_ref)
    produced = [
        key,
        keys.provider_key(GOLDEN_SCOPE, key),
        family,
        keys.window_key(family, 0),
        keys.provider_key(GOLDEN_SCOPE, keys.window_key(family, 0)),
    ]
    for text in produced:
        for raw in (customer, reference, "RAWCUSTOMER", "RAW-REFERENCE"):
            assert raw.lower() not in text.lower()


@pytest.mark.parametrize(
    "secret",
    ["a-string-secret-that-is-long-enough-0123", bytearray(b"short"), b"", b"x" * 31, 12345],
    ids=["str", "short-bytearray", "empty", "31-bytes", "int"],
)
def test_keys_rejects_bad_secrets(secret: object) -> None:
    with pytest.raises(ConfigurationError, match=r"secret") as info:
        Keys(secret)  # type: ignore[arg-type]
    assert "token_bytes(32)" in info.value.message


def test_keys_accepts_exactly_32_bytes_and_bytearray() -> None:
    assert _key(Keys(bytearray(GOLDEN_SECRET)), _referenced()) == GOLDEN_KEY


@pytest.mark.parametrize("version", [0, -1, 1000, True, "1"])
def test_keys_rejects_bad_versions(version: object) -> None:
    with pytest.raises(ConfigurationError, match="version"):
        Keys(GOLDEN_SECRET, version=version)  # type: ignore[arg-type]


def test_repr_hides_the_secret(keys: Keys) -> None:
    text = repr(keys)
    assert "hidden" in text
    assert GOLDEN_SECRET.decode() not in text
    assert "payonce-golden" not in text
    assert GOLDEN_SECRET.hex() not in text
    assert repr(GOLDEN_SECRET) not in text


def test_canonical_json_form() -> None:
    value = {"b": [1, {"d": "é", "c": True}], "a": None}
    assert canonical_json(value) == '{"a":null,"b":[1,{"c":true,"d":"é"}]}'
    assert json.loads(canonical_json(value)) == value


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, [1, math.nan], {"a": {"b": (math.inf,)}}],
    ids=["nan", "inf", "-inf", "nan-in-list", "deep-inf"],
)
def test_canonical_json_rejects_non_finite_numbers(value: object) -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        canonical_json(value)


def test_canonical_json_keeps_finite_floats_exact() -> None:
    # Outcome bodies may carry a provider's float (a fee rate); repr round-trips exactly. Money
    # in intents is integers only, which Intent enforces before anything is serialised.
    value = {"rate": 0.1, "fee": 1.5}
    assert json.loads(canonical_json(value)) == value
    assert canonical_json(value) == '{"fee":1.5,"rate":0.1}'


def test_canonical_json_rejects_unrepresentable_values() -> None:
    with pytest.raises(TypeError):
        canonical_json({"a": object()})
