"""A request's limits, checked before a model is loaded or a slot taken: the number and size of its
messages, its stop strings, its schemas' cost, and its completion budget against the server's cap
and the model's context. The checks take a small `Limits` value (the server's settings make one:
`Settings.limits`), so the CLI's in-process path applies exactly the server's."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from engines.base import TextGenerator
from gpustack_cli.core import json_values
from gpustack_cli.core.json_schemas import SchemaError, SchemaLimits, check_schemas, loosened
from gpustack_cli.core.media import check_parts
from gpustack_cli.core.types import ChatRequest, GenerationError, MediaLimits


@dataclass(frozen=True)
class Limits:
    max_messages: int
    max_text_chars: int
    max_stops: int
    max_stop_chars: int
    # The server's cap on a completion (None: the context is the only bound).
    max_completion_tokens: int | None
    schema: SchemaLimits
    # Keep a reasoning model's thinking apart from its answer (the server's `reasoning_format`).
    split_reasoning: bool = True
    media: MediaLimits = field(default_factory=MediaLimits)


def check_chat(
    request: ChatRequest,
    limits: Limits,
    schema_param: str = "response_format",
    tool_field: str = "parameters",
    stop_param: str = "stop",
) -> None:
    """The limits of one chat request, checked before a model is loaded or a slot taken: its
    messages, the characters to render and tokenize, and its schemas (a GenerationError). The
    server's limits apply to it here too: its completion budget is capped by the server's,
    and reasoning is split off unless the server keeps it in the text (`reasoning_format`)."""
    request.max_tokens = capped(request.max_tokens, limits)
    request.split_reasoning = limits.split_reasoning
    request.media_limits = limits.media
    check_parts(request.media, limits.media)
    if len(request.messages) > limits.max_messages:
        raise GenerationError(
            f"Too many messages: {len(request.messages)}; the limit is {limits.max_messages}.", param="messages"
        )
    chars = sum(len(m.content) + sum(len(c.arguments) for c in m.tool_calls) for m in request.messages)
    check_text_size(chars, limits, "messages")
    check_stops(request.stop, limits, stop_param)
    for index, message in enumerate(request.messages):
        for call in message.tool_calls:
            try:
                json_values.loads(call.arguments or "{}", f"messages[{index}]: a tool call's arguments")
            except json_values.TooDeep as exc:
                raise GenerationError(f"{exc}.", param="messages") from exc
            except ValueError:  # arguments that are not JSON reach the template as text
                pass
    schemas: list[tuple[str, Any]] = [(f"tools[{i}].{tool_field}", t.parameters) for i, t in enumerate(request.tools)]
    if request.json_schema is not None:
        schemas.append((schema_param, request.json_schema))
    bounded = bounded_schemas(schemas, limits)
    request.tools = [replace(t, parameters=bounded[i]) for i, t in enumerate(request.tools)]
    if request.json_schema is not None:
        request.json_schema = bounded[-1]


def bounded_schemas(schemas: list[tuple[str, Any]], limits: Limits) -> list[Any]:
    """A request's schemas (each with the parameter that holds it) checked for their cost, as a
    GenerationError naming the place; returned loosened where a count is past what a grammar
    holds."""
    try:
        check_schemas(schemas, limits.schema)
    except SchemaError as exc:
        raise GenerationError(f"Invalid schema at {exc}.", param=exc.param, code="invalid_schema") from exc
    return [loosened(schema, limits.schema.max_repeat) for _, schema in schemas]


def check_stops(stops: list[str], limits: Limits, param: str = "stop") -> None:
    """Stop strings are looked for in the text after every token: their number and length
    bound that work."""
    if len(stops) > limits.max_stops:
        raise GenerationError(f"Too many stop strings: {len(stops)}; the limit is {limits.max_stops}.", param=param)
    for stop in stops:
        if len(stop) > limits.max_stop_chars:
            raise GenerationError(
                f"A stop string holds {len(stop)} characters; the limit is {limits.max_stop_chars}.", param=param
            )


def capped(max_tokens: int | None, limits: Limits) -> int | None:
    """A request's completion budget under the server's `max_completion_tokens`."""
    cap = limits.max_completion_tokens
    return max_tokens if cap is None else min(cap, cap if max_tokens is None else max_tokens)


def check_text_size(chars: int, limits: Limits, param: str) -> None:
    if chars > limits.max_text_chars:
        raise GenerationError(f"'{param}' holds {chars} characters; the limit is {limits.max_text_chars}.", param=param)


def fit_context(engine: TextGenerator, prompt_tokens: int, max_tokens: int | None, what: str = "messages") -> int:
    """The completion budget for a prompt: what was asked, cut to what the context leaves (as
    llama-server does: an answer that reaches it ends with `length`); a GenerationError naming the
    numbers only when the prompt itself does not fit."""
    if prompt_tokens == 0:
        raise GenerationError(f"The {what} is empty: there is nothing to continue.", param=what)
    room = engine.n_ctx - prompt_tokens
    if room <= 0:
        raise GenerationError(
            f"This model's maximum context length is {engine.n_ctx} tokens. However, your {what} resulted in "
            f"{prompt_tokens} tokens. Please reduce the length of the {what}.",
            param=what,
            code="context_length_exceeded",
        )
    return room if max_tokens is None else min(max_tokens, room)
