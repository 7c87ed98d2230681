"""Tool calls in a model's own format, for models whose chat template takes `tools`.

A model trained for tool calling calls tools far better in the format its template shows it
(llama.cpp's `common/chat.cpp` and vLLM's tool parsers read the same formats). Read here:

- Hermes (Qwen 2.5 and 3, Hermes 2 and 3, Granite 4, and their fine-tunes): each call is
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, after optional text;
- Llama 3.x: the whole answer is one JSON object `{"name": ..., "parameters": {...}}`;
- Mistral Nemo: `[TOOL_CALLS]` then a JSON list of `{"name": ..., "arguments": {...}}`; newer
  Mistrals (Small 3.2, Devstral, Magistral): `[TOOL_CALLS]name[ARGS]{...}` per call;
- DeepSeek R1: `<｜tool▁calls▁begin｜>` then per call
  `<｜tool▁call▁begin｜>function<｜tool▁sep｜>name` and the arguments in a json code block;
  DeepSeek V3.1: `<｜tool▁call▁begin｜>name<｜tool▁sep｜>{...}<｜tool▁call▁end｜>` (for templates that
  render the tools: DeepSeek's own render only past calls, so they keep the generic format);
- Functionary v3.1: `<function=name>{...}</function>`;
- Command R7B: `<|START_ACTION|>` then a JSON list of `{"tool_name": ..., "parameters": {...}}`.

- GPT-OSS: a `commentary` message `to=functions.name` (read with its channels by harmony.py).

Other templates (Kimi, GLM, MiniMax, Qwen3-Coder's XML calls) and every template without tools
get `GENERIC`: Hermes's shape, the one most widely trained, with the tools and the shape described
in the system prompt by the text core.

`tool_choice` constrains the output with a `Structure` (a grammar around each call's JSON):
`required` or a named tool from the first token; `auto` once the format's opening marker appears
(text before it stays free; Llama 3.x has no marker, so its `auto` is not constrained).
`parallel_tool_calls: false` allows one call (Llama 3.x makes one call an answer in any case).
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from typing import Any, Literal

from engines.base import Choice, Structure
from gpustack_cli.core import json_values
from gpustack_cli.core.parsing.held_text import ready_and_held

_ALPHANUMERIC = string.ascii_letters + string.digits
# The arguments of a tool whose parameters are `{}`: none (an empty schema would allow any JSON).
_NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Call:
    name: str
    # The arguments as JSON text.
    arguments: str


@dataclass(frozen=True)
class ToolFormat:
    """How a model writes its calls. `kind`: "object" (each call a JSON object with the name and
    the arguments under `arguments_key`), "list" (one JSON list of such objects) or "named"
    (the name outside the JSON: `call_open` name `name_end` arguments `call_close`)."""

    name: str
    kind: Literal["object", "list", "named"]
    # What opens and closes the section of calls ("" where there is none) ...
    opening: str = ""
    closing: str = ""
    # ... and each call in it.
    call_open: str = ""
    call_close: str = ""
    name_end: str = ""
    name_key: str = "name"
    arguments_key: str = "arguments"
    # Between calls; None: one call an answer.
    separator: str | None = "\n"
    # Mistral's templates take only ids of 9 letters and digits.
    short_ids: bool = False
    # Further markers the output must show (GPT-OSS's message tokens).
    more_markers: tuple[str, ...] = ()

    @property
    def marker(self) -> str:
        """What shows that the calls begin."""
        return (self.opening or self.call_open).strip()

    @property
    def markers(self) -> tuple[str, ...]:
        """The format's marker strings: a model's vocabulary may hold them as special tokens,
        which the output must show for them to be read."""
        texts = (
            self.opening,
            self.closing,
            self.call_open,
            self.call_close,
            self.name_end,
            "[CALL_ID]",
            *self.more_markers,
        )
        return tuple(dict.fromkeys(t.strip() for t in texts if t.strip()))

    def call_id(self) -> str:
        if self.short_ids:
            return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(9))
        return new_call_id()

    def structure(self, tools: list[ToolSpec], choice: str, parallel: bool) -> Structure | None:
        """How the output is held for `tool_choice` (`auto`, `required` or a tool's name)."""
        chosen = [t for t in tools if choice in ("auto", "required") or t.name == choice]
        trigger = self.marker if choice == "auto" else None
        if choice == "auto" and not trigger:
            return None
        separator = self.separator if parallel else None
        if self.kind == "named":
            choices = tuple(
                Choice(self.call_open + t.name + self.name_end, t.parameters or _NO_ARGUMENTS, self.call_close)
                for t in chosen
            )
            return Structure(choices, self.opening, self.closing, separator, trigger)
        call = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {self.name_key: {"const": t.name}, self.arguments_key: t.parameters or _NO_ARGUMENTS},
                    "required": [self.name_key, self.arguments_key],
                }
                for t in chosen
            ]
        }
        if self.kind == "list":
            calls = {"type": "array", "items": call, "minItems": 1, **({} if parallel else {"maxItems": 1})}
            return Structure((Choice("", calls),), self.opening, self.closing, None, trigger)
        return Structure(
            (Choice(self.call_open, call, self.call_close),), self.opening, self.closing, separator, trigger
        )


