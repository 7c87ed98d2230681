"""`gpustack keys create|list|revoke`."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer
from rich.table import Table

from gpustack_cli.cli.shared import (
    JsonFlag,
    console,
    err,
    fail,
    keys_app,
    print_json,
    settings,
)
from gpustack_cli.config import parse_duration
from gpustack_cli.server.keys import KeyStore, Scope


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name to recognise the key by.")] = "",
    expires_in: Annotated[str | None, typer.Option(help="Lifetime, e.g. 30d, 12h.")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models the key may use (default all).")] = None,
    scope: Annotated[Scope, typer.Option(help="What the key may do.")] = Scope.inference,
) -> None:
    """Create an API key; it is printed once and only its hash is stored."""
    try:
        lifetime = parse_duration(expires_in) if expires_in else None
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if lifetime is not None and lifetime <= 0:
        raise fail("--expires-in must be positive")
    allowed = [m.strip() for m in (models or "").split(",") if m.strip()]
    record, key = KeyStore(settings().keys_file).create(name, lifetime, allowed, scope)
    err.print(f"Created key {record.id} ({record.scope.value}). Copy it now: it is not shown again.")
    sys.stdout.write(key + "\n")


@keys_app.command("list")
def keys_list(as_json: JsonFlag = False) -> None:
    """List API keys (never their secrets)."""
    keys = KeyStore(settings().keys_file).load()
    rows = [k.model_dump(mode="json", exclude={"hash"}) | {"expired": k.expired()} for k in keys]
    if as_json:
        print_json(rows)
        return
    table = Table("ID", "NAME", "SCOPE", "MODELS", "CREATED", "EXPIRES", box=None)
    for k in keys:
        expires = "never" if k.expires is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(k.expires))
        table.add_row(
            k.id,
            k.name,
            k.scope.value,
            ",".join(k.models) or "all",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created)),
            f"{expires} (expired)" if k.expired() else expires,
        )
    console.print(table if keys else "No keys: the server is open on loopback only.")


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id or name.")]) -> None:
    """Revoke an API key."""
    gone = KeyStore(settings().keys_file).revoke(key)
    if not gone:
        raise fail(f"no key with id or name '{key}'")
    console.print(f"revoked {', '.join(k.id for k in gone)}")
