"""OpenAI's Responses API (`POST /v1/responses`), wire to core: the request's types, and the
conversion of its input items (with the stored turns before them) into the text core's chat.

A third translator onto the same core as chat completions and Anthropic's messages. What a local
model cannot do (built-in tools, images and files in the input, background runs, prompt
templates, server-side conversations) is refused with a 400 that names the parameter, never
ignored; fields that change nothing in a local answer (`user`, `service_tier`,
`prompt_cache_key`, `reasoning.summary`, ...) are accepted.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from engines.base import Sampling
from gpustack_cli.core.media import check_url, data_part
from gpustack_cli.core.types import MEDIA_MARKER, ChatMessage, ChatRequest, GenerationError, MediaPart, Tool, ToolCall
from gpustack_cli.openai.chat import Wire

# The `include` value that asks for the answer's log probabilities.
LOGPROBS = "message.output_text.logprobs"


# -- input items -------------------------------------------------------------------------------


class TextContent(Wire):
    # `output_text` and `refusal` parts come back in as an earlier answer's content.
    type: Literal["input_text", "output_text", "text", "refusal"]
    text: str = ""
    refusal: str = ""


class ImageContent(Wire):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


class OtherContent(Wire):
    type: str


def _type_of(value: Any, default: str | None = None) -> str | None:
    """The `type` a discriminator reads: a string, or None when it is anything else (an object or
    a list there is the caller's error, which the model's own `type: str` then reports)."""
    kind = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", default)
    return kind if isinstance(kind, str) else None


def _content_kind(value: Any) -> str:
    kind = _type_of(value)
    if kind == "input_image":
        return "Image"
    return "Text" if kind in ("input_text", "output_text", "text", "refusal") else "Other"


Content = Annotated[
    Annotated[TextContent, Tag("Text")] | Annotated[ImageContent, Tag("Image")] | Annotated[OtherContent, Tag("Other")],
    Discriminator(_content_kind),
]


class MessageItem(Wire):
    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Content]


class FunctionCallItem(Wire):
    type: Literal["function_call"]
    id: str | None = None
    call_id: str
    name: str
    arguments: str = ""


class FunctionCallOutputItem(Wire):
    type: Literal["function_call_output"]
    id: str | None = None
    call_id: str
    output: str | list[Content]


class ReasoningItem(Wire):
    """An earlier answer's reasoning, sent back: accepted, and left out of the prompt (chat
    templates drop the reasoning of earlier turns)."""

    type: Literal["reasoning"]
    id: str | None = None


class OtherItem(Wire):
    type: str


_ITEM_TAGS = {
    "message": "Message",
    "function_call": "FunctionCall",
    "function_call_output": "FunctionCallOutput",
    "reasoning": "Reasoning",
}


def _item_kind(value: Any) -> str:
    return _ITEM_TAGS.get(_type_of(value, "message"), "Other")


InputItem = Annotated[
    Annotated[MessageItem, Tag("Message")]
    | Annotated[FunctionCallItem, Tag("FunctionCall")]
    | Annotated[FunctionCallOutputItem, Tag("FunctionCallOutput")]
    | Annotated[ReasoningItem, Tag("Reasoning")]
    | Annotated[OtherItem, Tag("Other")],
    Discriminator(_item_kind),
]


# -- tools and formats -------------------------------------------------------------------------


class FunctionTool(Wire):
    type: Literal["function"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class OtherTool(Wire):
    type: str


def _tool_kind(value: Any) -> str:
    return {"function": "Function", "namespace": "Namespace"}.get(_type_of(value), "Other")


class NamespaceTool(Wire):
    """Function tools grouped under a name: the model sees the functions; its calls of them come
    back with the namespace."""

    type: Literal["namespace"]
    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    tools: Annotated[list[ToolDef], Field(min_length=1)]


ToolDef = Annotated[
    Annotated[FunctionTool, Tag("Function")]
    | Annotated[NamespaceTool, Tag("Namespace")]
    | Annotated[OtherTool, Tag("Other")],
    Discriminator(_tool_kind),
]


class ToolChoiceObject(Wire):
    type: str
    name: str | None = None


class TextFormat(Wire):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextParam(Wire):
    format: TextFormat | None = None
    # A hint to OpenAI's models of how long to answer; no local template takes it.
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningParam(Wire):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    # Summaries of the reasoning are not made here: the reasoning itself comes back instead.
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class InputTokensBody(Wire):
    """What `POST /v1/responses/input_tokens` counts: the input a response would read."""

    model: str
    input: str | list[InputItem] = ""
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "none", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    reasoning: ReasoningParam | None = None
    truncation: Literal["auto", "disabled"] | None = None
    conversation: Any = None


class ResponseBody(InputTokensBody):
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    include: list[str] | None = None
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    store: bool = True
    stream: bool = False
    background: bool | None = None
    prompt: Any = None
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None
    # Extensions, as on chat completions (llama.cpp's samplers, reproducible sampling, Ollama's keep_alive).
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: int | None = None
    keep_alive: str | int | float | None = None

    @property
    def logprobs(self) -> int | None:
        """Top log probabilities per token when `include` asks for log probabilities, else None."""
        return (self.top_logprobs or 0) if LOGPROBS in (self.include or []) else None

    def sampling(self) -> Sampling:
        return Sampling.of(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            seed=self.seed,
            logprobs=self.logprobs,
        )


# -- wire to core ------------------------------------------------------------------------------


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _all_tools(body: InputTokensBody) -> list[tuple[str, Any, bool]]:
    """Each tool with its place in the request, and whether it is inside a namespace."""
    found = []
    for index, tool in enumerate(body.tools or []):
        found.append((f"tools[{index}]", tool, False))
        if isinstance(tool, NamespaceTool):
            found += [(f"tools[{index}].tools[{i}]", inner, True) for i, inner in enumerate(tool.tools)]
    return found


def refuse_unsupported(body: InputTokensBody) -> None:
    """A 400 naming the first thing asked for that a local model cannot do."""
    if body.conversation is not None:
        raise GenerationError(
            "Conversations are not supported here: continue one with 'previous_response_id'.", param="conversation"
        )
    for param, tool, nested in _all_tools(body):
        if isinstance(tool, OtherTool) or (nested and isinstance(tool, NamespaceTool)):
            raise GenerationError(
                f"Tool type '{tool.type}' is not supported here: only 'function' tools and namespaces of them are.",
                param=f"{param}.type",
                code="unsupported_tool",
            )
    names = [fn.name for fn, _ in functions(body)]
    if len(set(names)) < len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise GenerationError(f"Function names must be unique across tools and namespaces: {twice}.", param="tools")
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceObject) and choice.type != "function":
        raise GenerationError(f"tool_choice of type '{choice.type}' is not supported here.", param="tool_choice")
    if isinstance(body, ResponseBody):
        if body.background:
            raise GenerationError("Background responses are not supported here.", param="background")
        if body.prompt is not None:
            raise GenerationError("Prompt templates are not supported here: send 'input'.", param="prompt")


def input_items(body: InputTokensBody) -> list[dict[str, Any]]:
    """The request's input as stored items, each with an id: a string is one user message."""
    if isinstance(body.input, str):
        if not body.input:
            return []
        content = [{"type": "input_text", "text": body.input}]
        return [{"id": new_item_id("msg"), "type": "message", "role": "user", "content": content}]
    items = []
    for index, item in enumerate(body.input):
        if isinstance(item, OtherItem):
            raise GenerationError(
                f"Input items of type '{item.type}' are not supported here.",
                param=f"input[{index}].type",
                code="unsupported_input",
            )
        wire = item.model_dump(mode="json", exclude_none=True)
        if isinstance(item, MessageItem):
            _check_content(item.content, f"input[{index}].content")
            if isinstance(item.content, str):
                kind = "output_text" if item.role == "assistant" else "input_text"
                wire["content"] = [{"type": kind, "text": item.content}]
        elif isinstance(item, FunctionCallOutputItem):
            _check_content(item.output, f"input[{index}].output")
        wire.setdefault("id", new_item_id(_ID_PREFIXES[wire["type"]]))
        items.append(wire)
    return items


