"""Prompt rendering and preparation: a `ChatRequest` written by the model's chat template (the
Jinja environment is `templates.py`), its tools given natively or in the generic format, and the
result made `Prepared` for the engine: prompt tokens (with the images and audio the messages hold,
for a model whose projector takes them), the completion budget the context leaves, the
grammar that holds tool calls or a JSON answer, and how to read reasoning and calls back out.

Tool calls: a model whose template takes `tools` and shows a format `parsing/tool_calls.py` reads
gets the tools through its template and calls them in its own format. Every other model gets the
generic format (`tool_calls.GENERIC`): the tools and the shape of a call are described in the
system prompt, and earlier calls and results are written into the conversation in that shape.
Either way a grammar holds each call to its tool's parameters: from the first token when a call
is required, and from the call's opening marker under `tool_choice: auto`, so that an answer in
words stays free."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from engines.base import InvalidSchema, MediaError, Sampling, TextGenerator
from gpustack_cli.core import json_values, templates
from gpustack_cli.core.limits import fit_context
from gpustack_cli.core.media import decoded
from gpustack_cli.core.parsing.reasoning import ReasoningFormat, reasoning_format
from gpustack_cli.core.parsing.tool_calls import GENERIC, HARMONY, ToolFormat, ToolSpec, is_harmony, tool_format
from gpustack_cli.core.types import MEDIA_MARKER, ChatMessage, ChatRequest, GenerationError, Tool


@dataclass
class Prepared:
    """A request made ready for the engine: its prompt tokens and the sampling for its reply."""

    # Token ids, and the engine's media chunks where the messages hold images or audio (each
    # standing for the positions it takes: the length is the prompt's size in the context).
    prompt_tokens: list[Any]
    sampling: Sampling
    stop: list[str]
    # How to read tool calls in the output, when tools are offered.
    tool_format: ToolFormat | None = None
    # The model's reasoning tags, when its reasoning is to be kept apart from its answer.
    reasoning: ReasoningFormat | None = None
    # GPT-OSS's channelled messages, read for reasoning, answer and calls (harmony.py).
    harmony: bool = False


def _tool_instructions(tools: list[Tool], choice: str) -> str:
    """The generic format's system prompt: the tools as JSON, one per line, and how to call them."""
    described = "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}) for t in tools
    )
    call = f'{GENERIC.call_open}{{"name": <tool name>, "arguments": <arguments object>}}{GENERIC.call_close}'
    when = (
        "Call a tool only when it helps; otherwise answer in plain text."
        if choice == "auto"
        else "Answer with tool calls only."
    )
    return (
        f"You can call these tools:\n<tools>\n{described}\n</tools>\n\n"
        f"To call a tool, write a JSON object with its name and arguments inside <tool_call></tool_call> "
        f"tags:\n{call}\n{when}"
    )


def _generic_calls(message: ChatMessage) -> str:
    """An assistant turn's text and calls, in the generic format."""
    calls = [
        GENERIC.call_open + json.dumps({"name": c.name, "arguments": _loads(c.arguments)}) + GENERIC.call_close
        for c in message.tool_calls
    ]
    return "\n".join([message.content, *calls] if message.content else calls)


def _wire_messages(request: ChatRequest, template: str) -> list[dict[str, Any]]:
    """Our messages as the chat template takes them; tool turns written in the generic format."""
    use_tools = bool(request.tools) and request.tool_choice != "none"
    messages: list[dict[str, Any]] = []
    tool_role = templates.supports_role(template, "tool")
    for message in request.messages:
        content = message.content
        if message.role == "assistant" and message.tool_calls:
            content = _generic_calls(message)
        if message.role == "tool" and not tool_role:
            messages.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
            continue
        messages.append({"role": message.role, "content": content})
    if use_tools:
        instructions = _tool_instructions(request.tools, request.tool_choice)
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{instructions}"}
        else:
            messages.insert(0, {"role": "system", "content": instructions})
    return messages


def _loads(arguments: str) -> Any:
    try:
        return json_values.loads(arguments) if arguments else {}
    except ValueError:
        return arguments


def render_chat(engine: TextGenerator, request: ChatRequest) -> str:
    """The chat as the model's template writes it. A system message after the first (as coding
    agents send them) stays where it stands when the template renders it there; a template that
    refuses it or leaves it out gets every system message merged, in order, into the first."""
    late = [m for m in request.messages[1:] if m.role == "system" and m.content.strip()]
    if not late:
        return _render(engine, request)
    try:
        text = _render(engine, request)
        if all(m.content.strip() in text for m in late):
            return text
    except GenerationError:
        pass
    return _render(engine, replace(request, messages=merged_system(request.messages)))


def merged_system(messages: list[ChatMessage]) -> list[ChatMessage]:
    """`messages` with every system message's text joined, in order, into one system message first."""
    system = "\n\n".join(m.content for m in messages if m.role == "system" and m.content)
    rest = [m for m in messages if m.role != "system"]
    return [ChatMessage("system", system), *rest] if system else rest


def _render(engine: TextGenerator, request: ChatRequest) -> str:
    template = _template(engine)
    variables = {**getattr(engine, "template_kwargs", {}), **request.template_kwargs}
    native = tool_format(template) is not None and _has_tools(request)
    active = native and request.tool_choice != "none"
    tools = [_wire_tool(t) for t in request.tools] if active else None
    try:
        return templates.render(
            template,
            _native_messages(request) if native else _wire_messages(request, template),
            bos_token=engine.bos_text,
            eos_token=engine.eos_text,
            tools=tools,
            variables=variables,
        )
    except templates.TemplateFailure as exc:
        name = getattr(engine, "name", "")
        raise GenerationError(f"Model '{name}': {exc}", param="messages", code="chat_template_error") from exc


