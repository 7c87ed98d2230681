"""The `gpustack` command line: the typer application with every command group registered on
it (each command parses, calls the library and prints with rich), its global options, and
`version`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from gpustack_cli import __version__

# Each command module registers its commands on `app` as it is imported, in the order `--help`
# lists them: the server first, then the store, running, keys.
from gpustack_cli.cli import serving  # noqa: F401

# isort: split
from gpustack_cli.cli import model_commands  # noqa: F401

# isort: split
from gpustack_cli.cli import running  # noqa: F401

# isort: split
from gpustack_cli.cli import key_commands  # noqa: F401
from gpustack_cli.cli.shared import (
    JsonFlag,
    app,
    console,
    human_size,
    print_json,
    settings,
)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"gpustack {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    _version: Annotated[
        bool,
        typer.Option("--version", "-v", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Pull, serve and run models from one process."""


@app.command()
def version(
    verbose: Annotated[
        bool, typer.Option("--verbose", help="What this build can do here: engines, llama.cpp, GPUs, devices.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Print the version; with --verbose, what this gpustack can do on this machine."""
    if not verbose and not as_json:
        console.print(f"gpustack {__version__}")
        return
    from gpustack_cli.cli.about import report

    data = report(settings()) if verbose else {"version": __version__}
    if as_json:
        print_json(data)
        return
    _print_report(data)


def _print_report(data: dict[str, Any]) -> None:
    console.print(
        f"gpustack {data['version']} ({'binary' if data['binary'] else 'Python ' + data['python']}, {data['platform']})"
    )
    table = Table("ENGINE", "BUNDLED", "VERSION", box=None)
    for name, engine in data["engines"].items():
        missing = ", ".join(engine.get("missing", []))
        table.add_row(name, "yes" if engine["bundled"] else f"no ({missing})", engine.get("version") or "")
    console.print(table)
    llama = data["llama_cpp"]
    if "system_info" in llama:
        offload = "GPU offload" if llama["gpu_offload"] else "CPU only"
        rpc = "RPC built in" if llama["rpc"] else "no RPC (build with -DGGML_RPC=ON)"
        console.print(f"llama.cpp: {offload}, {rpc}; {llama['system_info']}")
    for gpu in data["gpus"] or [{"name": "none seen"}]:
        memory = f", {gpu['memory_mib']} MiB" if "memory_mib" in gpu else ""
        console.print(f"GPU: {gpu.get('name') or gpu.get('error')}{memory}")
    torch = data["torch"]
    if "device" in torch:
        console.print(f"torch {torch['version']}: {torch['device']} (diffusers, sentence-transformers)")
    ct2 = data["ctranslate2"]
    if "cpu" in ct2:
        cuda = f"; cuda: {', '.join(ct2['cuda'])}" if "cuda" in ct2 else ""
        console.print(f"CTranslate2 {ct2['version']} compute types, cpu: {', '.join(ct2['cpu'])}{cuda}")
    store = data["store"]
    console.print(f"store: {store['path']} ({store['models']} models, {human_size(store['size'])})")


def main() -> None:
    app()
