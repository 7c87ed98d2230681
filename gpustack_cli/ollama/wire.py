"""The bodies of Ollama's requests, as its docs/api.md gives them. Fields Ollama has and this
server does not use are accepted and ignored (clients send them by default); fields it cannot
serve as asked are refused by the converters with a 400 that says why."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Ollama's `format`: "json", a JSON schema, or "" (none).
Format = Literal["", "json"] | dict[str, Any] | None
# Ollama's `think`: on, off, or how hard (GPT-OSS's levels).
Think = bool | Literal["low", "medium", "high"] | None
KeepAlive = str | int | float | None


class Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class Options(Wire):
    """The runtime options a request may set (Ollama's `options`); the model's load options
    (`num_gpu`, `num_thread`, `use_mmap`, ...) are set when it is loaded and are ignored here."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    # -1: until the model stops; -2: until the context is full (both: as much as the context allows).
    num_predict: Annotated[int, Field(ge=-2)] | None = None
    repeat_penalty: Annotated[float, Field(ge=0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    num_ctx: Annotated[int, Field(ge=1)] | None = None


class OllamaCall(Wire):
    name: Annotated[str, Field(min_length=1)]
    # An object, as Ollama sends it (a JSON text is taken too).
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class OllamaToolCall(Wire):
    id: str | None = None
    function: OllamaCall


class OllamaMessage(Wire):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    thinking: str | None = None
    # Bare base64, one entry per image.
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    # The tool a `tool` message answers (Ollama's); `tool_call_id` where a client sends that.
    tool_name: str | None = None
    tool_call_id: str | None = None


class OllamaFunction(Wire):
    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class OllamaTool(Wire):
    type: Literal["function"] = "function"
    function: OllamaFunction


class GenerationFields(Wire):
    model: Annotated[str, Field(min_length=1)]
    format: Format = None
    options: Options | None = None
    stream: bool = True
    keep_alive: KeepAlive = None
    think: Think = None


class ChatBody(GenerationFields):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[OllamaTool] | None = None


class GenerateBody(GenerationFields):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    images: list[str] | None = None
    # Deprecated upstream: the conversation as tokens. Refused when given.
    context: list[int] | None = None


class EmbedBody(Wire):
    model: Annotated[str, Field(min_length=1)]
    input: str | Annotated[list[str], Field(min_length=1)]
    truncate: bool = True
    dimensions: Annotated[int, Field(ge=1)] | None = None
    options: Options | None = None
    keep_alive: KeepAlive = None


class LegacyEmbeddingsBody(Wire):
    model: Annotated[str, Field(min_length=1)]
    prompt: str
    options: Options | None = None
    keep_alive: KeepAlive = None


class ModelBody(Wire):
    """A body that names one model (`model`, or the older `name`)."""

    model: str | None = None
    name: str | None = None

    @property
    def named(self) -> str:
        return self.model or self.name or ""


class ShowBody(ModelBody):
    verbose: bool = False


class PullBody(ModelBody):
    insecure: bool = False
    stream: bool = True


class CopyBody(Wire):
    source: Annotated[str, Field(min_length=1)]
    destination: Annotated[str, Field(min_length=1)]
