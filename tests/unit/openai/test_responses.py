"""The Responses API's translators and store, without a model: input items to the text core's
chat, the core's events to output items and stream events (checked against the openai package's
own types), refusals, and the SQLite store."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from engines.base import RequestAborted
from gpustack_cli.core.backend import prepare_fitting
from gpustack_cli.core.prompts import render_chat
from gpustack_cli.core.types import (
    Finished,
    GenerationError,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallEvent,
)
from gpustack_cli.openai.response_output import OutputWriter, ResponseHead
from gpustack_cli.openai.response_store import ResponseStore, StoredResponse, StoreVersionError
from gpustack_cli.openai.responses import ResponseBody, chat_request, input_items, refuse_unsupported
from tests.support.openapi import validate
from tests.unit.core.test_streams import FakeGenerator

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def body(**fields) -> ResponseBody:
    return ResponseBody.model_validate({"model": "m", **fields})


def test_a_string_input_is_one_user_message() -> None:
    request = body(input="Hello", instructions="Be brief.", max_output_tokens=7, temperature=0.5)
    items = input_items(request)
    assert [(i["type"], i["role"], i["content"]) for i in items] == [
        ("message", "user", [{"type": "input_text", "text": "Hello"}])
    ]
    assert items[0]["id"].startswith("msg_")
    chat = chat_request(request, [], items)
    assert [(m.role, m.content) for m in chat.messages] == [("system", "Be brief."), ("user", "Hello")]
    assert chat.max_tokens == 7 and chat.sampling.temperature == 0.5 and chat.tool_choice == "auto"


def test_items_of_a_tool_round_trip_become_chat_turns() -> None:
    """The shape agents send: developer instructions, a user turn, the model's reasoning and
    two calls, their outputs, with content as parts."""
    request = body(
        input=[
            {"role": "developer", "content": [{"type": "input_text", "text": "You are terse."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
            {"type": "function_call", "call_id": "call_a", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call", "call_id": "call_b", "name": "get_weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "call_a", "output": "Snow"},
            {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "Sun"}]},
            {"role": "assistant", "content": "Oslo: snow. Rome: sun."},
            {"role": "user", "content": "Thanks"},
        ],
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        reasoning={"effort": "low", "summary": "auto"},
        text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}},
    )
    refuse_unsupported(request)
    items = input_items(request)
    assert [i["id"][:3] for i in items] == ["msg", "msg", "rs_", "fc_", "fc_", "fco", "fco", "msg", "msg"]
    chat = chat_request(request, [], items)
    turns = [(m.role, m.content, [c.name for c in m.tool_calls], m.tool_call_id) for m in chat.messages]
    assert turns == [
        ("system", "You are terse.", [], None),
        ("user", "Weather?", [], None),
        ("assistant", "", ["get_weather", "get_weather"], None),
        ("tool", "Snow", [], "call_a"),
        ("tool", "Sun", [], "call_b"),
        ("assistant", "Oslo: snow. Rome: sun.", [], None),
        ("user", "Thanks", [], None),
    ]
    assert chat.tool_choice == "get_weather" and chat.parallel_tool_calls is False
    assert chat.template_kwargs == {"reasoning_effort": "low"} and chat.json_schema == {"type": "object"}
    assert [t.name for t in chat.tools] == ["get_weather"]


def test_history_comes_before_the_new_input() -> None:
    earlier = [
        {"id": "msg_1", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "I am Ada."}]},
        {
            "id": "msg_2",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Hello Ada.", "annotations": []}],
        },
    ]
    request = body(input="Who am I?", instructions="New instructions.")
    chat = chat_request(request, earlier, input_items(request))
    assert [(m.role, m.content) for m in chat.messages] == [
        ("system", "New instructions."),
        ("user", "I am Ada."),
        ("assistant", "Hello Ada."),
        ("user", "Who am I?"),
    ]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["vs"]}]}, "tools[1].type"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ],
)
def test_what_a_local_model_cannot_do_is_refused(fields: dict, param: str) -> None:
    with pytest.raises(GenerationError) as caught:
        refuse_unsupported(body(input="Hi", **fields))
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}, "input[0].content[0]"),
        (
            {"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]},
            "input[0].content[0].image_url",
        ),
        ({"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}, "input[0].content[0]"),
        ({"type": "item_reference", "id": "msg_1"}, "input[0].type"),
        ({"type": "web_search_call", "id": "ws_1"}, "input[0].type"),
    ],
)
def test_inputs_this_server_cannot_read_are_refused(item: dict, param: str) -> None:
    with pytest.raises(GenerationError) as caught:
        input_items(body(input=[item]))
    assert caught.value.param == param


def test_tool_choice_must_name_a_tool() -> None:
    for fields, words in [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "no function named"),
        ({"tool_choice": "required"}, "needs 'tools'"),
    ]:
        request = body(input="Hi", **fields)
        with pytest.raises(GenerationError, match=words):
            chat_request(request, [], input_items(request))


def _lp(token: str) -> TokenLogprob:
    return TokenLogprob(token, list(token.encode()), -0.5, [(token, list(token.encode()), -0.5)])


def test_stream_events_in_order_and_valid() -> None:
    """Reasoning, text, then two calls: each item opened, written and closed in turn; every
    event and the final response validate against the openai package's types."""
    request = body(input="Hi", tools=[WEATHER], include=["message.output_text.logprobs"], top_logprobs=1)
    head = ResponseHead(request, "m")
    writer = OutputWriter()
    core = [
        ReasoningDelta("Let me "),
        ReasoningDelta("think."),
        TextDelta("Checking", [_lp("Checking")]),
        TextDelta(" now.", [_lp(" now.")]),
        ToolCallEvent(0, ToolCall("call_1", "get_weather", '{"city": "Oslo"}')),
        ToolCallEvent(1, ToolCall("call_2", "get_weather", '{"city": "Rome"}')),
        Finished("tool_calls", 12, 30, reasoning_tokens=3),
    ]
    events = [e for event in core for e in writer.feed(event)]
    for number, event in enumerate(events):
        validate({**event, "sequence_number": number}, "ResponseStreamEvent")
    kinds = [e["type"].removeprefix("response.") for e in events]
    item = ["output_item.added", "content_part.added"]
    assert kinds == [
        *item,
        "reasoning_text.delta",
        "reasoning_text.delta",
        "reasoning_text.done",
        "content_part.done",
        "output_item.done",
        *item,
        "output_text.delta",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        *(
            ["output_item.added", "function_call_arguments.delta", "function_call_arguments.done", "output_item.done"]
            * 2
        ),
    ]
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] == [0, 1, 2, 3]
    response = head.response(writer.status, writer)
    validate(response, "Response")
    reasoning, message, first, second = response["output"]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Let me think."}]
    assert message["content"][0]["text"] == "Checking now." and len(message["content"][0]["logprobs"]) == 2
    assert (first["call_id"], first["arguments"], second["call_id"]) == ("call_1", '{"city": "Oslo"}', "call_2")
    assert response["status"] == "completed" and response["usage"]["output_tokens_details"]["reasoning_tokens"] == 3
    assert response["usage"]["total_tokens"] == 42


