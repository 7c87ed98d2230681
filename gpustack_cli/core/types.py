"""The text core's types: a chat request as every protocol's converter makes it, the events an
answer streams as, and the whole `Answer` they collect into. Nothing here knows HTTP or an engine;
a converter that cannot serve a request as asked raises `GenerationError` (the protocol's handler
turns it into the route's error shape)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from engines.base import Sampling

FinishReason = Literal["stop", "length", "tool_calls"]


class GenerationError(ValueError):
    """The request cannot be served as asked (a 400 on the wire); the message says why."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass
class ToolCall:
    id: str
    name: str
    # The arguments as a JSON text, as OpenAI sends them.
    arguments: str


@dataclass
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None


@dataclass
class ChatRequest:
    messages: list[ChatMessage]
    sampling: Sampling
    # None: as many as the context leaves room for.
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    # "auto", "none", "required", or the name of the one tool to call.
    tool_choice: str = "auto"
    # A JSON schema the reply must match ({"type": "object"} for JSON mode), or None.
    json_schema: dict[str, Any] | None = None
    # Extra variables for the chat template (`enable_thinking`, `reasoning_effort`, ...), over
    # the model's own defaults.
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # Keep a reasoning model's thinking apart from its answer (False: leave it in the text).
    split_reasoning: bool = True
    # Whether the model may call several tools in one answer.
    parallel_tool_calls: bool = True


@dataclass
class TokenLogprob:
    token: str
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]]


@dataclass
class TextDelta:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class ReasoningDelta:
    """A piece of the model's reasoning, written before its answer."""

    text: str


@dataclass
class ToolCallEvent:
    index: int
    call: ToolCall


@dataclass
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # The stop string that ended the text, when one did.
    stop_sequence: str | None = None
    # Of the completion tokens, those of the reasoning.
    reasoning_tokens: int = 0


Event = TextDelta | ReasoningDelta | ToolCallEvent | Finished


@dataclass
class Answer:
    """A whole answer, collected from its events."""

    deltas: list[TextDelta]
    calls: list[ToolCall]
    finished: Finished
    reasoning: str = ""

    @property
    def text(self) -> str:
        return "".join(delta.text for delta in self.deltas)
