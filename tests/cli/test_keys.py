"""``payonce keys derive``: the same key and provider key the guard uses; no secret printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from payonce import Guard, Intent, MemoryStore
from payonce._keys import fingerprint
from tests.cli.conftest import Cli, Seeded, json_out
from tests.conftest import SECRET

SECRET_ENV = {"PAYONCE_SECRET": SECRET.hex()}
OPTIONS = (
    "--operation", "charge", "--amount", "5000", "--currency", "usd", "--customer", "cus_123",
    "--reference", "order-42",
)  # fmt: skip
INTENT = Intent("charge", 5000, "usd", customer="cus_123", reference="order-42")


def _guarded(intent: Intent, scope: str = "tenant-a") -> tuple[str, str]:
    guard = Guard(MemoryStore(), secret=SECRET, scope=scope)
    outcome = guard.run(intent, lambda attempt: {"ok": True})
    return outcome.key, outcome.provider_key


def _no_secret(text: str) -> None:
    assert SECRET.hex() not in text
    assert SECRET.decode() not in text


def test_options_give_the_guards_keys(cli: Cli) -> None:
    key, provider_key = _guarded(INTENT)
    done = cli("keys", "derive", "--scope", "tenant-a", *OPTIONS, "--json", env=SECRET_ENV)
    derived = json_out(done)
    assert derived["key"] == key
    assert derived["provider_key"] == provider_key
    assert derived["fingerprint"] == fingerprint(INTENT)
    assert derived["family"] is None
    _no_secret(done.stdout + done.stderr)
    table = cli("keys", "derive", "--scope", "tenant-a", *OPTIONS, env=SECRET_ENV)
    assert table.returncode == 0, table.stderr
    assert key in table.stdout
    assert provider_key in table.stdout
    _no_secret(table.stdout + table.stderr)


def test_json_intent_and_stdin_give_the_same_keys(cli: Cli) -> None:
    body = json.dumps(INTENT.canonical())
    by_options = json_out(
        cli("keys", "derive", "--scope", "s1", *OPTIONS, "--json", env=SECRET_ENV)
    )
    by_json = json_out(
        cli("keys", "derive", "--scope", "s1", "--intent-json", body, "--json", env=SECRET_ENV)
    )
    by_stdin = json_out(
        cli("keys", "derive", "--scope", "s1", "--intent-json", "-", "--json", env=SECRET_ENV,
            stdin=body)
    )  # fmt: skip
    assert by_options == by_json == by_stdin
    assert by_options["key"] == _guarded(INTENT, scope="s1")[0]


def test_scope_is_key_material(cli: Cli) -> None:
    a = json_out(cli("keys", "derive", "--scope", "tenant-a", *OPTIONS, "--json", env=SECRET_ENV))
    b = json_out(cli("keys", "derive", "--scope", "tenant-b", *OPTIONS, "--json", env=SECRET_ENV))
    assert a["key"] != b["key"]
    assert a["provider_key"] != b["provider_key"]


def test_params_and_metadata_options(cli: Cli) -> None:
    intent = Intent(
        "charge", 900, "eur", payment_method="tok_visa", reference="r-7", sequence=2,
        params={"description": "two shirts"}, metadata={"cart": "c-1"},
    )  # fmt: skip
    done = cli(
        "keys", "derive", "--scope", "tenant-a", "--operation", "charge", "--amount", "900",
        "--currency", "eur", "--payment-method", "tok_visa", "--reference", "r-7",
        "--sequence", "2", "--param", "description=two shirts", "--metadata", "cart=c-1",
        "--json", env=SECRET_ENV,
    )  # fmt: skip
    derived = json_out(done)
    assert derived["key"] == _guarded(intent)[0]
    assert derived["fingerprint"] == fingerprint(intent)


def test_secret_file(cli: Cli, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.hex"
    secret_file.write_text(SECRET.hex() + "\n", encoding="utf-8")
    by_file = json_out(
        cli("keys", "derive", "--scope", "tenant-a", *OPTIONS, "--secret-file", str(secret_file),
            "--json")
    )  # fmt: skip
    assert by_file["key"] == _guarded(INTENT)[0]


def test_reference_less_intent_gives_the_family_and_generation(seeded: Seeded, cli: Cli) -> None:
    intent = Intent("charge", 2500, "usd", customer="cus_77")
    args = ("keys", "derive", "--scope", "tenant-a", "--operation", "charge", "--amount", "2500",
            "--currency", "usd", "--customer", "cus_77", "--json")  # fmt: skip
    first = json_out(cli(*args, env=SECRET_ENV))
    assert first["family"].startswith("f1_")
    assert first["generation"] == 0
    assert first["key"] == _guarded(intent)[0]
    assert first["key"] != json_out(cli(*args, "--generation", "1", env=SECRET_ENV))["key"]
    seeded.add("window", intent)
    with_store = json_out(cli(*args, "--store", seeded.url, env=SECRET_ENV))
    assert with_store["newest_in_store"] == {
        "generation": 0,
        "key": seeded.keys["window"],
        "status": "SUCCEEDED",
    }


def test_an_invalid_intent_exits_2_with_the_intent_error(cli: Cli) -> None:
    done = cli(
        "keys", "derive", "--scope", "tenant-a", "--operation", "charge", "--amount", "5000",
        "--currency", "USD", "--customer", "cus_1", "--reference", "o", env=SECRET_ENV,
    )  # fmt: skip
    assert done.returncode == 2
    assert "currency: must be lowercase: use 'usd'" in done.stderr
    assert "Traceback" not in done.stderr
    failed: dict[str, Any] = json_out(
        cli("keys", "derive", "--scope", "t", "--intent-json", '{"operation": "charge"}',
            "--json", env=SECRET_ENV)
    )  # fmt: skip
    assert failed["error"] == "IntentError"
    assert failed["field"] == "amount"
    assert failed["exit_code"] == 2


def test_bad_json_and_mixed_input_exit_2(cli: Cli) -> None:
    bad = cli("keys", "derive", "--scope", "t", "--intent-json", "{nope", env=SECRET_ENV)
    assert bad.returncode == 2
    assert "not valid JSON" in bad.stderr
    both = cli("keys", "derive", "--scope", "t", "--intent-json", "{}", "--amount", "5",
               env=SECRET_ENV)  # fmt: skip
    assert both.returncode == 2
    assert "not both" in both.stderr
    assert "--amount" in both.stderr


def test_a_missing_or_malformed_secret_exits_2_without_echoing_it(cli: Cli, tmp_path: Path) -> None:
    missing = cli("keys", "derive", "--scope", "tenant-a", *OPTIONS)
    assert missing.returncode == 2
    assert "PAYONCE_SECRET" in missing.stderr
    assert "--secret-file" in missing.stderr
    not_hex = "this-is-not-hex-but-a-secret-value-0123456789"
    bad = cli("keys", "derive", "--scope", "tenant-a", *OPTIONS, env={"PAYONCE_SECRET": not_hex})
    assert bad.returncode == 2
    assert "hexadecimal" in bad.stderr
    assert not_hex not in bad.stdout + bad.stderr
    short = cli("keys", "derive", "--scope", "tenant-a", *OPTIONS, env={"PAYONCE_SECRET": "ab" * 8})
    assert short.returncode == 2
    assert "at least 32 bytes" in short.stderr
    unreadable = cli("keys", "derive", "--scope", "tenant-a", *OPTIONS, "--secret-file",
                     str(tmp_path / "absent"))  # fmt: skip
    assert unreadable.returncode == 2
    assert "cannot read --secret-file" in unreadable.stderr


def test_the_secret_is_not_an_option(cli: Cli) -> None:
    done = cli("keys", "derive", "--help")
    assert done.returncode == 0
    assert "--secret " not in done.stdout
    assert "--secret-file" in done.stdout


def test_messages_print_brackets_verbatim(cli: Cli) -> None:
    # Rich would read "[x]" as markup and drop it; the console prints data, not markup.
    done = cli("keys", "derive", "--scope", "tenant-a", *OPTIONS, "--param", "[x]", env=SECRET_ENV)
    assert done.returncode == 2
    assert "--param takes NAME=VALUE; got '[x]'" in done.stderr


def test_a_bad_scope_exits_2(cli: Cli) -> None:
    done = cli("keys", "derive", "--scope", " bad scope", *OPTIONS, env=SECRET_ENV)
    assert done.returncode == 2
    assert "scope must be" in done.stderr
