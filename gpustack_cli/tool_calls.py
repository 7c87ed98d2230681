"""Tool calls in a model's own format, for models whose chat template takes `tools`.

A model trained for tool calling calls tools far better in the format its template shows it
(llama.cpp's `common/chat.cpp` and vLLM's tool parsers read the same formats). Three are read here:

- Hermes (Qwen 2.5 and 3, Hermes 2 and 3, and the many fine-tunes of them): each call is
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, after optional text;
- Llama 3.x: the whole answer is one JSON object `{"name": ..., "parameters": {...}}`;
- Mistral (Nemo and the models of its template): `[TOOL_CALLS]` then a JSON list of
  `{"name": ..., "arguments": {...}}`.

Other templates (and every template without tools) keep the text core's generic format: the
tools described in the system prompt and the answer held to a JSON schema.

`tool_choice` constrains the output with a `Structure` (a grammar around the call's JSON):
`required` or a named tool from the first token; `auto` lazily, once the format's opening marker
appears (text before it stays free; Llama 3.x has no marker, so its `auto` is not constrained).
`parallel_tool_calls: false` allows one call (Llama 3.x makes one call an answer in any case).
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from typing import Any, Literal

from engines.base import Structure

FormatName = Literal["hermes", "llama3", "mistral"]
_ALPHANUMERIC = string.ascii_letters + string.digits
# The arguments of a tool whose parameters are `{}`: none (an empty schema would allow any JSON).
_NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


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
    name: FormatName
    # What opens the calls in the output ("" where the whole answer is the call).
    opening: str
    # What closes each call, and the key its arguments are under.
    closing: str
    arguments_key: str

    def call_id(self) -> str:
        """A new id for a call, as the model's template expects ids (Mistral's: 9 letters and digits)."""
        if self.name == "mistral":
            return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(9))
        return f"call_{secrets.token_hex(12)}"

    def structure(self, tools: list[ToolSpec], choice: str, parallel: bool) -> Structure | None:
        """How the output is held for `tool_choice` (`auto`, `required` or a tool's name)."""
        chosen = [t for t in tools if choice in ("auto", "required") or t.name == choice]
        call = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"const": t.name}, self.arguments_key: t.parameters or _NO_ARGUMENTS},
                    "required": ["name", self.arguments_key],
                }
                for t in chosen
            ]
        }
        lazy = choice == "auto"
        if lazy and not self.opening:
            return None
        if self.name == "mistral":  # one list of calls after the marker
            calls = {"type": "array", "items": call, "minItems": 1, **({} if parallel else {"maxItems": 1})}
            return Structure(calls, prefix=self.opening, lazy=lazy)
        # Llama 3.x calls one tool per answer: its answer is the call.
        several = parallel and self.name != "llama3"
        separator = "\n" if several else None
        return Structure(call, prefix=self.opening, suffix=self.closing, separator=separator, lazy=lazy)


HERMES = ToolFormat("hermes", "<tool_call>\n", "\n</tool_call>", "arguments")
LLAMA3 = ToolFormat("llama3", "", "", "parameters")
MISTRAL = ToolFormat("mistral", "[TOOL_CALLS]", "", "arguments")


def tool_format(template: str) -> ToolFormat | None:
    """The tool-call format a chat template shows its model, or None for one this module does not
    read (or a template without tools)."""
    if "tools" not in template:
        return None
    if "<tool_call>" in template and "<function=" not in template:  # Qwen3-Coder writes XML calls
        return HERMES
    if "[TOOL_CALLS]" in template and "[ARGS]" not in template:  # newer Mistrals write name[ARGS]{...}
        return MISTRAL
    if "<|start_header_id|>" in template and '"parameters"' in template:
        return LLAMA3
    return None


def _call(data: Any, arguments_key: str) -> Call | None:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get(arguments_key, data.get("arguments", {}))
    return Call(data["name"], arguments if isinstance(arguments, str) else json.dumps(arguments))


def _partial_suffix(text: str, tag: str) -> int:
    return max((k for k in range(1, len(tag)) if text.endswith(tag[:k])), default=0)


# What the reader hands on: text, or a call.
Piece = str | Call


class ToolCallReader:
    """One answer's text in, as it streams; its free text and its calls out. Text is passed on
    as it comes, except what could be the start of a call's opening marker; a call is passed on
    once whole. A call that does not parse is handed back as the text it was."""

    def __init__(self, fmt: ToolFormat):
        self.fmt = fmt
        self.held = ""
        self.in_call = False
        self.after_call = False
        self.started = False  # any text seen yet (Llama 3.x: a call is the whole answer)

    def feed(self, text: str) -> list[Piece]:
        self.held += text
        pieces: list[Piece] = []
        while self.held:
            if self.fmt.name == "llama3":
                return pieces + self._llama3()
            if not self.in_call:
                marker = self.fmt.opening.strip()
                if self.after_call:  # blank lines between calls are not text
                    stripped = self.held.lstrip()
                    if not stripped:
                        return pieces
                    if stripped.startswith(marker) or marker.startswith(stripped):
                        self.held = stripped
                    self.after_call = False
                at = self.held.find(marker)
                if at == -1:
                    keep = _partial_suffix(self.held, marker)
                    ready, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
                    return pieces + ([ready] if ready else [])
                if at:
                    pieces.append(self.held[:at])
                self.held, self.in_call = self.held[at:], True
            closing = self.fmt.closing.strip()
            if not closing:  # the calls run to the end of the answer
                return pieces
            end = self.held.find(closing)
            if end == -1:
                return pieces
            whole, self.held = self.held[: end + len(closing)], self.held[end + len(closing) :]
            pieces += self._parse(whole)
            self.in_call, self.after_call = False, True
        return pieces

    def _llama3(self) -> list[Piece]:
        if not self.started:
            stripped = self.held.lstrip().removeprefix("<|python_tag|>").lstrip()
            if not stripped or "<|python_tag|>".startswith(stripped):
                return []
            self.started, self.in_call = True, stripped.startswith("{")
            if self.in_call:
                self.held = stripped
        if self.in_call:
            return []
        ready, self.held = self.held, ""
        return [ready]

    def end(self) -> list[Piece]:
        held, self.held = self.held, ""
        if not held or (self.after_call and not held.strip()):
            return []
        return self._parse(held) if self.in_call else [held]

    def _parse(self, text: str) -> list[Piece]:
        """The calls in one call's text (with its markers), or the text itself if it has none."""
        body = text.strip()
        if self.fmt.opening:
            body = body.removeprefix(self.fmt.opening.strip())
        if self.fmt.closing:
            body = body.removesuffix(self.fmt.closing.strip())
        try:
            data = json.loads(body)
        except ValueError:
            return [text]
        items = data if isinstance(data, list) else [data]
        calls = [_call(item, self.fmt.arguments_key) for item in items]
        if not calls or any(c is None for c in calls):
            return [text]
        return [c for c in calls if c is not None]
