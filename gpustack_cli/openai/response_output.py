"""OpenAI's Responses API, core to wire: the text core's events become output items (reasoning,
a message with its text, function calls) and the stream events that write them.

One writer serves both ways of answering: a streamed response sends each event as it is made
(with its `sequence_number`); a whole one keeps only the items the writer built.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gpustack_cli.core.types import Event, Finished, ReasoningDelta, TextDelta, ToolCallEvent
from gpustack_cli.openai.chat import logprob_entry
from gpustack_cli.openai.responses import ResponseBody, echoed_tool_choice, echoed_tools, new_item_id


@dataclass
class _Open:
    """The item being written: its place in `output`, and its text so far."""

    index: int
    item: dict[str, Any]
    text: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)


class OutputWriter:
    """Reads an answer's events into output items; `feed` and `finish` hand back the stream
    events (without sequence numbers) that write them."""

    def __init__(self, namespaces: dict[str, str] | None = None):
        """`namespaces`: the namespace of each namespaced function, which its calls carry."""
        self.namespaces = namespaces or {}
        self.output: list[dict[str, Any]] = []
        self.finished: Finished | None = None
        self._open: _Open | None = None

    @property
    def status(self) -> str:
        """The response's status once the answer ended: `incomplete` when cut by its budget."""
        return "incomplete" if self.finished is not None and self.finished.reason == "length" else "completed"

    def feed(self, event: Event) -> list[dict[str, Any]]:
        if isinstance(event, ReasoningDelta):
            return self._write("reasoning", event.text, [])
        if isinstance(event, TextDelta):
            return self._write("message", event.text, [logprob_entry(lp) for lp in event.logprobs])
        if isinstance(event, ToolCallEvent):
            return self._close() + self._call(event)
        self.finished = event
        return self._close("incomplete" if event.reason == "length" else "completed")

    def _write(self, kind: str, text: str, logprobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._open is not None and self._open.item["type"] != kind:
            events += self._close()
        if self._open is None:
            events += self._begin(kind)
        current = self._open
        assert current is not None
        current.text += text
        current.logprobs += logprobs
        where = {"item_id": current.item["id"], "output_index": current.index, "content_index": 0}
        if kind == "reasoning":
            events.append({"type": "response.reasoning_text.delta", **where, "delta": text})
        else:
            events.append({"type": "response.output_text.delta", **where, "delta": text, "logprobs": logprobs})
        return events

    def _begin(self, kind: str) -> list[dict[str, Any]]:
        if kind == "reasoning":
            item: dict[str, Any] = {"id": new_item_id("rs"), "type": "reasoning", "summary": [], "content": []}
        else:
            item = {"id": new_item_id("msg"), "type": "message", "role": "assistant", "content": []}
        item["status"] = "in_progress"
        self._open = _Open(len(self.output), item)
        self.output.append(item)
        where = {"item_id": item["id"], "output_index": self._open.index, "content_index": 0}
        return [
            {"type": "response.output_item.added", "output_index": self._open.index, "item": dict(item)},
            {"type": "response.content_part.added", **where, "part": self._part(kind, "", [])},
        ]

    def _part(self, kind: str, text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
        if kind == "reasoning":
            return {"type": "reasoning_text", "text": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}

    def _close(self, status: str = "completed") -> list[dict[str, Any]]:
        current = self._open
        if current is None:
            return []
        self._open = None
        item = current.item
        part = self._part(item["type"], current.text, current.logprobs)
        item["content"], item["status"] = [part], status
        where = {"item_id": item["id"], "output_index": current.index, "content_index": 0}
        if item["type"] == "reasoning":
            done = {"type": "response.reasoning_text.done", **where, "text": current.text}
        else:
            done = {"type": "response.output_text.done", **where, "text": current.text, "logprobs": part["logprobs"]}
        return [
            done,
            {"type": "response.content_part.done", **where, "part": part},
            {"type": "response.output_item.done", "output_index": current.index, "item": item},
        ]

    def _call(self, event: ToolCallEvent) -> list[dict[str, Any]]:
        call = event.call
        item = {
            "id": new_item_id("fc"),
            "type": "function_call",
            "status": "in_progress",
            "call_id": call.id,
            "name": call.name,
            "arguments": "",
        }
        if call.name in self.namespaces:
            item["namespace"] = self.namespaces[call.name]
        index = len(self.output)
        self.output.append(item)
        added = {"type": "response.output_item.added", "output_index": index, "item": dict(item)}
        item["arguments"], item["status"] = call.arguments, "completed"
        where = {"item_id": item["id"], "output_index": index}
        return [
            added,
            {"type": "response.function_call_arguments.delta", **where, "delta": call.arguments},
            {"type": "response.function_call_arguments.done", **where, "name": call.name, "arguments": call.arguments},
            {"type": "response.output_item.done", "output_index": index, "item": item},
        ]


def usage(finished: Finished) -> dict[str, Any]:
    return {
        "input_tokens": finished.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": finished.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": finished.reasoning_tokens},
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


@dataclass
class ResponseHead:
    """What every state of one response shares: its id, model and creation time, and the request
    settings it echoes."""

    body: ResponseBody
    model: str
    id: str = field(default_factory=lambda: new_item_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(
        self,
        status: str,
        writer: OutputWriter | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The response object in `status`, with what `writer` has read so far."""
        body = self.body
        text_format = body.text.format if body.text and body.text.format else None
        finished = writer.finished if writer is not None else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "background": False,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": body.max_tool_calls,
            "model": self.model,
            "output": list(writer.output) if writer is not None else [],
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": body.previous_response_id,
            "reasoning": {
                "effort": body.reasoning.effort if body.reasoning else None,
                "summary": body.reasoning.summary if body.reasoning else None,
            },
            "service_tier": "default",
            "store": body.store,
            "temperature": body.temperature if body.temperature is not None else 1.0,
            "text": {
                "format": text_format.model_dump(mode="json", by_alias=True, exclude_none=True)
                if text_format
                else {"type": "text"},
                "verbosity": (body.text.verbosity if body.text else None) or "medium",
            },
            "tool_choice": echoed_tool_choice(body),
            "tools": echoed_tools(body),
            "top_logprobs": body.top_logprobs or 0,
            "top_p": body.top_p if body.top_p is not None else 1.0,
            "truncation": body.truncation or "disabled",
            "usage": usage(finished) if finished is not None else None,
            "user": body.user,
            "metadata": body.metadata or {},
        }
