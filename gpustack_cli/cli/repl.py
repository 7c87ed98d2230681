"""`gpustack run CHAT_MODEL`: a chat in the terminal, against the running server when one answers
(`GPUSTACK_HOST`, `GPUSTACK_API_KEY`), else with the model loaded in this process. The REPL's
commands are Ollama's where they exist (`/set parameter`, `/set system`, `/show info`)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import httpx
from rich.console import Console

from engines.base import Sampling, TextGenerator
from gpustack_cli.cli.server_client import checked, server_answers
from gpustack_cli.config import Settings
from gpustack_cli.core.prompts import prepare_chat
from gpustack_cli.core.streams import stream_chat
from gpustack_cli.core.types import ChatMessage, ChatRequest, Finished, TextDelta
from gpustack_cli.models.loading import load_model
from gpustack_cli.models.store import ModelStore

HELP = """Commands:
  /set parameter NAME VALUE  temperature, top_p, top_k, seed, num_predict, stop
  /set system TEXT           the system prompt, anew (also /system TEXT)
  /set format json|text      answers in JSON, or in words
  /set verbose               token counts and timings after each answer
  /show info                 the model, where it runs, its settings
  /clear                     forget the conversation
  /bye                       leave (Ctrl-D works too)
  \"\"\"                        start or end a multi-line message
Ctrl-C stops an answer; a second Ctrl-C at the prompt leaves."""


@dataclass
class ChatOptions:
    """What `run` and `/set` can change of each answer."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    json: bool = False


# `/set parameter` names (Ollama's) and the option each sets.
PARAMETERS = {
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "seed": ("seed", int),
    "num_predict": ("max_tokens", int),
    "max_tokens": ("max_tokens", int),
}


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


class ChatBackend(Protocol):
    where: str
    stats: Stats

    def stream(self, messages: list[dict[str, str]], options: ChatOptions) -> Iterator[str]: ...


