"""`gpustack run`: chat in the terminal, or a model of another kind once (speak, transcribe,
embed, rerank, an image)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gpustack_cli.cli.shared import (
    app,
    console,
    err,
    fail,
    human_size,
    settings,
)
from gpustack_cli.config import Settings
from gpustack_cli.models.store import Manifest, ModelStore, StoreError


@app.command()
def run(
    name: str,
    prompt: Annotated[
        list[str] | None, typer.Argument(help="A prompt (chat), a text (embeddings) or documents.")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest answer, in tokens.")] = None,
    rerank: Annotated[str | None, typer.Option("--rerank", help="Rank the given documents for this query.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where speech goes (.wav, .mp3, ...).")] = None,
    voice: Annotated[str | None, typer.Option(help="Voice of a speech model.")] = None,
    play: Annotated[bool, typer.Option("--play", help="Play the speech when a player is installed.")] = False,
    fmt: Annotated[
        str | None, typer.Option("--format", help="Chat: json (answer in JSON). Transcript: text, json, srt, vtt.")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Chat: print token counts and timings after each answer.")
    ] = False,
    size: Annotated[str, typer.Option(help="Image size, WIDTHxHEIGHT or auto.")] = "auto",
    steps: Annotated[int | None, typer.Option(help="Diffusion steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed: the same seed makes the same image.")] = None,
    image: Annotated[Path | None, typer.Option(help="Edit this image instead of starting from noise.")] = None,
    mask: Annotated[Path | None, typer.Option(help="PNG whose transparent pixels are the ones to edit.")] = None,
) -> None:
    """Run a model in the terminal: chat, or one answer, embedding or ranking."""
    from engines.base import EngineUnavailable

    config = settings()
    manifest = _pulled(config, name)
    name = manifest.name  # a pulled source (a path, a URL) is stored under a name of its own
    prompt = _with_stdin(prompt)
    try:
        if "image" in manifest.categories:
            _run_image(config, name, " ".join(prompt or []), output or Path("out.png"), size, steps, seed, image, mask)
            return
        if "text_to_speech" in manifest.categories:
            _run_speech(config, name, " ".join(prompt or []), output or Path("out.wav"), voice, play)
            return
        if "speech_to_text" in manifest.categories:
            _run_transcription(config, name, prompt or [], fmt or "text")
            return
        if rerank is not None or "llm" not in manifest.categories:
            _run_once(config, manifest.categories, name, rerank, prompt or [])
            return
        from gpustack_cli.cli.repl import ChatOptions, Session, answer, backend_for, repl

        if fmt not in (None, "json"):
            raise fail("--format for a chat model is json (an answer in JSON)")
        options = ChatOptions(max_tokens=max_tokens, json=fmt == "json")
        backend = backend_for(config, name)
        if not prompt:
            repl(Session(backend, name, system, options, verbose), console)
            return
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": " ".join(prompt)}
        ]
        answer(backend, messages, console, options, verbose)
    except typer.Exit:
        raise
    except (EngineUnavailable, RuntimeError) as exc:
        raise fail(str(exc)) from exc


def _pulled(config: Settings, name: str) -> Manifest:
    """The model's manifest, pulled first (with the progress bars) when the store lacks it."""
    from gpustack_cli.models.store import InvalidModelName, ModelNotFound

    store = ModelStore(config.home)
    try:
        return store.get(name)
    except (ModelNotFound, InvalidModelName):  # not a stored name: a catalog name or a source
        pass
    except StoreError as exc:
        raise fail(str(exc)) from exc
    from gpustack_cli.cli.progress import RichProgress
    from gpustack_cli.models.pull import Puller, PullError

    err.print(f"[dim]{name} is not in the store: pulling it[/]")
    try:
        return Puller(config, RichProgress(err)).pull(name)
    except (PullError, StoreError) as exc:
        raise fail(str(exc)) from exc
    except KeyboardInterrupt:
        raise fail("interrupted; run the same command again to resume the pull", 130) from None