_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def _check_content(content: str | list[Any], param: str) -> None:
    for index, part in enumerate([] if isinstance(content, str) else content):
        if isinstance(part, ImageContent) and part.image_url is None:
            raise GenerationError(
                "An 'input_image' needs an 'image_url' (a data URL, or an http(s) URL where the server fetches "
                "them): this server keeps no files to name by 'file_id'.",
                param=f"{param}[{index}]",
                code="unsupported_content",
            )
        if isinstance(part, ImageContent):
            check_url(part.image_url or "", f"{param}[{index}].image_url")  # read when the chat is made
        if isinstance(part, OtherContent):
            raise GenerationError(
                f"Content of type '{part.type}' is not supported here: this server reads text and images "
                "('input_image'), not files.",
                param=f"{param}[{index}]",
                code="unsupported_content",
            )


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(
        part.get("text") or part.get("refusal") or "" for part in content if part.get("type") != "input_image"
    )


def _content(content: Any, param: str) -> tuple[str, list[MediaPart]]:
    """A stored item's content as a text and its images: a line apart, as chat completions
    joins its parts, with the media marker where each image stood."""
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    media: list[MediaPart] = []
    for index, part in enumerate(content):
        if part.get("type") == "input_image":
            media.append(data_part("image", part.get("image_url") or "", f"{param}[{index}].image_url"))
            texts.append(MEDIA_MARKER)
        else:
            texts.append(part.get("text") or part.get("refusal") or "")
    return "\n".join(texts), media


