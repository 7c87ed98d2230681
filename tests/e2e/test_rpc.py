"""A model across machines with llama.cpp's RPC backend, on loopback: two `gpustack rpc-server`s
lend their devices to a copy of SmolLM2 whose layers are split between them and the local CPU.
It answers as the model loaded here does; `/api/ps` names the servers holding its layers; four
streams batch; a killed RPC server is a clear 503 for the model while the server keeps serving
the others, and the model loads again once the RPC server is back."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.support.harness import ROOT, ServerProcess, clean_env, free_port, gpustack, home_sharing_models

ASK = [{"role": "user", "content": "Write one sentence about the sea."}]


class RpcServer:
    """`gpustack rpc-server` on a free loopback port, stopped when the block ends."""

    def __init__(self, home: Path, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.env = clean_env(GPUSTACK_HOME=str(home))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RpcServer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpustack_cli", "rpc-server", "--port", str(self.port), "--threads", "1"],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"rpc-server exited {self.proc.returncode}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("rpc-server did not listen")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> RpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def greedy(server: ServerProcess, model: str, max_tokens: int = 24) -> str:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)
    reply = client.chat.completions.create(model=model, messages=ASK, max_tokens=max_tokens, temperature=0)
    return reply.choices[0].message.content or ""


@pytest.fixture(scope="module")
def split(models_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, list]]:
    """A server whose model `split` has its layers on two RPC servers and the CPU, and the RPC servers."""
    home = home_sharing_models(models_home, tmp_path_factory.mktemp("rpc"))
    env = clean_env(GPUSTACK_HOME=str(home))
    assert gpustack("cp", "smollm2", "split", env=env).returncode == 0
    with ExitStack() as stack:
        rpcs = [stack.enter_context(RpcServer(home)) for _ in range(2)]
        done = gpustack("model", "set", "split", "--rpc", ",".join(r.endpoint for r in rpcs), env=env)
        assert done.returncode == 0, done.stderr
        # 20 of SmolLM2's 30 layers offloaded: ten to each RPC server, the rest (and the output) here.
        server = stack.enter_context(ServerProcess(home, "--no-pull", "--gpu-layers", "20", "--parallel", "4"))
        yield server, rpcs


def test_split_model_answers_as_the_local_one_and_says_where_its_layers_are(split: tuple) -> None:
    server, rpcs = split
    assert greedy(server, "split") == greedy(server, "smollm2")
    running = {m["name"]: m for m in httpx.get(server.url + "/api/ps").json()["models"]}
    placement = {p["device"]: p for p in running["split"]["placement"]}
    assert running["split"]["rpc"] == [r.endpoint for r in rpcs]
    for rpc in rpcs:
        assert placement[rpc.endpoint]["layers"] == 10 and placement[rpc.endpoint]["weights_bytes"] > 0
    assert placement["CPU"]["layers"] == 11  # llama.cpp counts the output layer as one more
    shown = gpustack("ps", env=clean_env(GPUSTACK_SERVER_URL=server.url, COLUMNS="200")).stdout
    assert all(rpc.endpoint in shown for rpc in rpcs), shown


def test_four_streams_batch_on_the_split_model(split: tuple) -> None:
    """Four streams on the model decode together: each has its first token before any has ended,
    and each gives the greedy answer it gives alone."""
    server, _ = split
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)
    events: list[tuple[str, int]] = []

    def stream(index: int) -> str:
        pieces = []
        chunks = client.chat.completions.create(
            model="split", messages=ASK, max_tokens=32, temperature=0, stream=True, logit_bias={"2": -100}
        )
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                if not pieces:
                    events.append(("first", index))
                pieces.append(chunk.choices[0].delta.content)
        events.append(("end", index))
        return "".join(pieces)

    alone = stream(-1)
    events.clear()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(stream, range(4)))
    assert answers == [alone] * 4
    first_end = next(i for i, (what, _) in enumerate(events) if what == "end")
    assert sorted(index for what, index in events[:first_end] if what == "first") == [0, 1, 2, 3], events


def test_a_killed_rpc_server_is_a_clear_503_and_the_model_comes_back(split: tuple) -> None:
    server, rpcs = split
    assert greedy(server, "split")
    rpcs[1].kill()
    started = time.monotonic()
    failed = httpx.post(
        server.url + "/v1/chat/completions", json={"model": "split", "messages": ASK, "max_tokens": 8}, timeout=120
    )
    assert failed.status_code == 503 and rpcs[1].endpoint in failed.json()["error"]["message"], failed.text
    assert time.monotonic() - started < 120
    assert greedy(server, "smollm2")  # the other models are served as before
    again = httpx.post(
        server.url + "/v1/chat/completions", json={"model": "split", "messages": ASK, "max_tokens": 8}, timeout=120
    )
    assert again.status_code == 503 and rpcs[1].endpoint in again.json()["error"]["message"], again.text
    rpcs[1].start()  # back on the same port
    assert greedy(server, "split") == greedy(server, "smollm2")


def test_the_models_child_server_goes_with_its_parent(models_home: Path, tmp_path: Path) -> None:
    """However the server ends (here SIGKILL, no cleanup), the child holding its RPC model ends too."""
    home = home_sharing_models(models_home, tmp_path / "home")
    env = clean_env(GPUSTACK_HOME=str(home))
    assert gpustack("cp", "smollm2", "split", env=env).returncode == 0
    with RpcServer(home) as rpc:
        assert gpustack("model", "set", "split", "--rpc", rpc.endpoint, env=env).returncode == 0
        with ServerProcess(home, "--no-pull", "--gpu-layers", "10") as server:
            assert greedy(server, "split", max_tokens=2)
            [child] = psutil.Process(server.proc.pid).children()
            server.proc.kill()
            server.proc.wait()
            assert child.wait(30) is not None or not child.is_running()


def test_an_unreachable_rpc_server_is_a_load_error_naming_it(models_home: Path, tmp_path: Path) -> None:
    home = home_sharing_models(models_home, tmp_path / "home")
    env = clean_env(GPUSTACK_HOME=str(home))
    nowhere = f"127.0.0.1:{free_port()}"
    assert gpustack("cp", "smollm2", "far", env=env).returncode == 0
    assert gpustack("model", "set", "far", "--rpc", nowhere, env=env).returncode == 0
    bad = gpustack("model", "set", "far", "--rpc", "no-port-here", env=env)
    assert bad.returncode == 1 and "HOST:PORT" in bad.stderr
    with ServerProcess(home, "--no-pull") as server:
        started = time.monotonic()
        answer = httpx.post(
            server.url + "/v1/chat/completions", json={"model": "far", "messages": ASK, "max_tokens": 4}, timeout=60
        )
        assert answer.status_code == 503 and nowhere in answer.json()["error"]["message"], answer.text
        assert time.monotonic() - started < 30
    version = json.loads(gpustack("version", "--verbose", "--json", env=env).stdout)
    assert version["llama_cpp"]["rpc"] is True