def _template(engine: TextGenerator) -> str:
    return templates.template_for(engine.chat_template, engine.architecture)


def _has_tools(request: ChatRequest) -> bool:
    """Whether the chat offers tools or has called them: a template with tools renders it."""
    return bool(request.tools) or any(m.tool_calls or m.role == "tool" for m in request.messages)


def _call_format(request: ChatRequest, template: str) -> ToolFormat | None:
    """How the answer writes its calls, when the request offers tools (`tool_choice` other than
    `none`): the model's own format when its template has one, else the generic one."""
    if not request.tools or request.tool_choice == "none":
        return None
    return tool_format(template) or GENERIC


def _wire_tool(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }


def _native_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """Our messages as templates with tools take them (transformers' shape): an assistant's calls
    with their arguments as objects, a tool's result with the name of the tool it answers."""
    names = {c.id: c.name for m in request.messages for c in m.tool_calls}
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        wire: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            wire["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _loads(c.arguments)}}
                for c in message.tool_calls
            ]
        if message.role == "tool":
            wire["tool_call_id"] = message.tool_call_id
            wire["name"] = names.get(message.tool_call_id or "", "")
        messages.append(wire)
    return messages


def prepare_chat(engine: TextGenerator, request: ChatRequest) -> Prepared:
    text = render_chat(engine, request)
    prompt = prompt_of(engine, text, request)
    budget = fit_context(engine, len(prompt), request.max_tokens)
    template = _template(engine)
    calls = _call_format(request, template)
    schema, structure = request.json_schema, None
    if calls is not None:
        specs = [ToolSpec(t.name, t.parameters) for t in request.tools]
        # A named choice is one call of that tool, as OpenAI and vLLM make it.
        parallel = request.parallel_tool_calls and request.tool_choice in ("auto", "required")
        structure = calls.structure(specs, request.tool_choice, parallel)
        schema = None  # the structure holds the output; a JSON answer is not asked for too
    if schema is not None:
        try:
            engine.check_schema(schema)
        except InvalidSchema as exc:
            raise GenerationError(f"Invalid schema: {exc}", param="response_format", code="invalid_schema") from exc
    if structure is not None:
        try:
            for choice in structure.choices:
                engine.check_schema(choice.schema)
        except InvalidSchema as exc:
            raise GenerationError(f"Invalid schema: {exc}", param="tools", code="invalid_schema") from exc
    # A reply held to a shape from its first token has no reasoning section to find.
    free = schema is None and (structure is None or structure.trigger is not None)
    harmony = is_harmony(template) and request.split_reasoning
    thinking = reasoning_format(template, text) if request.split_reasoning and free and not harmony else None
    # The markers the output is read by are shown even where they are special tokens.
    preserve = (calls.markers if calls else ()) + ((thinking.start, thinking.end) if thinking else ())
    if harmony:
        preserve += HARMONY.markers
    sampling = replace(request.sampling, max_tokens=budget, json_schema=schema, structure=structure, preserve=preserve)
    return Prepared(prompt, sampling, request.stop, calls, thinking, harmony)


def count_chat_tokens(engine: TextGenerator, request: ChatRequest) -> int:
    return len(prompt_of(engine, render_chat(engine, request), request))


def prompt_of(engine: TextGenerator, text: str, request: ChatRequest) -> list[Any]:
    """The rendered chat's prompt: its tokens, with its media where the messages hold some."""
    parts = request.media
    if not parts:
        return chat_tokens(engine, text)
    modalities = getattr(engine, "modalities", ())
    for part in parts:
        if ("vision" if part.kind == "image" else "audio") not in modalities:
            what = "images" if part.kind == "image" else "audio"
            raise GenerationError(
                f"Invalid '{part.param}': model '{getattr(engine, 'name', '')}' does not take {what} "
                "(it has no projector for them).",
                param=part.param,
                code="unsupported_content",
            )
    media = [decoded(part, request.media_limits, getattr(engine, "audio_rate", 0)) for part in parts]
    try:
        return engine.tokenize_media(text.replace(MEDIA_MARKER, engine.media_marker), media)  # type: ignore[attr-defined]
    except MediaError as exc:
        raise GenerationError(f"Invalid 'messages': {exc}.", param="messages") from exc


def chat_tokens(engine: TextGenerator, text: str) -> list[int]:
    """A rendered chat's tokens. A template that writes the BOS itself (Gemma's, Llama's) gets no
    second one from a tokenizer that adds it too, as llama.cpp's chat code avoids it."""
    bos = engine.bos_text
    if bos and text.startswith(bos) and engine.tokenize("", special=True):
        text = text[len(bos) :]
    return engine.tokenize(text)


def fill_in_the_middle(engine: TextGenerator, prefix: list[int], suffix: str) -> list[int]:
    """A prompt for the text between `prefix` (tokens) and `suffix`, in the model's own
    fill-in-the-middle tokens; a GenerationError for a model that has none."""
    fim = engine.fim_tokens()
    if fim is None:
        raise GenerationError(
            "This model does not support 'suffix' (it has no fill-in-the-middle tokens).", param="suffix"
        )
    pre, suf, mid = fim
    return [pre, *prefix, suf, *engine.tokenize(suffix, special=False), mid]
