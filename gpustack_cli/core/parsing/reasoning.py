"""Reasoning kept apart from the answer: the thinking section a reasoning model writes before its
answer (`<think>...</think>` in DeepSeek-R1 distills, Qwen3, QwQ, SmolLM3; `[THINK]` in Mistral's
reasoning models; ByteDance Seed's, Kimi's and Command R7B's own tags).

The tags come from the chat template: a template that writes one of the known pairs has a model
that reasons with them. Where the rendered prompt ends inside an open section (DeepSeek-R1's
templates end the assistant's header with `<think>`), the output starts in it. The splitter reads
the answer's text as it streams and hands on each piece as reasoning or content, holding back only
what could still be the start of a tag.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpustack_cli.core.parsing.held_text import ready_and_held

# Known (opening, closing) tags, the most common first.
TAGS = (
    ("<think>", "</think>"),
    ("[THINK]", "[/THINK]"),
    ("<seed:think>", "</seed:think>"),
    ("◁think▷", "◁/think▷"),
    ("<|START_THINKING|>", "<|END_THINKING|>"),
)
# A piece of an answer: ("reasoning" or "text", its text).
Part = tuple[str, str]


@dataclass(frozen=True)
class ReasoningFormat:
    start: str
    end: str
    # The prompt leaves the model inside its reasoning: the output starts in it.
    opened: bool


def reasoning_format(template: str, prompt: str) -> ReasoningFormat | None:
    """How a model whose chat template is `template` reasons, given the prompt it rendered; None
    for a model that does not."""
    for start, end in TAGS:
        if start in template and end in template:
            return ReasoningFormat(start, end, opened=prompt.rstrip().endswith(start))
    return None


class ReasoningSplitter:
    """One answer's text in, its reasoning and content parts out, as the text streams."""

    def __init__(self, fmt: ReasoningFormat):
        self.fmt = fmt
        self.state = "reasoning" if fmt.opened else "start"
        self.held = ""

    def feed(self, text: str) -> list[Part]:
        self.held += text
        parts: list[Part] = []
        while True:
            if self.state == "start":  # the answer may open with the tag, after blank lines
                stripped = self.held.lstrip()
                if stripped.startswith(self.fmt.start):
                    self.held, self.state = stripped[len(self.fmt.start) :], "reasoning"
                elif not stripped or self.fmt.start.startswith(stripped):
                    return parts  # not yet known
                else:
                    self.state = "content"
            elif self.state == "reasoning":
                at = self.held.find(self.fmt.end)
                if at == -1:
                    ready, self.held = ready_and_held(self.held, (self.fmt.end,))
                    return parts + ([("reasoning", ready)] if ready else [])
                if at:
                    parts.append(("reasoning", self.held[:at]))
                self.held, self.state = self.held[at + len(self.fmt.end) :], "after"
            elif self.state == "after":  # the blank lines between the reasoning and the answer
                self.held = self.held.lstrip()
                if not self.held:
                    return parts
                self.state = "content"
            else:
                ready, self.held = self.held, ""
                return parts + ([("text", ready)] if ready else [])

    def end(self) -> list[Part]:
        """What is still held when the answer ends: an unfinished tag is text after all."""
        held, self.held = self.held, ""
        if not held or self.state == "after":
            return []
        return [("reasoning" if self.state == "reasoning" else "text", held)]
