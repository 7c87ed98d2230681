"""Tool calls in models' own formats, read from recorded outputs (no model), and the formats
found from real templates."""

from __future__ import annotations

import json

import pytest

from gpustack_cli.core.parsing.tool_calls import (
    COMMAND_R,
    DEEPSEEK_R1,
    DEEPSEEK_V31,
    FUNCTIONARY,
    HERMES,
    LLAMA3,
    MISTRAL,
    MISTRAL_ARGS,
    Call,
    ToolCallReader,
    ToolFormat,
    ToolSpec,
    tool_format,
)

WEATHER = ToolSpec("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}})
TIME = ToolSpec("get_time", {})  # no parameters


def read(fmt: ToolFormat, pieces: list[str]) -> list:
    reader = ToolCallReader(fmt)
    out = [p for piece in pieces for p in reader.feed(piece)] + reader.end()
    assert all(isinstance(p, Call) or (p[0] == "text" and p[1]) for p in out)
    out = [p if isinstance(p, Call) else p[1] for p in out]
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


def test_named_formats() -> None:
    weather = Call("get_weather", '{"city": "Oslo"}')
    r1 = (
        "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
        '{"city": "Oslo"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
    )
    assert read(DEEPSEEK_R1, [r1[i : i + 4] for i in range(0, len(r1), 4)]) == ["Checking.", weather]
    v31 = (
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Oslo"}<｜tool▁call▁end｜>'
        "<｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
    )
    assert read(DEEPSEEK_V31, [v31]) == [weather, Call("get_time", "{}")]
    mistral = '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]get_time[CALL_ID]a1b2c3d4e[ARGS]{}'
    assert read(MISTRAL_ARGS, [mistral[:20], mistral[20:]]) == [weather, Call("get_time", "{}")]
    functionary = 'Sure. <function=get_weather>{"city": "Oslo"}</function>'
    assert read(FUNCTIONARY, [functionary]) == ["Sure. ", weather]
    assert read(FUNCTIONARY, ["<function=get_weather>{broken</function>"]) == [
        "<function=get_weather>{broken</function>"
    ]


def test_command_r_calls_are_a_list_of_tool_names() -> None:
    output = (
        '<|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Oslo"}}\n]'
        "<|END_ACTION|>"
    )
    assert read(COMMAND_R, ["I will look it up.", output]) == [
        "I will look it up.",
        Call("get_weather", '{"city": "Oslo"}'),
    ]
    required = COMMAND_R.structure([WEATHER], "required", parallel=True)
    assert required.choices[0].schema["items"]["anyOf"][0]["required"] == ["tool_name", "parameters"]


def test_llama3_text_that_later_holds_braces_stays_text() -> None:
    assert read(LLAMA3, ["It is ", "{cold}", ' {"name": "x", "parameters": {}}']) == [
        'It is {cold} {"name": "x", "parameters": {}}'
    ]


def test_structures_for_each_choice() -> None:
    required = HERMES.structure([WEATHER, TIME], "required", parallel=True)
    [choice] = required.choices
    assert (choice.before, choice.after, required.separator, required.trigger) == (
        "<tool_call>\n",
        "\n</tool_call>",
        "\n",
        None,
    )
    assert len(choice.schema["anyOf"]) == 2
    named = HERMES.structure([WEATHER, TIME], "get_time", parallel=False)
    assert [option["properties"]["name"]["const"] for option in named.choices[0].schema["anyOf"]] == ["get_time"]
    assert named.separator is None
    assert named.choices[0].schema["anyOf"][0]["properties"]["arguments"]["additionalProperties"] is False
    assert HERMES.structure([WEATHER], "auto", parallel=True).trigger == "<tool_call>"
    assert LLAMA3.structure([WEATHER], "auto", parallel=True) is None  # no marker to wait for
    llama = LLAMA3.structure([WEATHER], "required", parallel=True)
    assert llama.choices[0].schema["anyOf"][0]["required"] == ["name", "parameters"] and llama.separator is None
    one = MISTRAL.structure([WEATHER], "required", parallel=False)
    assert one.opening == "[TOOL_CALLS]" and one.choices[0].schema["maxItems"] == 1
    r1 = DEEPSEEK_R1.structure([WEATHER, TIME], "auto", parallel=True)
    assert [c.before for c in r1.choices] == [
        "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n",
        "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n",
    ]
    assert (r1.opening, r1.closing, r1.trigger) == (
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁calls▁end｜>",
        "<｜tool▁calls▁begin｜>",
    )


def test_formats_from_real_templates(chat_templates: dict[str, str]) -> None:
    expected = {
        "Qwen-Qwen2.5-7B-Instruct.jinja": HERMES,
        "Qwen-Qwen3-0.6B.jinja": HERMES,
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": HERMES,
        "meta-llama-Llama-3.1-8B-Instruct.jinja": LLAMA3,
        "meta-llama-Llama-3.2-3B-Instruct.jinja": LLAMA3,
        "mistralai-Mistral-Nemo-Instruct-2407.jinja": MISTRAL,
        "Mistral-Small-3.2-24B-Instruct-2506.jinja": MISTRAL_ARGS,
        "unsloth-mistral-Devstral-Small-2507.jinja": MISTRAL_ARGS,
        # DeepSeek's own templates render tool calls but never the tools: the generic format,
        # which describes them in the system prompt.
        "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": None,
        "deepseek-ai-DeepSeek-V3.1.jinja": None,
        "llama-cpp-deepseek-r1.jinja": DEEPSEEK_R1,
        "meetkai-functionary-medium-v3.1.jinja": FUNCTIONARY,
        "ibm-granite-granite-4.0.jinja": HERMES,
        "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja": COMMAND_R,
        "Qwen3-Coder.jinja": None,  # XML calls: the generic format
        "GLM-4.6.jinja": None,  # XML arguments: the generic format
        "google-gemma-2-2b-it.jinja": None,  # no tools
    }
    assert {name: tool_format(chat_templates[name]) for name in expected} == expected
    assert json.dumps(sorted(expected))


def test_call_ids_as_each_template_expects_them() -> None:
    mistral = MISTRAL.call_id()
    assert len(mistral) == 9 and mistral.isalnum()
    assert HERMES.call_id().startswith("call_") and HERMES.call_id() != HERMES.call_id()


def test_gpt_oss_channels() -> None:
    from gpustack_cli.core.parsing.harmony import HarmonyReader

    def parts(pieces: list[str]) -> list:
        reader = HarmonyReader()
        out = [p for piece in pieces for p in reader.feed(piece)] + reader.end()
        merged: list = []
        for part in out:
            if isinstance(part, tuple) and merged and isinstance(merged[-1], tuple) and merged[-1][0] == part[0]:
                merged[-1] = (part[0], merged[-1][1] + part[1])
            else:
                merged.append(part)
        return merged

    answer = "<|channel|>analysis<|message|>The user greets.<|end|><|start|>assistant<|channel|>final<|message|>Hello!"
    for size in (1, 5, len(answer)):
        cut = [answer[i : i + size] for i in range(0, len(answer), size)]
        assert parts(cut) == [("reasoning", "The user greets."), ("text", "Hello!")]
    call = (
        "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}<|call|>'
    )
    assert parts([call[:30], call[30:]]) == [("reasoning", "Need weather."), Call("get_weather", '{"city": "Oslo"}')]
    in_role = "assistant to=functions.get_time<|channel|>commentary json<|message|>{}"  # the recipient in the role
    assert parts(["<|channel|>analysis<|message|>x<|end|><|start|>", in_role]) == [
        ("reasoning", "x"),
        Call("get_time", "{}"),
    ]
    assert parts(["Just an answer."]) == [("text", "Just an answer.")]
