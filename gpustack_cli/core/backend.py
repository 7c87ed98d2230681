"""Where a chat is answered, at the level of the core's events: a `ChatRequest` in, its events
out. Every protocol's handler asks a backend for its chat, whatever the model is: `LocalChat`
drives a loaded `TextGenerator`; a remote model's backend (`gpustack_cli.upstream.chat`) drives
its upstream's chat completions. So Anthropic's messages, the Responses API and any protocol
added later work over remote models through the same converters as over local ones.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Protocol

from engines.base import RequestAborted, TextGenerator
from gpustack_cli.core.prompts import Prepared, prepare_chat
from gpustack_cli.core.streams import chat_events
from gpustack_cli.core.types import ChatRequest, Event, GenerationError


@dataclass
class ChatStart:
    """A chat under way: the prompt's tokens where known before the answer (0 where only its end
    says), and the answer's events."""

    prompt_tokens: int
    events: AsyncIterator[Event]


class ChatBackend(Protocol):
    async def start(self, chat: ChatRequest, request_id: str, truncate: bool = False) -> ChatStart:
        """Begin answering `chat`; with `truncate`, leave out its oldest turns where it would not
        fit (the Responses API's `truncation: auto`, where the backend can know)."""
        ...


class LocalChat:
    """A chat answered by a model loaded here."""

    def __init__(self, engine: TextGenerator):
        self.engine = engine

    async def start(self, chat: ChatRequest, request_id: str, truncate: bool = False) -> ChatStart:
        cancel = threading.Event()
        try:
            prepared = await asyncio.to_thread(prepare_fitting, self.engine, chat, truncate, cancel)
        finally:  # the client left: a truncation search ends at its next try
            cancel.set()
        return ChatStart(len(prepared.prompt_tokens), chat_events(self.engine, prepared, request_id))


def prepare_fitting(
    engine: TextGenerator, chat: ChatRequest, truncate: bool, cancel: threading.Event | None = None
) -> Prepared:
    """The chat made ready for the engine; with `truncate` (`truncation: auto`), the fewest of the
    oldest turns after the system prompt are left out for the rest to fit the context. A turn is
    a user message and whatever answers it; the cut is found by bisection over the turns (each
    try renders and tokenizes the whole rest once), and `cancel` ends the search between tries."""
    try:
        return prepare_chat(engine, chat)
    except GenerationError as exc:
        if not truncate or exc.code != "context_length_exceeded":
            raise
        failure = exc
    messages = chat.messages
    head = 1 if messages and messages[0].role == "system" else 0
    # Where the rest may begin: each later user message.
    starts = [i for i in range(head + 1, len(messages)) if messages[i].role == "user"]
    low, high, best = 0, len(starts) - 1, None
    while low <= high:
        if cancel is not None and cancel.is_set():
            raise RequestAborted("the client left")
        middle = (low + high) // 2
        try:
            best = prepare_chat(engine, replace(chat, messages=messages[:head] + messages[starts[middle] :]))
            high = middle - 1
        except GenerationError as exc:
            if exc.code != "context_length_exceeded":
                raise
            low = middle + 1
    if best is None:
        raise failure
    return best
