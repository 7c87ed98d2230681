"""`gpustack run CHAT_MODEL`: a chat in the terminal, through the command's connection (the running
server when one answers, else this process: `connection.py`). The REPL's commands are Ollama's where
they exist (`/set parameter`, `/set system`, `/show info`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from engines.base import Sampling
from gpustack_cli.cli import render
from gpustack_cli.cli.connection import ClientError, Terminal
from gpustack_cli.core.types import ChatMessage, ChatRequest, MediaPart, images_first

HELP = """Commands:
  /set parameter NAME VALUE  temperature, top_p, top_k, seed, num_predict, stop
  /set system TEXT           the system prompt, anew (also /system TEXT)
  /set format json|text      answers in JSON, or in words
  /set verbose               token counts and timings after each answer
  /image PATH                send an image with the next message (a model that sees)
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


def chat_request(messages: list[dict[str, Any]], options: ChatOptions) -> ChatRequest:
    """The core's request for a conversation under the REPL's options; a message's `images`
    (their bytes) go before its text, as Ollama's REPL sends them."""
    sampling = Sampling.of(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k, seed=options.seed)
    return ChatRequest(
        [_message(m) for m in messages],
        sampling,
        max_tokens=options.max_tokens,
        stop=list(options.stop),
        json_schema={"type": "object"} if options.json else None,
    )


def _message(message: dict[str, Any]) -> ChatMessage:
    images: list[bytes] = message.get("images") or []
    media = [MediaPart("image", f"image {i + 1}", data=data) for i, data in enumerate(images)]
    return images_first(message["role"], message["content"], media)


def read_image(path: str) -> bytes:
    """An image file's bytes for a message; a ValueError that names the path where it cannot be read."""
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the image {path}: {exc.strerror or exc}") from exc


def ask(
    terminal: Terminal,
    model: str,
    messages: list[dict[str, Any]],
    options: ChatOptions,
    console: Console,
    verbose: bool = False,
) -> str:
    """Send the conversation and print the answer as it streams; its text."""
    return render.answer(
        terminal.stream(terminal.connection.chat(model, chat_request(messages, options))), console, verbose
    )


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

    def __init__(self, terminal: Terminal, model: str, system: str | None, options: ChatOptions, verbose: bool):
        self.terminal = terminal
        self.model = model
        self.system = system
        self.options = options
        self.verbose = verbose
        self.history: list[dict[str, Any]] = []
        # Images for the next message (`/image PATH`).
        self.images: list[bytes] = []

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
        elif head == "/image" and len(words) > 1:
            try:
                self.images.append(read_image(text[len("/image") :].strip()))
                console.print(f"[dim]{len(self.images)} image(s) go with your next message[/]")
            except ValueError as exc:
                console.print(f"[red]error:[/] {exc}")
        elif words[:2] == ["/show", "info"]:
            settings = {k: v for k, v in asdict(self.options).items() if v not in (None, [], False)}
            console.print(f"model: {self.model}\nrunning in: {self.terminal.where}")
            console.print(f"system prompt: {self.system or '(the model’s default)'}")
            console.print(f"parameters: {json.dumps(settings) if settings else '(the model’s defaults)'}")
        elif head.startswith("/"):
            console.print(f"[red]unknown command[/] {head}: /? lists them")
        else:
            return False
        return True

    def send(self, message: str, console: Console) -> None:
        self.history.append({"role": "user", "content": message, "images": self.images})
        self.images = []
        prefix = [{"role": "system", "content": self.system}] if self.system else []
        try:
            reply = ask(self.terminal, self.model, prefix + self.history, self.options, console, self.verbose)
        except ClientError as exc:
            console.print(f"[red]error:[/] {exc}")
            self.history.pop()
            return
        self.history.append({"role": "assistant", "content": reply})


def repl(session: Session, console: Console) -> None:
    import readline  # noqa: F401  (line editing and history for input())

    console.print(f"[dim]chatting via {session.terminal.where}; /? for help, /bye to leave[/]")
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