def test_a_cut_answer_is_incomplete() -> None:
    writer = OutputWriter()
    for event in (TextDelta("Once upon"), Finished("length", 5, 2)):
        writer.feed(event)
    response = ResponseHead(body(input="Tell a story", max_output_tokens=2), "m").response(writer.status, writer)
    validate(response, "Response")
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete" and response["completed_at"] is None


def _stored(response_id: str, owner: str = "k1", previous: str | None = None, created: float | None = None):
    response = {"id": response_id, "created_at": created or time.time(), "output": [{"type": "message"}]}
    return StoredResponse(response_id, owner, previous, response, [{"id": f"in_{response_id}", "type": "message"}])


def test_store_keeps_owners_apart_and_follows_conversations(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.db", ttl=3600)
    store.put(_stored("a"))
    store.put(_stored("b", previous="a"))
    store.put(_stored("c", previous="b"))
    assert store.get("a", "k2") is None and store.get("a", "k1").input_items == [{"id": "in_a", "type": "message"}]
    assert [s.id for s in store.conversation("c", "k1", 100)] == ["a", "b", "c"]
    assert [s.id for s in store.conversation("c", "k1", 2)] == ["b", "c"]
    assert store.conversation("c", "k2", 100) is None
    assert not store.delete("b", "k2") and store.delete("b", "k1")
    assert [s.id for s in store.conversation("c", "k1", 100)] == ["c"]
    # A new store on the same file (a restart) reads what the last one wrote.
    assert ResponseStore(tmp_path / "r.db", ttl=3600).get("c", "k1") is not None


def test_store_expires_old_responses(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.db", ttl=60)
    store.put(_stored("old", created=time.time() - 120))
    assert store.get("old", "k1") is None
    store.put(_stored("new"))
    with sqlite3.connect(tmp_path / "r.db") as db:
        assert [row[0] for row in db.execute("SELECT id FROM responses")] == ["new"]
    forever = ResponseStore(tmp_path / "f.db", ttl=0)
    forever.put(_stored("old", created=time.time() - 10**9))
    assert forever.get("old", "k1") is not None


def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    ResponseStore(tmp_path / "r.db", ttl=60)
    with sqlite3.connect(tmp_path / "r.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute("PRAGMA user_version=99")
    with pytest.raises(StoreVersionError, match="newer gpustack"):
        ResponseStore(tmp_path / "r.db", ttl=60)


def test_truncation_auto_leaves_out_the_oldest_turns() -> None:
    """A fake generator of one token per character and a 512-token context: three turns of about
    190 characters (with ChatML's markup) do not fit; `truncation: auto` leaves out the oldest turn
    (and its answer), keeps the instructions and the newest input."""
    turns = []
    for n in range(3):
        turns += [{"role": "user", "content": f"question {n} " + "x" * 100}, {"role": "assistant", "content": "y" * 20}]
    request = body(input=[*turns, {"role": "user", "content": "last"}], instructions="Be brief.", truncation="auto")
    chat = chat_request(request, [], input_items(request))
    engine = FakeGenerator([b"a"])
    with pytest.raises(GenerationError, match="maximum context length"):
        prepare_fitting(engine, chat, truncate=False)
    fitted = prepare_fitting(engine, chat, truncate=True)
    assert len(fitted.prompt_tokens) <= engine.n_ctx
    kept = render_chat(engine, replace(chat, messages=chat.messages[:1] + chat.messages[3:]))
    assert len(fitted.prompt_tokens) == len(kept)  # one turn left out, no more
    assert "question 0" not in kept and "question 1" in kept and "Be brief." in kept and "last" in kept


class CountingGenerator(FakeGenerator):
    """Counts its tokenizing: each try of the truncation renders and tokenizes the whole rest once."""

    tokenized = 0

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        self.tokenized += 1
        return super().tokenize(text, special)


def _turns(count: int) -> list[dict]:
    turns = []
    for n in range(count):
        turns += [{"role": "user", "content": f"q{n} " + "x" * 40}, {"role": "assistant", "content": "y" * 10}]
    return [*turns, {"role": "user", "content": "last"}]


def test_truncation_searches_the_cut_by_bisection() -> None:
    """A thousand turns, of which the last few fit: the cut is found in about log2(1000) tries,
    not one try per turn left out (a 1,000-turn chain took minutes that way)."""
    request = body(input=_turns(1000), truncation="auto")
    engine = CountingGenerator([b"a"])
    fitted = prepare_fitting(engine, chat_request(request, [], input_items(request)), truncate=True)
    assert len(fitted.prompt_tokens) <= engine.n_ctx
    assert engine.tokenized <= 2 * 12  # a render and a count for each of 1 + ceil(log2(1000)) tries


def test_truncation_leaves_out_the_fewest_turns() -> None:
    """The cut bisection finds is the one leaving out turns one at a time would find."""
    chat = chat_request(body(input=_turns(60), truncation="auto"), [], input_items(body(input=_turns(60))))
    engine = FakeGenerator([b"a"])
    fitted = prepare_fitting(engine, chat, truncate=True)
    messages = chat.messages
    for start in range(0, len(messages), 2):  # each user message, oldest first
        rest = render_chat(engine, replace(chat, messages=messages[start:]))
        if len(rest) <= engine.n_ctx:
            break
    assert len(fitted.prompt_tokens) == len(rest)


def test_truncation_stops_when_the_client_leaves() -> None:
    turns = [{"role": "user", "content": "x" * 100}] * 200
    request = body(input=turns, truncation="auto")
    chat = chat_request(request, [], input_items(request))
    left = threading.Event()
    left.set()
    engine = CountingGenerator([b"a"])
    with pytest.raises(RequestAborted):
        prepare_fitting(engine, chat, truncate=True, cancel=left)
    assert engine.tokenized <= 2  # the first, whole try only


def test_namespaced_functions_are_offered_and_their_calls_carry_the_namespace() -> None:
    """Codex's shape: function tools beside a namespace of more functions."""
    spawn = {"type": "function", "name": "spawn_agent", "parameters": {"type": "object", "properties": {}}}
    agents = {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.", "tools": [spawn]}
    request = body(input="Hi", tools=[WEATHER, agents])
    refuse_unsupported(request)
    assert [t.name for t in chat_request(request, [], input_items(request)).tools] == ["get_weather", "spawn_agent"]
    writer = OutputWriter({"spawn_agent": "multi_agent_v1"})
    writer.feed(ToolCallEvent(0, ToolCall("call_1", "spawn_agent", "{}")))
    writer.feed(ToolCallEvent(1, ToolCall("call_2", "get_weather", '{"city": "Oslo"}')))
    writer.feed(Finished("tool_calls", 3, 4))
    response = ResponseHead(request, "m").response("completed", writer)
    validate(response, "Response")
    assert [item.get("namespace") for item in response["output"]] == ["multi_agent_v1", None]
    assert response["tools"][1]["tools"][0]["name"] == "spawn_agent"
    nested = {**agents, "tools": [spawn, {"type": "custom", "name": "apply_patch"}]}
    with pytest.raises(GenerationError) as caught:
        refuse_unsupported(body(input="Hi", tools=[nested]))
    assert caught.value.param == "tools[0].tools[1].type"
    with pytest.raises(GenerationError, match="unique"):
        refuse_unsupported(body(input="Hi", tools=[spawn, agents]))


def codex_body() -> dict:
    """A request of the shape and size Codex sends on its first turn (written here, not copied):
    long developer instructions and an environment block as input messages, function tools with
    `strict` and a namespace of sub-agent tools, reasoning summaries asked for, nothing stored,
    encrypted reasoning included, a cache key and the client's own metadata."""

    def function(name: str, size: int) -> dict:
        properties = {
            "cmd": {"type": "string", "description": "The command to run. " * size},
            "workdir": {"type": "string"},
            "yield_time_ms": {"type": "number"},
            "justification": {"type": "string"},
        }
        parameters = {"type": "object", "properties": properties, "required": ["cmd"], "additionalProperties": False}
        return {
            "type": "function",
            "name": name,
            "description": f"{name}. " * size,
            "strict": False,
            "parameters": parameters,
        }

    agents = [function(n, 40) for n in ("spawn_agent", "send_input", "wait", "close_agent")]
    return {
        "model": "m",
        "instructions": "You are a coding agent running in a terminal. " * 300,
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "Sandbox: read-only. " * 400}],
            },
            {
                "type": "message",
                "role": "developer",
                "content": [
                    {"type": "input_text", "text": "Approvals: never. " * 50},
                    {"type": "input_text", "text": "Skills."},
                ],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "<environment_context>cwd</environment_context>"}],
            },
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]},
        ],
        "tools": [
            *[function(n, 30) for n in ("exec_command", "write_stdin", "request_user_input", "view_image")],
            {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents. " * 20, "tools": agents},
            *[function(n, 10) for n in ("get_goal", "create_goal", "update_goal")],
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199-session",
        "client_metadata": {"session_id": "0199-session", "turn_id": "0199-turn"},
    }


def test_a_coding_agents_responses_request_becomes_a_chat() -> None:
    request = ResponseBody.model_validate(codex_body())
    refuse_unsupported(request)
    chat = chat_request(request, [], input_items(request))
    assert [m.role for m in chat.messages] == ["system", "system", "system", "user", "user"]
    assert chat.messages[0].content.startswith("You are a coding agent") and chat.messages[-1].content == "Say hello."
    assert len(chat.tools) == 11 and chat.tools[4].name == "spawn_agent" and chat.tool_choice == "auto"
    assert chat.parallel_tool_calls is True and chat.max_tokens is None
    # Rendered by a template that takes one system message first: all three joined, in order.
    engine = FakeGenerator([])
    engine.n_ctx = 1_000_000
    prompt = render_chat(engine, chat)
    assert prompt.index("You are a coding agent") < prompt.index("Sandbox") < prompt.index("Approvals")
    assert prompt.index("Approvals") < prompt.index("<environment_context>") < prompt.index("Say hello.")
