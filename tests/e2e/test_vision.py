"""A model that sees, through a real `gpustack serve` and the official clients: SmolLM2 with a
projector loaded by llama.cpp's libmtmd, images sent as OpenAI `image_url` data URLs, Anthropic
base64 image blocks, Responses `input_image` parts and Ollama `images`.

The projector has random weights (no small vision model is on the package index: see
tests/support/tiny_projector.py), so the answers cannot name what the images show. What the
tests hold to instead: an image changes the answer (a red square and a blue circle get different
greedy answers), the same image gets the same greedy answer on every API, and the image of an
earlier turn is found in the slot's cache instead of being encoded again.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pexpect
import pytest

from tests.support.harness import ServerProcess, clean_env, gpustack, home_sharing_models

MODEL = "tiny-vision"
QUESTION = "Describe this."


def picture(colour: str, shape: str, size: int = 64, fmt: str = "PNG") -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size // 8, size // 8, size - size // 8, size - size // 8)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=colour)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


RED_SQUARE = picture("red", "square")
BLUE_CIRCLE = picture("blue", "circle")


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(data)}}


def question(*images: bytes, text: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [*map(image_part, images), {"type": "text", "text": text}]}]


def responses_answer(client: openai.OpenAI, model: str, image: bytes, text: str, max_tokens: int) -> str:
    """The Responses API's greedy answer to an `input_image` and a question."""
    content = [
        {"type": "input_image", "image_url": data_url(image), "detail": "auto"},
        {"type": "input_text", "text": text},
    ]
    response = client.responses.create(
        model=model, max_output_tokens=max_tokens, temperature=0, input=[{"role": "user", "content": content}]
    )
    return response.output_text


@pytest.fixture(scope="module")
def server(models_home: Path, tiny_vision: str) -> Iterator[ServerProcess]:
    with ServerProcess(models_home, "--no-pull", "--preload", MODEL, "--parallel", "4") as running:
        yield running
        assert running.internal_errors() == 0


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def answer(client: openai.OpenAI, messages: list[dict], max_tokens: int = 12) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0)


def counter(server: ServerProcess, name: str) -> float:
    found = re.search(rf'^{name}_total{{model="{MODEL}"}} (\S+)$', httpx.get(server.url + "/metrics").text, re.M)
    assert found, name
    return float(found.group(1))


def test_the_model_says_it_sees(client: openai.OpenAI, server: ServerProcess) -> None:
    listed = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
    assert listed[MODEL]["capabilities"] == ["vision"]
    assert listed["smollm2"]["capabilities"] == []
    shown = httpx.post(server.url + "/api/show", json={"model": MODEL}).json()
    assert "vision" in shown["capabilities"]


def test_the_answer_depends_on_the_image(client: openai.OpenAI) -> None:
    red = answer(client, question(RED_SQUARE))
    blue = answer(client, question(BLUE_CIRCLE))
    again = answer(client, question(RED_SQUARE))
    assert red.choices[0].message.content and blue.choices[0].message.content
    assert red.choices[0].message.content != blue.choices[0].message.content
    assert again.choices[0].message.content == red.choices[0].message.content
    plain = answer(client, [{"role": "user", "content": QUESTION}])
    # The projector's 16 embeddings (4x4 patches of a 32x32 image) take 16 positions of the prompt.
    assert red.usage.prompt_tokens >= plain.usage.prompt_tokens + 16