HERMES = ToolFormat("hermes", "object", call_open="<tool_call>\n", call_close="\n</tool_call>")
# For models whose template shows no format read here: the system prompt asks for Hermes's
# shape, a call a line.
GENERIC = ToolFormat("generic", "object", call_open="<tool_call>", call_close="</tool_call>")
LLAMA3 = ToolFormat("llama3", "object", arguments_key="parameters", separator=None)
MISTRAL = ToolFormat("mistral", "list", opening="[TOOL_CALLS]", separator=None, short_ids=True)
MISTRAL_ARGS = ToolFormat(
    "mistral-args", "named", call_open="[TOOL_CALLS]", name_end="[ARGS]", separator="", short_ids=True
)
DEEPSEEK_R1 = ToolFormat(
    "deepseek-r1",
    "named",
    opening="<｜tool▁calls▁begin｜>",
    closing="<｜tool▁calls▁end｜>",
    call_open="<｜tool▁call▁begin｜>function<｜tool▁sep｜>",
    name_end="\n```json\n",
    call_close="\n```<｜tool▁call▁end｜>",
)
DEEPSEEK_V31 = ToolFormat(
    "deepseek-v3.1",
    "named",
    opening="<｜tool▁calls▁begin｜>",
    closing="<｜tool▁calls▁end｜>",
    call_open="<｜tool▁call▁begin｜>",
    name_end="<｜tool▁sep｜>",
    call_close="<｜tool▁call▁end｜>",
    separator="",
)
# Functionary v3.1's template tells its model to call one function at a time.
COMMAND_R = ToolFormat(
    "command-r",
    "list",
    opening="<|START_ACTION|>",
    closing="<|END_ACTION|>",
    name_key="tool_name",
    arguments_key="parameters",
    separator=None,
)
FUNCTIONARY = ToolFormat(
    "functionary", "named", call_open="<function=", name_end=">", call_close="</function>", separator=None
)


# GPT-OSS: a commentary message to the tool (see harmony.py, which reads its answers).
HARMONY = ToolFormat(
    "harmony",
    "named",
    call_open="<|channel|>commentary to=functions.",
    name_end=" <|constrain|>json<|message|>",
    separator=None,
    more_markers=("<|channel|>", "<|message|>", "<|end|>", "<|start|>", "<|constrain|>", "<|call|>", "<|return|>"),
)


def is_harmony(template: str) -> bool:
    """Whether a template is GPT-OSS's, whose answers are channelled messages (harmony.py)."""
    return "<|channel|>" in template and "<|message|>" in template


def tool_format(template: str) -> ToolFormat | None:
    """The tool-call format a chat template shows its model, or None for one this module does not
    read (or a template without tools)."""
    if "tools" not in template:
        return None
    if is_harmony(template):
        return HARMONY
    if "<|START_ACTION|>" in template:
        return COMMAND_R
    if "<｜tool▁sep｜>" in template:
        return DEEPSEEK_R1 if "```json" in template else DEEPSEEK_V31
    if "[TOOL_CALLS]" in template:
        return MISTRAL_ARGS if "[ARGS]" in template else MISTRAL
    if "<function=" in template:  # Qwen3-Coder writes each parameter as XML: not read here
        return None if "<parameter=" in template else FUNCTIONARY
    if "<tool_call>" in template:  # GLM writes its arguments as XML: not read here
        return None if "<arg_key>" in template else HERMES
    if "<|start_header_id|>" in template and '"parameters"' in template:
        return LLAMA3
    return None


