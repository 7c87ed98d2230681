"""What every command module shares: the typer applications the commands register on, the
consoles, common options, and printing helpers."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from gpustack_cli.config import Settings

app = typer.Typer(help="Pull, serve and run models from one process.", no_args_is_help=True)


keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


app.add_typer(keys_app, name="keys")


model_app = typer.Typer(help="Change a pulled model's settings.", no_args_is_help=True)


app.add_typer(model_app, name="model")


console = Console()


err = Console(stderr=True)


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


CtxSize = Annotated[
    int | None, typer.Option(min=0, help="llama.cpp: tokens of context per request slot (0: the server's).")
]


Parallel = Annotated[int | None, typer.Option(min=0, help="llama.cpp: requests decoded together (0: the server's).")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


def settings(**flags: Any) -> Settings:
    try:
        return Settings.load(**flags)
    except ValueError as exc:
        raise fail(str(exc)) from exc


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
