"""GPT-OSS's output format (OpenAI's "harmony"): the answer is a run of messages, each a header
and a body, `<|channel|>CHANNEL [to=functions.NAME] [<|constrain|>json]<|message|>BODY`, the next
one opened by `<|end|><|start|>assistant`. The `analysis` channel holds the model's reasoning,
`final` its answer, and a `commentary` message addressed `to=functions.NAME` a tool call whose
body is the arguments' JSON (ended by `<|call|>`).

The reader takes the answer's text as it streams (the markers are the model's control tokens,
shown for it: `tool_calls.HARMONY.markers`) and hands on reasoning, answer text and calls, holding back only what
could still be a marker.
"""

from __future__ import annotations

import json
import re

from gpustack_cli.core.parsing.held_text import ready_and_held
from gpustack_cli.core.parsing.tool_calls import Call

# What ends a message's body.
_BODY_ENDS = ("<|end|>", "<|call|>", "<|return|>", "<|start|>")
_RECIPIENT = re.compile(r"to=functions\.([^\s<]+)")
# A piece of the answer: ("reasoning" or "text", its text), or a call.
Part = tuple[str, str] | Call


class HarmonyReader:
    def __init__(self) -> None:
        self.held = ""
        self.in_header = True
        self.first = True  # nothing read yet: an answer may come without any header
        self.channel = "final"
        self.recipient: str | None = None

    def feed(self, text: str) -> list[Part]:
        self.held += text
        parts: list[Part] = []
        while self.held:
            if self.in_header:
                at = self.held.find("<|message|>")
                if at == -1:
                    if self.first and self.held.strip() and not self.held.lstrip().startswith("<"):
                        self.in_header = self.first = False  # no header at all: plain answer text
                        continue
                    return parts
                self._begin(self.held[:at])
                self.held = self.held[at + len("<|message|>") :]
                continue
            ends = [(self.held.find(tag), tag) for tag in _BODY_ENDS if tag in self.held]
            if not ends:
                if self.recipient is not None:  # a call's arguments: whole, at its end
                    return parts
                ready, self.held = ready_and_held(self.held, _BODY_ENDS)
                return parts + self._body(ready)
            at, tag = min(ends)
            parts += self._body(self.held[:at], whole=True)
            self.held = self.held[at + len(tag) :]
            self.in_header, self.channel, self.recipient = True, "final", None
        return parts

    def end(self) -> list[Part]:
        held, self.held = self.held, ""
        if self.in_header or not held:
            return []
        return self._body(held, whole=True)

    def _begin(self, header: str) -> None:
        """A message's header read: its channel and its recipient."""
        channel = header.split("<|channel|>", 1)[1] if "<|channel|>" in header else header
        self.channel = channel.split()[0] if channel.split() else "final"
        found = _RECIPIENT.search(header)
        self.recipient = found.group(1) if found else None
        self.in_header = self.first = False

    def _body(self, text: str, whole: bool = False) -> list[Part]:
        if self.recipient is not None:
            if not whole:
                return []
            try:
                arguments = json.loads(text.strip())
            except ValueError:
                return [("text", text)] if text else []
            return [Call(self.recipient, json.dumps(arguments))]
        if not text:
            return []
        return [("reasoning" if self.channel == "analysis" else "text", text)]
