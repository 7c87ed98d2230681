"""`gpustack run`: chat in the terminal, or a model of another kind once (speak, transcribe,
embed, rerank, an image)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gpustack_cli.cli import render
from gpustack_cli.cli.connection import ClientError, ImageAsk, Terminal, connect
from gpustack_cli.cli.repl import ChatOptions
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
    image: Annotated[
        Path | None,
        typer.Option(help="Image model: edit this image instead of starting from noise. Chat: ask about it."),
    ] = None,
    mask: Annotated[Path | None, typer.Option(help="PNG whose transparent pixels are the ones to edit.")] = None,
) -> None:
    """Run a model in the terminal: chat, or one answer, embedding or ranking."""
    from engines.base import EngineUnavailable

    config = settings()
    manifest = _pulled(config, name)
    name = manifest.name  # a pulled source (a path, a URL) is stored under a name of its own
    prompt = _with_stdin(prompt)
    try:
        with connect(config) as terminal:
            if "image" in manifest.categories:
                ask = ImageAsk(" ".join(prompt or []), size, steps, seed, image, mask)
                _run_image(terminal, name, ask, output or Path("out.png"))
            elif "text_to_speech" in manifest.categories:
                _run_speech(terminal, name, " ".join(prompt or []), output or Path("out.wav"), voice, play)
            elif "speech_to_text" in manifest.categories:
                _run_transcription(terminal, name, prompt or [], fmt or "text")
            elif rerank is not None or "llm" not in manifest.categories:
                _run_once(terminal, manifest.categories, name, rerank, prompt or [])
            elif fmt not in (None, "json"):
                raise fail("--format for a chat model is json (an answer in JSON)")
            else:
                options = ChatOptions(max_tokens=max_tokens, json=fmt == "json")
                _run_chat(terminal, name, prompt, system, options, verbose, image)
    except typer.Exit:
        raise
    except (EngineUnavailable, ClientError) as exc:
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


def _run_chat(
    terminal: Terminal,
    name: str,
    prompt: list[str] | None,
    system: str | None,
    options: ChatOptions,
    verbose: bool,
    image: Path | None,
) -> None:
    from gpustack_cli.cli.repl import Session, ask, read_image, repl

    try:
        images = [read_image(str(image))] if image else []
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if not prompt:
        session = Session(terminal, name, system, options, verbose)
        session.images = images
        repl(session, console)
        return
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    user = {"role": "user", "content": " ".join(prompt), "images": images}
    ask(terminal, name, [*messages, user], options, console, verbose)


def _run_image(terminal: Terminal, name: str, ask: ImageAsk, output: Path) -> None:
    if not ask.prompt:
        raise fail('give a prompt: gpustack run MODEL "a lighthouse at dawn" -o out.png')
    with render.diffusion_steps(err, ask.steps) as on_step:
        data = terminal.call(terminal.connection.image(name, ask, on_step))
    output.write_bytes(data)
    console.print(f"wrote {output} ({human_size(len(data))})")


def _run_speech(terminal: Terminal, name: str, text: str, output: Path, voice: str | None, play: bool) -> None:
    import shutil
    import subprocess

    if not text:
        raise fail('give the text to speak: gpustack run MODEL "some text" -o out.wav')
    fmt = output.suffix.lstrip(".").lower() or "wav"
    if fmt not in ("wav", "mp3", "flac", "opus", "aac", "pcm"):
        raise fail(f"cannot write .{fmt}: use .wav, .mp3, .flac, .opus, .aac or .pcm")
    output.write_bytes(terminal.call(terminal.connection.speak(name, text, fmt, voice)))
    console.print(f"wrote {output} ({human_size(output.stat().st_size)})")
    if play:
        player = next((p for p in ("ffplay", "afplay", "paplay", "aplay") if shutil.which(p)), None)
        if player is None:
            raise fail("no audio player found (ffplay, afplay, paplay or aplay)")
        extra = ["-nodisp", "-autoexit", "-loglevel", "error"] if player == "ffplay" else []
        subprocess.run([player, *extra, str(output)], check=False)


def _run_transcription(terminal: Terminal, name: str, files: list[str], fmt: str) -> None:
    if len(files) != 1 or not Path(files[0]).is_file():
        raise fail("give one audio file to transcribe: gpustack run MODEL speech.wav [--format srt]")
    if fmt not in ("text", "json", "srt", "vtt"):
        raise fail("--format must be text, json, srt or vtt")
    transcript = terminal.call(terminal.connection.transcribe(name, Path(files[0]), fmt))
    sys.stdout.write(transcript.rstrip("\n") + "\n")


def _run_once(terminal: Terminal, categories: list, name: str, query: str | None, texts: list[str]) -> None:
    if query is not None:
        if "reranker" not in categories:
            raise fail(f"model '{name}' cannot rerank")
        if not texts:
            raise fail("give the documents to rank after the query: --rerank QUERY DOC1 DOC2 ...")
        render.ranking(terminal.call(terminal.connection.rerank(name, query, texts)), texts, console)
        return
    if "embedding" not in categories and "reranker" in categories:
        raise fail(f"'{name}' is a reranker: gpustack run {name} --rerank QUERY DOC1 DOC2 ...")
    if "embedding" in categories:
        if not texts:
            raise fail('give the text to embed: gpustack run MODEL "some text"')
        render.embedding(terminal.call(terminal.connection.embed(name, [" ".join(texts)]))[0], console)
        return
    # Each engine brings its terminal mode along with its API (steps 4 and 5 of the roadmap).
    raise fail(f"`gpustack run` does not drive {', '.join(categories)} models yet; use `gpustack serve` and the API")
