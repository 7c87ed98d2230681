"""Reasoning kept apart from the answer, on recorded outputs of thinking models (no model)."""

from __future__ import annotations

import pytest

from gpustack_cli.core.parsing.reasoning import ReasoningFormat, ReasoningSplitter, reasoning_format

QWEN3 = "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
R1 = "{% set content = content.split('</think>')[-1] %}{{'<｜Assistant｜><think>\\n'}}"


def split(fmt: ReasoningFormat, pieces: list[str]) -> tuple[str, str]:
    splitter = ReasoningSplitter(fmt)
    parts = [part for piece in pieces for part in splitter.feed(piece)] + splitter.end()
    assert all(text for _, text in parts)  # nothing empty is handed on
    reasoning = "".join(text for kind, text in parts if kind == "reasoning")
    content = "".join(text for kind, text in parts if kind == "text")
    return reasoning, content


THINK = ReasoningFormat("<think>", "</think>", opened=False)


@pytest.mark.parametrize(
    "pieces",
    [
        ["<think>\nThe user greets.\n</think>\n\nHello!"],
        ["<th", "ink>", "\nThe user", " greets.\n</", "think", ">\n\nHel", "lo!"],
        ["\n<think>\nThe user greets.\n</think>", "\n", "\nHello!"],
    ],
)
def test_a_think_section_is_split_from_the_answer_however_it_is_cut(pieces: list[str]) -> None:
    assert split(THINK, pieces) == ("\nThe user greets.\n", "Hello!")


def test_an_answer_without_a_think_section_is_all_answer() -> None:
    assert split(THINK, ["Hello", " <think> is a tag"]) == ("", "Hello <think> is a tag")
    assert split(THINK, ["<thi", "s is not it"]) == ("", "<this is not it")


def test_a_prompt_that_opens_the_reasoning_makes_the_output_start_inside_it() -> None:
    opened = ReasoningFormat("<think>", "</think>", opened=True)
    assert split(opened, ["Okay, so", " 2+2 is 4.\n</think>\n\n", "4"]) == ("Okay, so 2+2 is 4.\n", "4")
    # Cut off before the end of its reasoning: all of it is reasoning, no answer.
    assert split(opened, ["Hmm, let", " me think"]) == ("Hmm, let me think", "")


def test_other_models_tags() -> None:
    mistral = ReasoningFormat("[THINK]", "[/THINK]", opened=False)
    assert split(mistral, ["[THINK]Check.[/THINK]", "Yes."]) == ("Check.", "Yes.")


def test_the_format_comes_from_the_template_and_the_prompt() -> None:
    assert reasoning_format(QWEN3, "<|im_start|>assistant\n") == THINK
    # Thinking switched off: the prompt closes an empty section, so nothing is opened.
    assert reasoning_format(QWEN3, "<|im_start|>assistant\n<think>\n\n</think>\n\n") == THINK
    assert reasoning_format(R1, "<｜Assistant｜><think>\n") == ReasoningFormat("<think>", "</think>", opened=True)
    assert reasoning_format("{{ messages }}", "<|im_start|>assistant\n") is None


def test_real_templates_reasoning(chat_templates: dict[str, str]) -> None:
    """R1 distills open the section in the prompt; Qwen3 leaves it to the model, or closes an
    empty one when thinking is switched off; Llama 3.1 does not reason."""
    from gpustack_cli.core import templates

    def prompt(name: str, **variables) -> str:
        messages = [{"role": "user", "content": "Hi"}]
        return templates.render(chat_templates[name], messages, bos_token="", eos_token="", variables=variables)

    r1 = "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"
    assert reasoning_format(chat_templates[r1], prompt(r1)) == ReasoningFormat("<think>", "</think>", opened=True)
    qwen3 = "Qwen-Qwen3-0.6B.jinja"
    assert reasoning_format(chat_templates[qwen3], prompt(qwen3)) == THINK
    assert prompt(qwen3, enable_thinking=False).endswith("</think>\n\n")
    assert reasoning_format(chat_templates[qwen3], prompt(qwen3, enable_thinking=False)) == THINK
    llama = "meta-llama-Llama-3.1-8B-Instruct.jinja"
    assert reasoning_format(chat_templates[llama], prompt(llama)) is None