def _with_stdin(prompt: list[str] | None) -> list[str] | None:
    """The prompt with what was piped in after it (`cat notes.txt | gpustack run MODEL "summarise"`)."""
    if sys.stdin is None or sys.stdin.isatty():
        return prompt
    piped = sys.stdin.read()
    if not piped.strip():
        return prompt
    return [*(prompt or []), ("\n\n" if prompt else "") + piped.strip()]


def _run_image(
    config: Settings,
    name: str,
    prompt: str,
    output: Path,
    size: str,
    steps: int | None,
    seed: int | None,
    image: Path | None,
    mask: Path | None,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from gpustack_cli.cli import oneshot

    if not prompt:
        raise fail('give a prompt: gpustack run MODEL "a lighthouse at dawn" -o out.png')
    with Progress(
        TextColumn("[bold]steps"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err
    ) as progress:
        task = progress.add_task("steps", total=steps)

        def on_step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        data = oneshot.image(config, name, prompt, size, steps, seed, image, mask, on_step)
    output.write_bytes(data)
    console.print(f"wrote {output} ({human_size(len(data))})")


def _run_speech(config: Settings, name: str, text: str, output: Path, voice: str | None, play: bool) -> None:
    import shutil
    import subprocess

    from gpustack_cli.cli import oneshot

    if not text:
        raise fail('give the text to speak: gpustack run MODEL "some text" -o out.wav')
    fmt = output.suffix.lstrip(".").lower() or "wav"
    if fmt not in ("wav", "mp3", "flac", "opus", "aac", "pcm"):
        raise fail(f"cannot write .{fmt}: use .wav, .mp3, .flac, .opus, .aac or .pcm")
    output.write_bytes(oneshot.speak(config, name, text, fmt, voice))
    console.print(f"wrote {output} ({human_size(output.stat().st_size)})")
    if play:
        player = next((p for p in ("ffplay", "afplay", "paplay", "aplay") if shutil.which(p)), None)
        if player is None:
            raise fail("no audio player found (ffplay, afplay, paplay or aplay)")
        extra = ["-nodisp", "-autoexit", "-loglevel", "error"] if player == "ffplay" else []
        subprocess.run([player, *extra, str(output)], check=False)


def _run_transcription(config: Settings, name: str, files: list[str], fmt: str) -> None:
    from gpustack_cli.cli import oneshot

    if len(files) != 1 or not Path(files[0]).is_file():
        raise fail("give one audio file to transcribe: gpustack run MODEL speech.wav [--format srt]")
    if fmt not in ("text", "json", "srt", "vtt"):
        raise fail("--format must be text, json, srt or vtt")
    sys.stdout.write(oneshot.transcribe(config, name, Path(files[0]), fmt).rstrip("\n") + "\n")


def _run_once(config: Settings, categories: list, name: str, query: str | None, texts: list[str]) -> None:
    from gpustack_cli.cli import oneshot

    if query is not None:
        if "reranker" not in categories:
            raise fail(f"model '{name}' cannot rerank")
        if not texts:
            raise fail("give the documents to rank after the query: --rerank QUERY DOC1 DOC2 ...")
        table = Table("RANK", "SCORE", "INDEX", "DOCUMENT", box=None)
        for rank, (index, score) in enumerate(oneshot.rerank(config, name, query, texts), start=1):
            table.add_row(str(rank), f"{score:.4f}", str(index), texts[index])
        console.print(table)
        return
    if "embedding" not in categories and "reranker" in categories:
        raise fail(f"'{name}' is a reranker: gpustack run {name} --rerank QUERY DOC1 DOC2 ...")
    if "embedding" in categories:
        if not texts:
            raise fail('give the text to embed: gpustack run MODEL "some text"')
        vector = oneshot.embed_one(config, name, " ".join(texts))
        head = ", ".join(f"{v:.4f}" for v in vector[:8])
        console.print(f"{len(vector)} dimensions: [{head}, …]")
        return
    # Each engine brings its terminal mode along with its API (steps 4 and 5 of the roadmap).
    raise fail(f"`gpustack run` does not drive {', '.join(categories)} models yet; use `gpustack serve` and the API")
