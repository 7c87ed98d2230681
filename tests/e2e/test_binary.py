"""The standalone binary: built by scripts/build_binary.py with the llama.cpp engine, then run
without this source tree or any Python: version, list, and a server answering the openai client."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.harness import ServerProcess, clean_env, free_port, home_sharing_models


@pytest.fixture(scope="module")
def served(built_binary: Path, models_home: Path) -> Iterator[ServerProcess]:
    with ServerProcess(models_home, "--no-pull", "--preload", "smollm2", command=[str(built_binary)]) as server:
        yield server


def run(binary: Path, *args: str, home: Path) -> subprocess.CompletedProcess:
    # From the binary's own folder, with no PYTHONPATH: nothing may come from this source tree.
    return subprocess.run(
        [str(binary), *args],
        env=clean_env(GPUSTACK_HOME=str(home)),
        cwd=binary.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_version_and_list(built_binary: Path, models_home: Path) -> None:
    version = run(built_binary, "version", home=models_home)
    assert version.returncode == 0 and version.stdout.startswith("gpustack ")
    listed = run(built_binary, "list", "--json", home=models_home)
    assert listed.returncode == 0 and '"smollm2"' in listed.stdout


def test_the_binary_serves_chat(served: ServerProcess) -> None:
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, seed=0, temperature=0
    )
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    assert reply.choices[0].finish_reason in ("stop", "length")
    if sys.platform != "win32":  # bundled: the binary runs on the same loop as the source tree
        assert "event loop: uvloop" in served.output()


def test_the_binary_serves_the_playground(served: ServerProcess) -> None:
    page = httpx.get(served.url + "/ui/", timeout=30)
    assert page.status_code == 200 and 'src="js/main.js"' in page.text
    script = httpx.get(served.url + "/ui/js/chat.js", timeout=30)
    assert script.status_code == 200 and "export function init" in script.text


def test_an_engine_left_out_says_how_to_get_it(served: ServerProcess) -> None:
    answer = httpx.post(
        served.url + "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "hello"}, timeout=120
    )
    assert answer.status_code == 503
    message = answer.json()["error"]["message"]
    assert "not part of this gpustack binary" in message and "--engines embeddings" in message


def test_the_binary_lends_devices_and_splits_a_model_over_rpc(
    built_binary: Path, models_home: Path, tmp_path: Path
) -> None:
    """The binary's own `rpc-server`, and its server loading a model across it in a child of itself."""
    home = home_sharing_models(models_home, tmp_path / "home")
    assert run(built_binary, "cp", "smollm2", "split", home=home).returncode == 0
    port = free_port()
    lender = subprocess.Popen(
        [str(built_binary), "rpc-server", "--port", str(port)],
        env=clean_env(GPUSTACK_HOME=str(home)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "listening on" in (lender.stdout.readline() + lender.stdout.readline())
        assert run(built_binary, "model", "set", "split", "--rpc", f"127.0.0.1:{port}", home=home).returncode == 0
        with ServerProcess(home, "--no-pull", "--gpu-layers", "10", command=[str(built_binary)]) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
            ask = [{"role": "user", "content": "Say hello."}]
            split = client.chat.completions.create(model="split", messages=ask, max_tokens=8, temperature=0)
            local = client.chat.completions.create(model="smollm2", messages=ask, max_tokens=8, temperature=0)
            assert split.choices[0].message.content == local.choices[0].message.content
            running = {m["name"]: m for m in httpx.get(server.url + "/api/ps").json()["models"]}
            assert f"127.0.0.1:{port}" in [p["device"] for p in running["split"]["placement"]]
    finally:
        lender.kill()
        lender.wait()
