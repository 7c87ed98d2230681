"""Image generation and edits through diffusers on a tiny pipeline, with the official `openai` client."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from tests.support.harness import ServerProcess, clean_env, free_port, gpustack
from tests.support.openapi import validate

KEY = "image-test-key"


@pytest.fixture(scope="module")
def server(models_home: Path, tiny_sd: str) -> Iterator[ServerProcess]:
    with ServerProcess(models_home, "--no-pull", env={"GPUSTACK_API_KEY": KEY}) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_generation(client: openai.OpenAI, tiny_sd: str) -> None:
    result = client.images.generate(
        model=tiny_sd, prompt="a red cat", n=2, size="64x48", extra_body={"num_inference_steps": 2, "seed": 3}
    )
    validate(json.loads(result.model_dump_json(exclude_unset=True)), "ImagesResponse")
    images = [decode(d.b64_json) for d in result.data]
    assert len(images) == 2 and all(i.format == "PNG" and i.size == (64, 48) for i in images)
    default = client.images.generate(model=tiny_sd, prompt="a cat", size="auto", extra_body={"num_inference_steps": 1})
    assert decode(default.data[0].b64_json).size == (64, 64)


def test_same_seed_same_bytes(client: openai.OpenAI, tiny_sd: str) -> None:
    def make(seed: int) -> str:
        return (
            client.images.generate(
                model=tiny_sd, prompt="a boat", size="64x64", extra_body={"num_inference_steps": 2, "seed": seed}
            )
            .data[0]
            .b64_json
        )

    assert make(5) == make(5)
    assert make(5) != make(6)


def test_output_formats(client: openai.OpenAI, tiny_sd: str) -> None:
    for fmt, name in (("jpeg", "JPEG"), ("webp", "WEBP")):
        result = client.images.generate(
            model=tiny_sd,
            prompt="x",
            size="64x64",
            output_format=fmt,
            output_compression=50,
            extra_body={"num_inference_steps": 1},
        )
        assert decode(result.data[0].b64_json).format == name and result.output_format == fmt


def test_url_links_need_the_key(client: openai.OpenAI, tiny_sd: str) -> None:
    result = client.images.generate(
        model=tiny_sd, prompt="a tree", size="64x64", response_format="url", extra_body={"num_inference_steps": 1}
    )
    url = result.data[0].url
    assert "/v1/images/files/" in url
    assert httpx.get(url).status_code == 401
    fetched = httpx.get(url, headers={"Authorization": f"Bearer {KEY}"})
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)
    assert httpx.get(url + "x", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404


def test_edits_with_and_without_mask(client: openai.OpenAI, tiny_sd: str) -> None:
    source = Image.new("RGB", (64, 64), (200, 30, 30))
    plain = client.images.edit(
        model=tiny_sd,
        image=("in.png", png(source)),
        prompt="make it blue",
        size="64x64",
        extra_body={"num_inference_steps": 2, "strength": 0.6, "seed": 1},
    )
    assert decode(plain.data[0].b64_json).size == (64, 64)
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 48))  # transparent square: edit only there
    masked = client.images.edit(
        model=tiny_sd,
        image=("in.png", png(source)),
        mask=("m.png", png(mask)),
        prompt="a window",
        n=2,
        size="64x64",
        extra_body={"num_inference_steps": 2},
    )
    assert [decode(d.b64_json).size for d in masked.data] == [(64, 64), (64, 64)]


def test_streamed_generation_with_partial_images(client: openai.OpenAI, tiny_sd: str, models_home: Path) -> None:
    from transformers import AutoTokenizer

    stream = client.images.generate(
        model=tiny_sd,
        prompt="a red cat",
        size="64x48",
        stream=True,
        partial_images=2,
        extra_body={"num_inference_steps": 4, "seed": 3},
    )
    events = [json.loads(event.model_dump_json(exclude_unset=True)) for event in stream]
    assert [e["type"] for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e["partial_image_index"] for e in events[:2]] == [0, 1]
    validate(events[0], "ImageGenPartialImageEvent")
    validate(events[-1], "ImageGenCompletedEvent")
    assert all(decode(e["b64_json"]).size == (64, 48) for e in events)
    tokenizer = AutoTokenizer.from_pretrained(models_home / "models" / tiny_sd / "tokenizer")
    usage = events[-1]["usage"]
    prompt_tokens = len(tokenizer("a red cat").input_ids)
    assert usage["input_tokens_details"]["text_tokens"] == usage["input_tokens"] == prompt_tokens
    assert events[-1]["size"] == "auto"  # 64x48 is not among the sizes OpenAI's events allow
    assert events[0]["b64_json"] != events[1]["b64_json"] != events[2]["b64_json"]  # denoising goes on
    # The last event is the image the same request gives unstreamed.
    plain = client.images.generate(
        model=tiny_sd, prompt="a red cat", size="64x48", extra_body={"num_inference_steps": 4, "seed": 3}
    )
    assert events[-1]["b64_json"] == plain.data[0].b64_json


def test_streamed_edit(client: openai.OpenAI, tiny_sd: str) -> None:
    source = Image.new("RGB", (64, 64), (200, 30, 30))
    stream = client.images.edit(
        model=tiny_sd,
        image=("in.png", png(source)),
        prompt="make it blue",
        size="64x64",
        n=2,
        stream=True,
        partial_images=1,
        extra_body={"num_inference_steps": 4, "strength": 1.0},
    )
    events = [json.loads(event.model_dump_json(exclude_unset=True)) for event in stream]
    assert [e["type"] for e in events] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"] * 2
    validate(events[0], "ImageEditPartialImageEvent")
    validate(events[-1], "ImageEditCompletedEvent")
    assert all(decode(e["b64_json"]).size == (64, 64) for e in events)


def test_image_errors(client: openai.OpenAI, server: ServerProcess, tiny_sd: str) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}

    def error(body: dict) -> dict:
        response = httpx.post(
            server.url + "/v1/images/generations",
            json={"model": tiny_sd, "prompt": "x", **body},
            headers=auth,
            timeout=60,
        )
        assert response.status_code == 400, response.text
        validate(response.json(), "ErrorResponse")
        return response.json()["error"]

    assert error({"size": "65x64"})["param"] == "size"
    assert error({"size": "big"})["param"] == "size"
    assert error({"size": "4096x4096"})["param"] == "size"
    assert error({"n": 11})["param"] == "n"
    assert error({"prompt": ""})["param"] == "prompt"
    assert error({"sampler": "magic"})["param"] == "sampler"
    assert error({"model": "smollm2"})["code"] == "model_not_supported"
    assert error({"background": "transparent"})["param"] == "background"
    assert error({"stream": True, "response_format": "url"})["param"] == "response_format"
    assert error({"stream": True, "partial_images": 4})["param"] == "partial_images"

    def edit_error(files: dict, **data) -> dict:
        response = httpx.post(
            server.url + "/v1/images/edits",
            files=files,
            headers=auth,
            timeout=60,
            data={"model": tiny_sd, "prompt": "x", **data},
        )
        assert response.status_code == 400, response.text
        return response.json()["error"]

    image = png(Image.new("RGB", (64, 64)))
    assert edit_error({"image": ("a.txt", b"not an image")})["param"] == "image"
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    assert "GIF" in edit_error({"image": ("a.gif", gif.getvalue())})["message"]
    assert (
        edit_error({"image": ("a.png", image), "mask": ("m.png", png(Image.new("RGBA", (32, 32))))})["param"] == "mask"
    )
    assert (
        "alpha" in edit_error({"image": ("a.png", image), "mask": ("m.png", png(Image.new("L", (64, 64))))})["message"]
    )
    assert edit_error({"other": ("a.png", image)})["param"] == "image"
    assert edit_error({"image": ("a.png", image)}, strength="2")["param"] == "strength"
    # Work a request may ask of the pipeline: pixels of all its images, times the steps.
    assert error({"n": 10, "size": "1024x1024"})["param"] == "n"
    assert error({"size": "2048x2048"})["param"] == "size"
    assert error({"size": "1024x1024", "num_inference_steps": 150})["param"] == "num_inference_steps"
    one_step = edit_error({"image": ("a.png", image)}, num_inference_steps="1", strength="0.8")
    assert one_step["param"] == "num_inference_steps" and "no step" in one_step["message"]
    # A decompression bomb: 30000x30000 in a few kilobytes, refused from its header.
    bomb = io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, format="PNG")
    started = time.monotonic()
    assert "over the limit" in edit_error({"image": ("bomb.png", bomb.getvalue())})["message"]
    assert edit_error({"image": ("a.png", image), "mask": ("m.png", bomb.getvalue())})["param"] == "mask"
    assert time.monotonic() - started < 30
    assert client.images.generate(
        model=tiny_sd, prompt="still fine", size="64x64", extra_body={"num_inference_steps": 1}
    ).data
    # curl's `-F 'image=<a.png'`: the image's bytes as a field without a filename.
    body = (
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + tiny_sd.encode() + b"\r\n"
        b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na house\r\n'
        b'--b\r\nContent-Disposition: form-data; name="num_inference_steps"\r\n\r\n2\r\n'
        b'--b\r\nContent-Disposition: form-data; name="size"\r\n\r\n64x64\r\n'
        b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\n' + image + b"\r\n--b--\r\n"
    )
    headers = {**auth, "Content-Type": "multipart/form-data; boundary=b"}
    edited = httpx.post(server.url + "/v1/images/edits", content=body, headers=headers, timeout=120)
    assert edited.status_code == 200 and decode(edited.json()["data"][0]["b64_json"]).size == (64, 64)


def test_metrics_count_steps(server: ServerProcess, client: openai.OpenAI, tiny_sd: str) -> None:
    client.images.generate(model=tiny_sd, prompt="x", size="64x64", extra_body={"num_inference_steps": 3})
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert f'gpustack_image_steps_total{{model="{tiny_sd}"}}' in text


def test_run_generates_and_edits(models_home: Path, tiny_sd: str, tmp_path: Path) -> None:
    env = clean_env(GPUSTACK_HOME=str(models_home), GPUSTACK_SERVER_URL=f"http://127.0.0.1:{free_port()}")
    out = tmp_path / "out.png"
    result = gpustack(
        "run", tiny_sd, "a small house", "-o", str(out), "--size", "64x32", "--steps", "2", "--seed", "4", env=env
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (64, 32)
    edited = tmp_path / "edited.png"
    result = gpustack("run", tiny_sd, "blue", "--image", str(out), "-o", str(edited), "--steps", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert Image.open(edited).size == (64, 32)


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_cancels_the_generation(server: ServerProcess, tiny_sd: str, stream: bool) -> None:
    body = {"model": tiny_sd, "prompt": "a very slow picture", "size": "64x64", "num_inference_steps": 150}
    url, auth = server.url + "/v1/images/generations", {"Authorization": f"Bearer {KEY}"}
    counter = f'gpustack_image_steps_total{{model="{tiny_sd}"}}'

    def steps_run() -> float:
        lines = httpx.get(server.url + "/metrics", headers=auth).text.splitlines()
        return next((float(x.split()[-1]) for x in lines if x.startswith(counter)), 0.0)

    warm = httpx.post(url, timeout=60, headers=auth, json={**body, "num_inference_steps": 1})
    assert warm.status_code == 200  # loaded: the client below leaves in the middle of the steps
    before = steps_run()
    if stream:  # the events' headers come at once; the client leaves in the middle of the steps
        with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60, headers=auth) as response:
            assert response.status_code == 200
            time.sleep(1.5)
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=body, timeout=1.5, headers=auth)
    # The step under way when the client left still ends (on a busy machine, a second or more
    # later): wait until the count holds still, then check that it stays so, short of all steps.
    stopped, deadline = steps_run(), time.monotonic() + 8
    while time.monotonic() < deadline:
        time.sleep(0.5)
        stopped, previous = steps_run(), stopped
        if stopped == previous:
            break
    time.sleep(1.0)
    # It ran, and stopped instead of running on; the server goes on answering.
    assert steps_run() == stopped and 0 < stopped - before < 150
    quick = httpx.post(url, timeout=60, headers=auth, json={**body, "num_inference_steps": 1})
    assert quick.status_code == 200
