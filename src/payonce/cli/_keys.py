"""``payonce keys derive``: the key and provider key payonce uses for an intent."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from payonce._guard import Guard
from payonce._intent import Intent
from payonce._keys import MIN_SECRET_BYTES, fingerprint
from payonce.cli._common import (
    JsonOption,
    Out,
    UsageError,
    env,
    handled,
    open_for_reading,
)
from payonce.stores import MemoryStore

__all__ = ["keys_app"]

keys_app = typer.Typer(
    name="keys",
    help="Compute keys for debugging (no secret is ever printed).",
    no_args_is_help=True,
)


def _pairs(values: list[str] | None, option: str) -> dict[str, Any] | None:
    if not values:
        return None
    out: dict[str, Any] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{option} takes NAME=VALUE; got {item!r}")
        out[name] = value
    return out


@keys_app.command("derive")
def derive(
    scope: Annotated[
        str, typer.Option("--scope", help="The scope (tenant, optionally agent) of the intent.")
    ],
    operation: Annotated[str | None, typer.Option(help="charge, refund, payout, …")] = None,
    amount: Annotated[int | None, typer.Option(help="In minor units: 1000 is $10.00.")] = None,
    currency: Annotated[str | None, typer.Option(help="Lowercase ISO 4217, e.g. usd.")] = None,
    customer: Annotated[str | None, typer.Option(help="cus_…")] = None,
    payment_method: Annotated[str | None, typer.Option(help="pm_…, tok_…")] = None,
    destination: Annotated[str | None, typer.Option(help="acct_…, ba_…")] = None,
    target: Annotated[str | None, typer.Option(help="ch_… or pi_… (refund, capture)")] = None,
    reference: Annotated[str | None, typer.Option(help="The business id (order, …).")] = None,
    sequence: Annotated[int | None, typer.Option(help="0 unless a further movement.")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(metavar="NAME=VALUE", help="A provider parameter (string); repeatable."),
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(metavar="NAME=VALUE", help="Provider metadata; repeatable."),
    ] = None,
    intent_json: Annotated[
        str | None,
        typer.Option(
            "--intent-json",
            metavar="TEXT",
            help="The whole intent as a JSON object instead of the options; '-' reads stdin.",
        ),
    ] = None,
    secret_file: Annotated[
        Path | None,
        typer.Option(
            "--secret-file",
            metavar="PATH",
            help="A file holding the HMAC secret as hex. Default: the environment variable "
            "PAYONCE_SECRET (hex).",
            dir_okay=False,
        ),
    ] = None,
    secret_version: Annotated[
        int, typer.Option("--secret-version", min=1, max=999, help="The secret's version.")
    ] = 1,
    generation: Annotated[
        int,
        typer.Option(
            "--generation",
            min=0,
            help="For an intent without a reference: which dedup-window generation's key.",
        ),
    ] = 0,
    store_url: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="PAYONCE_STORE",
            metavar="URL",
            show_envvar=True,
            help="Optional: for an intent without a reference, read the newest generation of "
            "its family from this store.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Compute the key, provider key and fingerprint of an intent, as the guard would.

    Give the intent as options (--operation --amount --currency and the rest) or as JSON
    (--intent-json). The secret comes only from PAYONCE_SECRET or --secret-file and is never
    printed. An invalid intent exits 2 with the reason.
    """
    out = Out(as_json)
    with handled(out):
        fields = {
            "operation": operation,
            "amount": amount,
            "currency": currency,
            "customer": customer,
            "payment_method": payment_method,
            "destination": destination,
            "target": target,
            "reference": reference,
            "sequence": sequence,
            "params": _pairs(param, "--param"),
            "metadata": _pairs(metadata, "--metadata"),
        }
        given = {name: value for name, value in fields.items() if value is not None}
        intent = _intent(given, intent_json)
        guard = Guard(
            MemoryStore(), secret=_secret(secret_file), scope=scope, secret_version=secret_version
        )
        keys = guard.keys
        material = keys.material(scope, intent)
        data: dict[str, Any] = {"scope": scope, "fingerprint": fingerprint(intent)}
        if material.key is not None:
            data.update(key=material.key, family=None, generation=None)
        else:
            assert material.family is not None
            newest = _newest(store_url, scope, material.family)
            data["family"] = material.family
            if newest is not None:
                data["newest_in_store"] = {
                    "generation": newest[0],
                    "key": newest[1],
                    "status": newest[2],
                }
            data.update(generation=generation, key=keys.window_key(material.family, generation))
        data["provider_key"] = keys.provider_key(scope, data["key"])
    if out.json:
        out.emit(data)
        return
    table = Table(title="Keys of the intent", show_header=False, title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("scope", scope)
    table.add_row("key", data["key"])
    table.add_row("provider key", data["provider_key"])
    table.add_row("fingerprint", data["fingerprint"])
    if data["family"] is not None:
        table.add_row("family", data["family"])
        table.add_row("generation", str(data["generation"]))
        newest_seen = data.get("newest_in_store")
        if newest_seen is not None:
            table.add_row(
                "newest in store",
                f"generation {newest_seen['generation']}: {newest_seen['key']} "
                f"({newest_seen['status']})",
            )
    out.console.print(table)
    if data["family"] is not None:
        out.console.print(
            "Without a reference the key depends on the dedup window: a retry reuses the newest "
            "generation while it is unresolved or younger than the window, else the next one."
        )


def _intent(given: dict[str, Any], intent_json: str | None) -> Intent:
    if intent_json is None:
        return Intent.from_dict(given)
    if given:
        raise UsageError(
            "give the intent either as options or as --intent-json, not both; drop "
            + ", ".join("--" + name.replace("_", "-") for name in sorted(given))
        )
    text = sys.stdin.read() if intent_json == "-" else intent_json
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--intent-json is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}); pass an object such as "
            '{"operation": "charge", "amount": 1000, "currency": "usd", "reference": "order-1", '
            '"customer": "cus_123"}'
        ) from None
    if not isinstance(data, dict):
        raise UsageError(f"--intent-json must be a JSON object; got {type(data).__name__}")
    return Intent.from_dict(data)


def _secret(secret_file: Path | None) -> bytes:
    if secret_file is not None:
        try:
            text = secret_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(
                f"cannot read --secret-file {secret_file} ({exc.strerror}); check the path and "
                "its permissions"
            ) from None
        where = f"--secret-file {secret_file}"
    else:
        value = env("PAYONCE_SECRET")
        if value is None:
            raise UsageError(
                "no HMAC secret: set the environment variable PAYONCE_SECRET to the deployment's "
                "secret as hex, or pass --secret-file PATH (the secret is never an option value)"
            )
        text, where = value, "PAYONCE_SECRET"
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        # The message never echoes the value: it is a secret (I8).
        raise UsageError(
            f"{where} must hold the secret as hexadecimal (e.g. from secrets.token_hex(32))"
        ) from None
    if len(secret) < MIN_SECRET_BYTES:
        raise UsageError(
            f"{where} holds {len(secret)} bytes; the secret is at least {MIN_SECRET_BYTES} bytes "
            f"({2 * MIN_SECRET_BYTES} hex digits). Use the deployment's secret."
        )
    return secret


def _newest(url: str | None, scope: str, family: str) -> tuple[int, str, str] | None:
    """The newest record of ``family``, when a store was named and exists."""
    if url is None:
        return None
    store = open_for_reading(url)
    try:
        newest = store.newest(scope, family)
    finally:
        store.close()
    if newest is None:
        return None
    return newest.generation, newest.key, newest.status.value