class RemoteChat:
    def __init__(self, settings: Settings, model: str):
        self.url = settings.url + "/v1/chat/completions"
        self.headers = settings.client_headers
        self.model = model
        self.where = settings.url
        self.stats = Stats()

    def stream(self, messages: list[dict[str, str]], options: ChatOptions) -> Iterator[str]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **{k: v for k, v in asdict(options).items() if k not in ("json", "stop") and v is not None},
        }
        if options.stop:
            body["stop"] = options.stop
        if options.json:
            body["response_format"] = {"type": "json_object"}
        self.stats = Stats()
        started = time.perf_counter()
        with httpx.stream("POST", self.url, json=body, headers=self.headers, timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                checked(response)
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"]["message"])
                if chunk.get("usage"):
                    self.stats.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    self.stats.completion_tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices", []):
                    if choice["delta"].get("content"):
                        if self.stats.first_token is None:
                            self.stats.first_token = time.perf_counter() - started
                        yield choice["delta"]["content"]
        self.stats.total = time.perf_counter() - started


class LocalChat:
    def __init__(self, settings: Settings, model: str):
        engine = load_model(ModelStore(settings.home), model, settings)
        if not isinstance(engine, TextGenerator):
            raise RuntimeError(f"model '{model}' cannot chat")
        self.engine = engine
        self.where = "this process"
        self.stats = Stats()

    def stream(self, messages: list[dict[str, str]], options: ChatOptions) -> Iterator[str]:
        sampling = Sampling.of(
            temperature=options.temperature, top_p=options.top_p, top_k=options.top_k, seed=options.seed
        )
        chat = ChatRequest(
            [ChatMessage(m["role"], m["content"]) for m in messages],
            sampling,
            max_tokens=options.max_tokens,
            stop=list(options.stop),
            json_schema={"type": "object"} if options.json else None,
        )
        self.stats = Stats()
        started = time.perf_counter()
        prepared = prepare_chat(self.engine, chat)
        for event in stream_chat(self.engine, prepared, threading.Event()):
            if isinstance(event, TextDelta):
                if self.stats.first_token is None:
                    self.stats.first_token = time.perf_counter() - started
                yield event.text
            elif isinstance(event, Finished):
                self.stats.prompt_tokens, self.stats.completion_tokens = event.prompt_tokens, event.completion_tokens
        self.stats.total = time.perf_counter() - started


def backend_for(settings: Settings, model: str) -> ChatBackend:
    return RemoteChat(settings, model) if server_answers(settings) else LocalChat(settings, model)


def answer(
    backend: ChatBackend, messages: list[dict[str, str]], console: Console, options: ChatOptions, verbose: bool = False
) -> str:
    """Print the answer as it streams (and its timings with `verbose`); Ctrl-C stops it and keeps
    what came so far."""
    text = ""
    try:
        for piece in backend.stream(messages, options):
            console.out(piece, end="", highlight=False)
            text += piece
    except KeyboardInterrupt:
        console.print("\n[dim]stopped[/]", end="")
    console.out("")
    if verbose:
        console.print("\n".join(backend.stats.lines()), style="dim", highlight=False)
    return text


def read_message(console: Console) -> str | None:
    """One message from the user; `\"\"\"` opens and closes a multi-line one. None on Ctrl-D."""
    line = console.input(">>> ")
    if not line.strip().startswith('"""'):
        return line
    lines = [line.strip()[3:]]
    while True:
        more = console.input("... ")
        if more.rstrip().endswith('"""'):
            lines.append(more.rstrip()[:-3])
            return "\n".join(lines).strip()
        lines.append(more)


def set_parameter(options: ChatOptions, name: str, value: str) -> ChatOptions:
    """`options` with one `/set parameter` applied; a ValueError says what was wrong."""
    if name == "stop":
        return replace(options, stop=[*options.stop, value])
    if name not in PARAMETERS:
        raise ValueError(f"unknown parameter '{name}': {', '.join([*PARAMETERS, 'stop'])}")
    field_name, kind = PARAMETERS[name]
    return replace(options, **{field_name: kind(value)})


class Session:
    """The REPL's state: the conversation, the system prompt and the options."""

    def __init__(self, backend: ChatBackend, model: str, system: str | None, options: ChatOptions, verbose: bool):
        self.backend = backend
        self.model = model
        self.system = system
        self.options = options
        self.verbose = verbose
        self.history: list[dict[str, str]] = []

    def command(self, text: str, console: Console) -> bool:
        """Carry out a /command; False when `text` is no command (a message to send)."""
        words = text.split(maxsplit=3)
        head = words[0] if words else ""
        if head in ("/?", "/help"):
            console.print(HELP)
        elif head == "/clear":
            self.history = []
            console.print("[dim]cleared[/]")
        elif head == "/system" or words[:2] == ["/set", "system"]:
            prefix = "/system" if head == "/system" else text[: text.index("system") + len("system")]
            self.system = text[len(prefix) :].strip() or None
            self.history = []
            console.print("[dim]system prompt set[/]" if self.system else "[dim]system prompt cleared[/]")
        elif words[:2] == ["/set", "parameter"] and len(words) == 4:
            try:
                self.options = set_parameter(self.options, words[2], words[3])
                console.print(f"[dim]set {words[2]} to {words[3]}[/]")
            except ValueError as exc:
                console.print(f"[red]error:[/] {exc}")
        elif words[:2] == ["/set", "format"] and len(words) == 3:
            self.options = replace(self.options, json=words[2] == "json")
            console.print(f"[dim]answers in {'JSON' if self.options.json else 'words'}[/]")
        elif words[:2] == ["/set", "verbose"]:
            self.verbose = True
            console.print("[dim]timings on[/]")
        elif words[:2] == ["/show", "info"]:
            settings = {k: v for k, v in asdict(self.options).items() if v not in (None, [], False)}
            console.print(f"model: {self.model}\nrunning in: {self.backend.where}")
            console.print(f"system prompt: {self.system or '(the model’s default)'}")
            console.print(f"parameters: {json.dumps(settings) if settings else '(the model’s defaults)'}")
        elif head.startswith("/"):
            console.print(f"[red]unknown command[/] {head}: /? lists them")
        else:
            return False
        return True

    def send(self, message: str, console: Console) -> None:
        self.history.append({"role": "user", "content": message})
        prefix = [{"role": "system", "content": self.system}] if self.system else []
        try:
            reply = answer(self.backend, prefix + self.history, console, self.options, self.verbose)
        except RuntimeError as exc:
            console.print(f"[red]error:[/] {exc}")
            self.history.pop()
            return
        self.history.append({"role": "assistant", "content": reply})


def repl(session: Session, console: Console) -> None:
    import readline  # noqa: F401  (line editing and history for input())

    console.print(f"[dim]chatting via {session.backend.where}; /? for help, /bye to leave[/]")
    interrupted = False
    while True:
        try:
            message = read_message(console)
            interrupted = False
        except EOFError:
            console.print()
            return
        except KeyboardInterrupt:
            if interrupted:
                console.print()
                return
            interrupted = True
            console.print("\n[dim]use /bye or Ctrl-D to leave[/]")
            continue
        text = message.strip()
        if text in ("/bye", "/exit", "/quit"):
            return
        if not text or session.command(text, console):
            continue
        session.send(message, console)