def chat_messages(items: list[dict[str, Any]]) -> list[ChatMessage]:
    """Stored items (input and output alike) as the text core's messages: an answer's function
    calls join the assistant message before them, results become tool messages."""
    messages: list[ChatMessage] = []
    for index, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            role = item["role"]
            text, media = _content(item["content"], f"input[{index}].content")
            messages.append(ChatMessage("system" if role == "developer" else role, text, media=media))
        elif kind == "function_call":
            call = ToolCall(item["call_id"], item["name"], item.get("arguments") or "{}")
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.tool_calls.append(call)
            else:
                messages.append(ChatMessage("assistant", "", [call]))
        elif kind == "function_call_output":
            messages.append(ChatMessage("tool", _text(item["output"]), tool_call_id=item["call_id"]))
    return messages


def tool_mode(body: InputTokensBody, tools: list[Tool]) -> str:
    choice = body.tool_choice or "auto"
    if isinstance(choice, ToolChoiceObject):
        if choice.name not in {t.name for t in tools}:
            raise GenerationError(
                f"Invalid 'tool_choice': no function named '{choice.name}' in 'tools'.", "tool_choice"
            )
        return choice.name
    if choice == "required" and not tools:
        raise GenerationError("Invalid 'tool_choice': 'required' needs 'tools'.", param="tool_choice")
    return choice


def json_schema(body: InputTokensBody) -> dict[str, Any] | None:
    """The schema `text.format` holds the answer to, if any."""
    text_format = body.text.format if body.text else None
    if text_format is None or text_format.type == "text":
        return None
    if text_format.type == "json_object":
        return {"type": "object"}
    if text_format.schema_ is None:
        raise GenerationError("Missing required parameter: 'text.format.schema'.", param="text.format.schema")
    return text_format.schema_


def functions(body: InputTokensBody) -> list[tuple[FunctionTool, str | None]]:
    """The request's function tools, each with its namespace (None at the top level)."""
    found: list[tuple[FunctionTool, str | None]] = []
    for tool in body.tools or []:
        if isinstance(tool, FunctionTool):
            found.append((tool, None))
        elif isinstance(tool, NamespaceTool):
            found += [(inner, tool.name) for inner in tool.tools if isinstance(inner, FunctionTool)]
    return found


def namespaces(body: InputTokensBody) -> dict[str, str]:
    """The namespace of each namespaced function, by its name."""
    return {fn.name: namespace for fn, namespace in functions(body) if namespace is not None}


def chat_request(body: InputTokensBody, history: list[dict[str, Any]], items: list[dict[str, Any]]) -> ChatRequest:
    """The text core's chat for a response: its instructions, the items of the turns before it
    (`history`: each stored turn's input and output), then its own input `items`."""
    tools = [
        Tool(t.name, t.description or "", t.parameters or {"type": "object", "properties": {}})
        for t, _ in functions(body)
    ]
    messages = [ChatMessage("system", body.instructions)] if body.instructions else []
    messages += chat_messages(history + items)
    if not messages:
        raise GenerationError("Missing required parameter: 'input'.", param="input")
    variables: dict[str, Any] = {}
    if body.reasoning is not None and body.reasoning.effort is not None:
        variables["reasoning_effort"] = body.reasoning.effort
    if isinstance(body, ResponseBody):
        sampling, max_tokens = body.sampling(), body.max_output_tokens
    else:
        sampling, max_tokens = Sampling.of(), None
    return ChatRequest(
        messages=messages,
        sampling=sampling,
        max_tokens=max_tokens,
        tools=tools,
        tool_choice=tool_mode(body, tools),
        json_schema=json_schema(body),
        template_kwargs=variables,
        parallel_tool_calls=body.parallel_tool_calls is not False,
    )


def echoed_tools(body: InputTokensBody) -> list[dict[str, Any]]:
    """The request's tools as a response lists them."""
    return [_echoed(t) for t in body.tools or []]


def _echoed(tool: FunctionTool | NamespaceTool | OtherTool) -> dict[str, Any]:
    if isinstance(tool, NamespaceTool):
        inner = [_echoed(t) for t in tool.tools]
        return {"type": "namespace", "name": tool.name, "description": tool.description, "tools": inner}
    if isinstance(tool, OtherTool):
        return tool.model_dump(mode="json")
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters or {"type": "object", "properties": {}},
        "strict": tool.strict if tool.strict is not None else True,
    }


def echoed_tool_choice(body: InputTokensBody) -> Any:
    choice = body.tool_choice or "auto"
    return choice.model_dump(exclude_none=True) if isinstance(choice, ToolChoiceObject) else choice
