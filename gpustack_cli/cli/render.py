"""How the terminal shows what a command got back (rich): a chat answer as it streams and its
timings, the loaded models, a ranking, an embedding, a diffusion's steps."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from gpustack_cli.core.types import Event, Finished, TextDelta
from gpustack_cli.runtime.scheduler import placed_bytes


@dataclass
class Stats:
    """One answer's counts and times, as `--verbose` prints them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token: float | None = None  # seconds from the request to the first piece
    total: float = 0.0

    def lines(self) -> list[str]:
        generating = self.total - (self.first_token or 0.0)
        rate = self.completion_tokens / generating if generating > 0 and self.completion_tokens > 1 else 0.0
        prompt_rate = self.prompt_tokens / self.first_token if self.first_token else 0.0
        return [
            f"total duration:       {self.total:.3f}s",
            f"prompt eval count:    {self.prompt_tokens} token(s)",
            f"time to first token:  {self.first_token or 0.0:.3f}s",
            f"prompt eval rate:     {prompt_rate:.2f} tokens/s",
            f"eval count:           {self.completion_tokens} token(s)",
            f"eval duration:        {generating:.3f}s",
            f"eval rate:            {rate:.2f} tokens/s",
        ]


def answer(events: Iterator[Event], console: Console, verbose: bool = False) -> str:
    """Print a chat answer as it streams (and its timings with `verbose`); Ctrl-C stops it and
    keeps what came so far. The answer's text."""
    stats, text = Stats(), ""
    started = time.perf_counter()
    try:
        for event in events:
            if isinstance(event, TextDelta) and event.text:
                if stats.first_token is None:
                    stats.first_token = time.perf_counter() - started
                console.out(event.text, end="", highlight=False)
                text += event.text
            elif isinstance(event, Finished):
                stats.prompt_tokens, stats.completion_tokens = event.prompt_tokens, event.completion_tokens
    except KeyboardInterrupt:
        console.print("\n[dim]stopped[/]", end="")
    stats.total = time.perf_counter() - started
    console.out("")
    if verbose:
        console.print("\n".join(stats.lines()), style="dim", highlight=False)
    return text


def placement(places: list[dict[str, Any]] | None) -> str:
    """Where a llama.cpp model is: each device with layers, their count and what the device holds."""
    from gpustack_cli.cli.shared import human_size

    shown = []
    for place in places or []:
        if place.get("layers"):
            shown.append(f"{place['device']}: {place['layers']} layers, {human_size(placed_bytes(place))}")
    return "\n".join(shown) or "-"


def loaded_models(models: list[dict[str, Any]], console: Console) -> None:
    table = Table("NAME", "SLOTS BUSY", "WAITING", "CONTEXT", "LOADED FOR", "UNLOADS IN", "WHERE", box=None)
    for m in models:
        expires = "forever" if m["expires_in"] is None and m["active"] == 0 else m["expires_in"]
        until = f"{expires:.0f}s" if isinstance(expires, float) else (expires or "busy")
        context = str(m["context"]) if m.get("context") else "-"
        if m.get("context_from") == "memory":  # chosen from the free memory, none being set
            context += " (fit)"
        kv = m.get("kv_cache") or {}
        if kv and (kv.get("type_k"), kv.get("type_v")) != ("f16", "f16"):  # a quantized KV cache
            context += f"\nKV {kv['type_k']}/{kv['type_v']}"
        slots = f"{m['active']}/{m['concurrency']}"
        where = placement(m.get("placement"))
        draft = m.get("draft")
        if draft:  # speculative decoding: what its drafts proposed and what the model kept
            where += f"\n{draft['kind']} drafts: {draft['accepted_tokens']} of {draft['drafted_tokens']} tokens kept"
        table.add_row(m["name"], slots, str(m["waiting"]), context, f"{m['loaded_for']:.0f}s", until, where)
    console.print(table if models else "No models loaded.")


def ranking(ranked: list[tuple[int, float]], documents: list[str], console: Console) -> None:
    table = Table("RANK", "SCORE", "INDEX", "DOCUMENT", box=None)
    for rank, (index, score) in enumerate(ranked, start=1):
        table.add_row(str(rank), f"{score:.4f}", str(index), documents[index])
    console.print(table)


def embedding(vector: list[float], console: Console) -> None:
    head = ", ".join(f"{v:.4f}" for v in vector[:8])
    console.print(f"{len(vector)} dimensions: [{head}, …]")


@contextmanager
def diffusion_steps(console: Console, steps: int | None) -> Iterator[Callable[[int, int], None]]:
    """A progress bar of a diffusion's steps; what it yields is the engine's step callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]steps"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as progress:
        task = progress.add_task("steps", total=steps)

        def on_step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield on_step
