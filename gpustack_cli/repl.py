"""`gpustack run CHAT_MODEL`: a chat in the terminal, against the running server when one answers
(`GPUSTACK_SERVER_URL`, `GPUSTACK_API_KEY`), else with the model loaded in this process."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Protocol

import httpx
from rich.console import Console

from engines.base import Sampling, TextGenerator
from gpustack_cli.client import checked, server_answers
from gpustack_cli.config import Settings
from gpustack_cli.loading import load_model
from gpustack_cli.store import ModelStore
from gpustack_cli.textgen import ChatMessage, ChatRequest, TextDelta, prepare_chat, stream_chat

HELP = """Commands:
  /system TEXT   set the system prompt (and start over)
  /clear         forget the conversation
  /bye           leave (Ctrl-D works too)
  \"\"\"            start or end a multi-line message
Ctrl-C stops an answer; a second Ctrl-C at the prompt leaves."""


class ChatBackend(Protocol):
    where: str

    def stream(self, messages: list[dict[str, str]], max_tokens: int | None) -> Iterator[str]: ...


class RemoteChat:
    def __init__(self, settings: Settings, model: str):
        self.url = settings.url + "/v1/chat/completions"
        self.headers = settings.client_headers
        self.model = model
        self.where = settings.url

    def stream(self, messages: list[dict[str, str]], max_tokens: int | None) -> Iterator[str]:
        body = {"model": self.model, "messages": messages, "stream": True, "max_tokens": max_tokens}
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
                for choice in chunk.get("choices", []):
                    if choice["delta"].get("content"):
                        yield choice["delta"]["content"]


class LocalChat:
    def __init__(self, settings: Settings, model: str):
        engine = load_model(ModelStore(settings.home), model, settings)
        if not isinstance(engine, TextGenerator):
            raise RuntimeError(f"model '{model}' cannot chat")
        self.engine = engine
        self.where = "this process"

    def stream(self, messages: list[dict[str, str]], max_tokens: int | None) -> Iterator[str]:
        chat = ChatRequest(
            [ChatMessage(m["role"], m["content"]) for m in messages], Sampling(max_tokens=1), max_tokens=max_tokens
        )
        prepared = prepare_chat(self.engine, chat)
        for event in stream_chat(self.engine, prepared, threading.Event()):
            if isinstance(event, TextDelta):
                yield event.text


def backend_for(settings: Settings, model: str) -> ChatBackend:
    return RemoteChat(settings, model) if server_answers(settings) else LocalChat(settings, model)


def answer(backend: ChatBackend, messages: list[dict[str, str]], console: Console, max_tokens: int | None) -> str:
    """Print the answer as it streams; Ctrl-C stops it and keeps what came so far."""
    text = ""
    try:
        for piece in backend.stream(messages, max_tokens):
            console.out(piece, end="", highlight=False)
            text += piece
    except KeyboardInterrupt:
        console.print("\n[dim]stopped[/]", end="")
    console.out("")
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


def repl(backend: ChatBackend, console: Console, system: str | None, max_tokens: int | None) -> None:
    import readline  # noqa: F401  (line editing and history for input())

    console.print(f"[dim]chatting via {backend.where}; /? for help, /bye to leave[/]")
    history: list[dict[str, str]] = []
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
        command = message.strip()
        if command in ("/bye", "/exit", "/quit"):
            return
        if command in ("/?", "/help"):
            console.print(HELP)
            continue
        if command == "/clear":
            history = []
            console.print("[dim]cleared[/]")
            continue
        if command.startswith("/system"):
            system = command[len("/system") :].strip() or None
            history = []
            console.print("[dim]system prompt set[/]" if system else "[dim]system prompt cleared[/]")
            continue
        if not command:
            continue
        history.append({"role": "user", "content": message})
        prefix = [{"role": "system", "content": system}] if system else []
        try:
            reply = answer(backend, prefix + history, console, max_tokens)
        except RuntimeError as exc:
            console.print(f"[red]error:[/] {exc}")
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply})