# What the reader hands on: ("text", the text), or a call.
Piece = tuple[str, str] | Call


class ToolCallReader:
    """One answer's text in, as it streams; its free text and its calls out. Text is passed on
    as it comes, except what could be the start of the calls' marker; calls are passed on once
    whole (a section at its closing, a call at its own, else at the answer's end). Calls that do
    not parse are handed back as the text they were."""

    def __init__(self, fmt: ToolFormat):
        self.fmt = fmt
        self.held = ""
        self.in_calls = False
        self.after_calls = False
        self.marker = fmt.marker
        # The end of one region of calls: the section's, or each call's (Hermes, Functionary),
        # or none (the calls run to the answer's end).
        self.region_end = (fmt.closing or (fmt.call_close if fmt.kind != "list" else "")).strip()

    def feed(self, text: str) -> list[Piece]:
        self.held += text
        pieces: list[Piece] = []
        while self.held:
            marker = self.marker
            if not self.in_calls:
                if not marker:  # Llama 3.x: the answer is a call if it is a JSON object
                    stripped = self.held.lstrip().removeprefix("<|python_tag|>").lstrip()
                    if not stripped or "<|python_tag|>".startswith(stripped):
                        return pieces
                    if stripped.startswith("{"):
                        self.held, self.in_calls = stripped, True
                        return pieces
                    self.marker = "\0"  # plain text, to the end
                    continue
                if self.after_calls:  # blank lines between calls are not text
                    stripped = self.held.lstrip()
                    if not stripped:
                        return pieces
                    if stripped.startswith(marker) or marker.startswith(stripped):
                        self.held = stripped
                    self.after_calls = False
                at = self.held.find(marker)
                if at == -1:
                    ready, self.held = ready_and_held(self.held, (marker,))
                    return pieces + ([("text", ready)] if ready else [])
                if at:
                    pieces.append(("text", self.held[:at]))
                self.held, self.in_calls = self.held[at:], True
            if not self.region_end:  # the calls run to the end of the answer
                return pieces
            end = self.held.find(self.region_end)
            if end == -1:
                return pieces
            region, self.held = self.held[: end + len(self.region_end)], self.held[end + len(self.region_end) :]
            pieces += self._parse(region)
            self.in_calls, self.after_calls = False, True
        return pieces

    def end(self) -> list[Piece]:
        held, self.held = self.held, ""
        if not held or (self.after_calls and not held.strip()):
            return []
        return self._parse(held) if self.in_calls else [("text", held)]

    def _parse(self, text: str) -> list[Piece]:
        """The calls in a region of the output (with its markers), or its text if they do not parse."""
        fmt = self.fmt
        body = text.strip().removeprefix(fmt.opening.strip()).removesuffix(fmt.closing.strip()).strip()
        calls = self._named(body) if fmt.kind == "named" else self._objects(body)
        return calls if calls else [("text", text)]

    def _objects(self, body: str) -> list[Piece]:
        body = body.removeprefix(self.fmt.call_open.strip()).removesuffix(self.fmt.call_close.strip())
        try:
            data = json_values.loads(body)
        except ValueError:
            return []
        items = data if isinstance(data, list) else [data]
        calls = [_call(item, self.fmt.name_key, self.fmt.arguments_key) for item in items]
        return [] if any(c is None for c in calls) else [c for c in calls if c is not None]

    def _named(self, body: str) -> list[Piece]:
        opening, name_end = self.fmt.call_open.strip(), self.fmt.name_end.strip()
        calls: list[Piece] = []
        for part in body.split(opening)[1:]:
            name, found, arguments = part.partition(name_end)
            arguments = arguments.strip().removesuffix(self.fmt.call_close.strip()).strip()
            arguments = arguments.removeprefix("```json").removesuffix("```").strip()
            name = name.split("[CALL_ID]")[0].strip()  # newer Mistrals may write an id after the name
            try:
                parsed = json_values.loads(arguments)
            except ValueError:
                return []
            if not found or not name or not isinstance(parsed, dict):
                return []
            calls.append(Call(name, json.dumps(parsed)))
        return calls


def _call(data: Any, name_key: str, arguments_key: str) -> Call | None:
    if not isinstance(data, dict) or not isinstance(data.get(name_key), str):
        return None
    arguments = data.get(arguments_key, data.get("arguments", {}))
    return Call(data[name_key], arguments if isinstance(arguments, str) else json.dumps(arguments))
