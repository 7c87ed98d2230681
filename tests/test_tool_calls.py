"""Tool calls in models' own formats, read from recorded outputs (no model), and the formats
found from real templates."""

from __future__ import annotations

import json

import pytest

from gpustack_cli.tool_calls import HERMES, LLAMA3, MISTRAL, Call, ToolCallReader, ToolFormat, ToolSpec, tool_format

WEATHER = ToolSpec("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}})
TIME = ToolSpec("get_time", {"type": "object", "properties": {}})


def read(fmt: ToolFormat, pieces: list[str]) -> list:
    reader = ToolCallReader(fmt)
    out = [p for piece in pieces for p in reader.feed(piece)] + reader.end()
    merged: list = []
    for piece in out:  # join adjacent text, as a client would see it
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    return merged


HERMES_TWO = (
    'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
)


@pytest.mark.parametrize("size", [1, 3, 7, len(HERMES_TWO)])
def test_hermes_calls_however_the_output_is_cut(size: int) -> None:
    pieces = [HERMES_TWO[i : i + size] for i in range(0, len(HERMES_TWO), size)]
    assert read(HERMES, pieces) == ["Let me check.\n", Call("get_weather", '{"city": "Oslo"}'), Call("get_time", "{}")]


def test_hermes_text_without_calls_and_a_broken_call() -> None:
    assert read(HERMES, ["The weather ", "is <b>fine</b>."]) == ["The weather is <b>fine</b>."]
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'
    assert read(HERMES, [broken]) == [broken]
    unfinished = '<tool_call>\n{"name": "get_weather", "argu'  # cut off by max_tokens
    assert read(HERMES, [unfinished]) == [unfinished]


def test_llama3_calls_are_the_whole_answer() -> None:
    call = '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    assert read(LLAMA3, [call[:5], call[5:]]) == [Call("get_weather", '{"city": "Oslo"}')]
    assert read(LLAMA3, ["<|python_tag|>", call]) == [Call("get_weather", '{"city": "Oslo"}')]
    assert read(LLAMA3, ["It is ", "cold."]) == ["It is cold."]
    assert read(LLAMA3, ['{"not": "a call"}']) == ['{"not": "a call"}']


def test_mistral_calls_are_a_list() -> None:
    output = (
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "a1b2c3d4e"}, '
        '{"name": "get_time", "arguments": {}}]'
    )
    assert read(MISTRAL, [output[:9], output[9:]]) == [Call("get_weather", '{"city": "Oslo"}'), Call("get_time", "{}")]
    assert read(MISTRAL, ["Just text [TOOL"]) == ["Just text [TOOL"]


def test_structures_for_each_choice() -> None:
    required = HERMES.structure([WEATHER, TIME], "required", parallel=True)
    assert (required.prefix, required.suffix, required.separator, required.lazy) == (
        "<tool_call>\n",
        "\n</tool_call>",
        "\n",
        False,
    )
    assert len(required.schema["anyOf"]) == 2
    named = HERMES.structure([WEATHER, TIME], "get_time", parallel=False)
    assert [option["properties"]["name"]["const"] for option in named.schema["anyOf"]] == ["get_time"]
    assert named.separator is None
    assert HERMES.structure([WEATHER], "auto", parallel=True).lazy is True
    assert LLAMA3.structure([WEATHER], "auto", parallel=True) is None  # no marker to wait for
    llama = LLAMA3.structure([WEATHER], "required", parallel=True)
    assert llama.schema["anyOf"][0]["required"] == ["name", "parameters"] and llama.separator is None
    one = MISTRAL.structure([WEATHER], "required", parallel=False)
    assert one.prefix == "[TOOL_CALLS]" and one.schema["maxItems"] == 1


def test_formats_from_real_templates(chat_templates: dict[str, str]) -> None:
    expected = {
        "Qwen-Qwen2.5-7B-Instruct.jinja": HERMES,
        "Qwen-Qwen3-0.6B.jinja": HERMES,
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": HERMES,
        "meta-llama-Llama-3.1-8B-Instruct.jinja": LLAMA3,
        "meta-llama-Llama-3.2-3B-Instruct.jinja": LLAMA3,
        "mistralai-Mistral-Nemo-Instruct-2407.jinja": MISTRAL,
        "Qwen3-Coder.jinja": None,  # XML calls: the generic format
        "Mistral-Small-3.2-24B-Instruct-2506.jinja": None,  # name[ARGS]{...}: the generic format
        "google-gemma-2-2b-it.jinja": None,  # no tools
    }
    assert {name: tool_format(chat_templates[name]) for name in expected} == expected
    assert json.dumps(sorted(expected))


def test_call_ids_as_each_template_expects_them() -> None:
    mistral = MISTRAL.call_id()
    assert len(mistral) == 9 and mistral.isalnum()
    assert HERMES.call_id().startswith("call_") and HERMES.call_id() != HERMES.call_id()