def test_two_images_in_one_message_and_a_stream(client: openai.OpenAI) -> None:
    one = answer(client, question(RED_SQUARE))
    two = answer(client, question(RED_SQUARE, BLUE_CIRCLE, text="Which of these two is red?"))
    assert two.choices[0].message.content
    assert two.usage.prompt_tokens >= one.usage.prompt_tokens + 16
    stream = client.chat.completions.create(
        model=MODEL, messages=question(RED_SQUARE), max_tokens=12, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == one.choices[0].message.content


def test_the_next_turn_finds_its_image_in_the_cache(client: openai.OpenAI, server: ServerProcess) -> None:
    image = picture("green", "square")
    first_turn = question(image)
    first = answer(client, first_turn)
    encoded, reused = counter(server, "gpustack_media_encoded"), counter(server, "gpustack_prefix_cache_tokens")
    second_turn = [
        *first_turn,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And what shape is it?"},
    ]
    second = answer(client, second_turn)
    assert second.choices[0].message.content
    assert counter(server, "gpustack_media_encoded") == encoded  # the image was not encoded again
    # The whole first turn, image and all, came from the slot's cache.
    assert counter(server, "gpustack_prefix_cache_tokens") - reused >= first.usage.prompt_tokens - 1
    # A new image in the same conversation is encoded.
    answer(client, [*second_turn[:-1], {"role": "user", "content": [image_part(BLUE_CIRCLE)]}])
    assert counter(server, "gpustack_media_encoded") == encoded + 1


def test_the_same_image_gets_the_same_answer_on_every_api(client: openai.OpenAI, server: ServerProcess) -> None:
    expected = answer(client, question(RED_SQUARE)).choices[0].message.content
    claude = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)
    source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(RED_SQUARE).decode()}
    message = claude.messages.create(
        model=MODEL,
        max_tokens=12,
        extra_body={"temperature": 0},
        messages=[
            {"role": "user", "content": [{"type": "image", "source": source}, {"type": "text", "text": QUESTION}]}
        ],
    )
    assert message.content[0].text == expected
    assert responses_answer(client, MODEL, RED_SQUARE, QUESTION, 12) == expected
    local = ollama.Client(host=server.url)
    red = local.chat(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION, "images": [RED_SQUARE]}],
        options={"temperature": 0},
    )
    blue = local.chat(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION, "images": [BLUE_CIRCLE]}],
        options={"temperature": 0, "num_predict": 12},
    )
    assert red.message.content and blue.message.content and red.message.content[:40] != blue.message.content[:40]


@pytest.mark.parametrize(
    ("model", "part", "words", "param"),
    [
        ("smollm2", image_part(RED_SQUARE), "does not take images", "messages[0].content[0].image_url"),
        (MODEL, image_part(b"\x89PNG\r\n\x1a\n broken"), "not an image", "messages[0].content[0].image_url"),
        (MODEL, image_part(picture("red", "square", size=512, fmt="JPEG")[:3000]), "could not be decoded", None),
        (
            MODEL,
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/cat.png"}},
            "--allow-image-urls",
            "messages[0].content[0].image_url",
        ),
        (MODEL, {"type": "file", "file": {"file_id": "f"}}, "'file' parts", "messages[0].content[0]"),
        (
            MODEL,
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            "does not take audio",
            "messages[0].content[0].input_audio",
        ),
    ],
)
def test_what_cannot_be_seen_is_a_400_naming_it(
    client: openai.OpenAI, server: ServerProcess, model: str, part: dict, words: str, param: str | None
) -> None:
    messages = [{"role": "user", "content": [part, {"type": "text", "text": QUESTION}]}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=messages, max_tokens=4)
    assert words in refused.value.message
    if param is not None:
        assert refused.value.body["param"] == param
    assert answer(client, question(RED_SQUARE), max_tokens=2).choices[0].message.content is not None


async def test_text_streams_go_on_while_an_image_is_read(server: ServerProcess) -> None:
    """Three text streams run while a request with an image (a large one: resized by libmtmd)
    joins them: each stream's longest wait between two tokens stays short."""
    aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)

    async def text_stream() -> float:
        stream = await aclient.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell me a long story about a lighthouse."}],
            max_tokens=60,
            temperature=0,
            stream=True,
        )
        last, longest = None, 0.0
        async for chunk in stream:
            now = time.monotonic()
            if chunk.choices and chunk.choices[0].delta.content:
                longest = max(longest, now - last) if last is not None else 0.0
                last = now
        return longest

    async def image_request() -> str:
        await asyncio.sleep(0.5)
        reply = await aclient.chat.completions.create(
            model=MODEL, messages=question(picture("purple", "circle", size=1024)), max_tokens=4, temperature=0
        )
        return reply.choices[0].message.content or ""

    *gaps, seen = await asyncio.gather(text_stream(), text_stream(), text_stream(), image_request())
    assert seen
    # A step of four slots takes tens of milliseconds here; the bound holds on a busy machine.
    assert max(gaps) < 5.0, gaps


