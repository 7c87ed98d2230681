"""The text core's types: a chat request as every protocol's converter makes it, the events an
answer streams as, and the whole `Answer` they collect into. Nothing here knows HTTP or an engine;
a converter that cannot serve a request as asked raises `GenerationError` (the protocol's handler
turns it into the route's error shape)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from engines.base import Media, Sampling

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


# Where a message's image or audio clip stands in its text (llama.cpp's libmtmd marker).
MEDIA_MARKER = "<__media__>"


@dataclass
class MediaPart:
    """An image or audio clip of a message, as its request gave it: the bytes (from base64 or a
    data URL), or a URL for the server to fetch; `param` names its place, for errors."""

    kind: Literal["image", "audio"]
    param: str
    data: bytes | None = None
    url: str | None = None
    # The audio's container as the client named it ("wav", "mp3").
    format: str | None = None
    # The part decoded for the engine, once it has been (`core.media.decoded`).
    decoded: Media | None = None


@dataclass(frozen=True)
class MediaLimits:
    # Images and audio clips in one request.
    max_media: int = 16
    # Bytes of one image or clip, as sent (after base64) or fetched.
    max_media_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_audio_seconds: float = 600.0
    # Whether `http(s)` URLs are fetched by the server; and how long a fetch may take.
    allow_urls: bool = False
    url_timeout: float = 10.0


@dataclass
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    # Its images and audio, in order: `content` holds MEDIA_MARKER where each one stands.
    media: list[MediaPart] = field(default_factory=list)


def images_first(
    role: Literal["system", "user", "assistant", "tool"], text: str, media: list[MediaPart]
) -> ChatMessage:
    """A message whose images go before its text, as Ollama places the `images` of a message."""
    return ChatMessage(
        role, "\n".join([MEDIA_MARKER] * len(media) + ([text] if text or not media else [])), media=media
    )


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
    # The bounds its media are held to (the server's, set by `limits.check_chat`).
    media_limits: MediaLimits = field(default_factory=MediaLimits)

    @property
    def media(self) -> list[MediaPart]:
        return [part for message in self.messages for part in message.media]


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