def test_run_asks_about_an_image_over_the_server_and_in_the_repl(
    server: ServerProcess, models_home: Path, tmp_path: Path
) -> None:
    photo = tmp_path / "red.png"
    photo.write_bytes(RED_SQUARE)
    env = clean_env(GPUSTACK_HOME=str(models_home), GPUSTACK_SERVER_URL=server.url)
    before = counter(server, "gpustack_media_encoded")
    result = gpustack("run", MODEL, "--image", str(photo), "Describe", "this.", "--max-tokens", "8", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert counter(server, "gpustack_media_encoded") >= before  # over the server: its cache or its projector
    refused = gpustack("run", "smollm2", "--image", str(photo), "Describe", "this.", env=env)
    assert refused.returncode == 1 and "does not take images" in " ".join(refused.stderr.split())
    missing = gpustack("run", MODEL, "--image", str(tmp_path / "none.png"), "Hi", env=env)
    assert missing.returncode == 1 and "cannot read the image" in " ".join(missing.stderr.split())
    child = pexpect.spawn(
        sys.executable,
        ["-m", "gpustack_cli", "run", MODEL, "--max-tokens", "8"],
        env={**env, "TERM": "dumb", "COLUMNS": "120"},
        encoding="utf-8",
        timeout=120,
    )
    child.expect_exact(">>> ")
    child.sendline(f"/image {photo}")
    child.expect("1 image")
    child.expect_exact(">>> ")
    child.sendline("Describe this.")
    child.expect_exact(">>> ")
    assert child.before.strip()
    child.sendline("/bye")
    child.expect(pexpect.EOF)


def test_a_projector_kept_elsewhere_is_set_per_model(models_home: Path, tiny_vision: str, tmp_path: Path) -> None:
    env = clean_env(GPUSTACK_HOME=str(home_sharing_models(models_home, tmp_path / "home")))
    projector = next((models_home / "models" / tiny_vision).glob("mmproj*.gguf"))
    text_model = next((models_home / "models" / "smollm2").glob("*.gguf"))
    assert gpustack("pull", str(text_model), "--name", "plain", env=env).returncode == 0

    def capabilities() -> list[str]:
        shown = gpustack("show", "plain", "--json", env=env)
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)["capabilities"]

    assert capabilities() == []
    done = gpustack("model", "set", "plain", "--mmproj", str(projector), env=env)
    assert done.returncode == 0 and "vision" in done.stdout, done.stderr
    assert capabilities() == ["vision"]
    refused = gpustack("model", "set", "plain", "--mmproj", str(text_model), env=env)
    assert refused.returncode == 1 and "not a projector" in " ".join(refused.stderr.split())
    assert gpustack("model", "set", "plain", "--mmproj", "", env=env).returncode == 0
    assert capabilities() == []


def test_image_urls_when_allowed_come_from_public_addresses_only(models_home: Path, tiny_vision: str) -> None:
    with ServerProcess(models_home, "--no-pull", "--allow-image-urls") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        part = {"type": "image_url", "image_url": {"url": f"{server.url}/ui/icon.svg"}}
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [part]}], max_tokens=2)
        assert "not a public address" in refused.value.message
        assert refused.value.body["code"] == "media_url_not_allowed"


REAL_MODEL = os.environ.get("GPUSTACK_TEST_VISION_MODEL")


@pytest.mark.skipif(
    not REAL_MODEL,
    reason="no real vision model on the package index: set GPUSTACK_TEST_VISION_MODEL to a pull source "
    "(hf:ggml-org/SmolVLM-256M-Instruct-GGUF/*Q8_0.gguf, a folder with a GGUF and its mmproj) to run it",
)
def test_a_real_vision_model_names_the_colours(models_home: Path, tmp_path: Path) -> None:
    """With a real vision model: a red square and a blue circle, drawn here, get greedy answers
    that name their colours, through chat, Anthropic and the Responses API."""
    assert REAL_MODEL
    env = clean_env(GPUSTACK_HOME=str(tmp_path / "home"))
    pulled = gpustack("pull", REAL_MODEL, "--name", "real-vlm", env=env, timeout=3600)
    assert pulled.returncode == 0, pulled.stderr
    with ServerProcess(tmp_path / "home", "--no-pull", "--preload", "real-vlm") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=600)
        claude = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0, timeout=600)
        ask = "What colour is the shape? Answer with one word."
        for image, colour in ((RED_SQUARE, "red"), (BLUE_CIRCLE, "blue")):
            reply = client.chat.completions.create(
                model="real-vlm", messages=question(image, text=ask), max_tokens=8, temperature=0
            )
            assert colour in (reply.choices[0].message.content or "").lower()
            source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(image).decode()}
            message = claude.messages.create(
                model="real-vlm",
                max_tokens=8,
                extra_body={"temperature": 0},
                messages=[
                    {"role": "user", "content": [{"type": "image", "source": source}, {"type": "text", "text": ask}]}
                ],
            )
            assert colour in message.content[0].text.lower()
            assert colour in responses_answer(client, "real-vlm", image, ask, 8).lower()
