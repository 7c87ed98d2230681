"""Many servers behind one, on loopback: a front `gpustack serve` with keys whose remote model is a
pool of two worker `gpustack serve`s running SmolLM2. Requests spread over both workers, go to
the one with fewer requests in flight, and go on being answered when a worker dies."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.harness import ServerProcess, clean_env, gpustack, home_sharing_models

KEY = "front-key"
POOL = "pooled"


@pytest.fixture(scope="module")
def cluster(models_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """[front, worker 1, worker 2]."""
    with ExitStack() as stack:
        workers = [
            stack.enter_context(ServerProcess(models_home, "--no-pull", "--preload", "smollm2", "--parallel", "4"))
            for _ in range(2)
        ]
        home = home_sharing_models(models_home, tmp_path_factory.mktemp("front"))
        env = clean_env(GPUSTACK_HOME=str(home))
        urls = [worker.url for worker in workers]
        added = gpustack("add-remote", POOL, *urls, "--upstream-model", "smollm2", env=env)
        assert added.returncode == 0, added.stderr
        front = stack.enter_context(ServerProcess(home, "--no-pull", env={"GPUSTACK_API_KEY": KEY}))
        yield [front, *workers]


def chats_seen(worker: ServerProcess) -> int:
    return worker.output().count("POST /v1/chat/completions")


def slots_busy(worker: ServerProcess) -> int:
    found = re.search(
        r'^gpustack_model_slots_busy{model="smollm2"} (\S+)$', httpx.get(worker.url + "/metrics").text, re.M
    )
    return int(float(found.group(1))) if found else 0


def chat(front: ServerProcess, max_tokens: int = 4, text: str = "Say hi.") -> str:
    client = openai.OpenAI(base_url=front.url + "/v1", api_key=KEY, max_retries=0, timeout=300)
    reply = client.chat.completions.create(
        model=POOL, messages=[{"role": "user", "content": text}], max_tokens=max_tokens, temperature=0
    )
    return reply.choices[0].message.content or ""


def test_concurrent_chats_spread_over_both_workers(cluster: list[ServerProcess]) -> None:
    front, *workers = cluster
    before = [chats_seen(w) for w in workers]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: chat(front, text=f"Say hi to {i}."), range(16)))
    assert all(answers)
    seen = [chats_seen(w) - b for w, b in zip(workers, before, strict=True)]
    assert sum(seen) == 16 and min(seen) >= 4, seen


def test_short_chats_go_to_the_worker_without_a_long_one(cluster: list[ServerProcess]) -> None:
    front, *workers = cluster
    before = [chats_seen(w) for w in workers]
    started = threading.Event()

    def long_answer() -> None:
        body = {
            "model": POOL,
            "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
            "max_tokens": 400,
            "stream": True,
            "logit_bias": {"2": -100},  # SmolLM2's end of turn: the story runs its full length
        }
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.stream("POST", front.url + "/v1/chat/completions", json=body, headers=headers, timeout=300) as r:
            for line in r.iter_lines():
                if '"content"' in line:
                    started.set()

    runner = threading.Thread(target=long_answer)
    runner.start()
    assert started.wait(120)
    busy = [slots_busy(w) for w in workers].index(1)  # (its access log line comes when it ends)
    for i in range(6):
        assert chat(front, max_tokens=2, text=f"Short {i}.")
    assert runner.is_alive(), "the long answer ended before the short ones: make it longer"
    runner.join()
    deadline = time.monotonic() + 10  # the long answer's log line is written once its stream closed
    while (seen := [chats_seen(w) - b for w, b in zip(workers, before, strict=True)])[busy] < 1:
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)
    assert seen[busy] == 1 and seen[1 - busy] == 6, seen


def test_a_dead_worker_leaves_the_pool_answering(cluster: list[ServerProcess]) -> None:
    front, first, _ = cluster
    first.proc.terminate()
    first.proc.wait(30)
    started = time.monotonic()
    for i in range(4):
        assert chat(front, text=f"Still there {i}?")
    assert time.monotonic() - started < 120
    shown = httpx.get(front.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert f'gpustack_upstream_up{{model="{POOL}",url="{first.url}"}} 0.0' in shown


def test_a_group_from_the_workers_model_lists(cluster: list[ServerProcess], tmp_path: Path) -> None:
    """`add-remote GROUP URL... --from-server`: each model the workers list becomes a remote model
    of its name, with its categories; chats on it go to the workers."""
    _, *workers = cluster
    alive = [w for w in workers if w.proc.poll() is None]
    env = clean_env(GPUSTACK_HOME=str(tmp_path / "home"))
    added = gpustack("add-remote", "workers", *(w.url for w in alive), "--from-server", env=env)
    assert added.returncode == 0, added.stderr
    with ServerProcess(tmp_path / "home", "--no-pull") as front:
        listed = {m["id"]: m for m in httpx.get(front.url + "/v1/models").json()["data"]}
        assert listed["smollm2"]["categories"] == ["llm"]
        assert "embedding" in listed["all-minilm-l6-v2"]["categories"]
        client = openai.OpenAI(base_url=front.url + "/v1", api_key="none", max_retries=0, timeout=300)
        reply = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        assert reply.choices[0].message.content
        vectors = client.embeddings.create(model="all-minilm-l6-v2", input="hello")
        assert len(vectors.data[0].embedding) == 384


def test_a_group_follows_its_servers_lists(tmp_path: Path) -> None:
    """Models an upstream starts to list are added while the server runs; those it stops listing
    answer 503 naming the group."""
    from aiohttp import web

    from tests.support.loopback import BackgroundApp

    served = ["alpha", "beta"]

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in served]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    upstream = BackgroundApp(app)
    try:
        env = clean_env(GPUSTACK_HOME=str(tmp_path / "home"))
        assert gpustack("add-remote", "lab", upstream.url, "--from-server", env=env).returncode == 0
        refresh = {"GPUSTACK_REMOTE_REFRESH_INTERVAL": "0.5"}
        with ServerProcess(tmp_path / "home", "--no-pull", env=refresh) as front:
            names = {m["id"] for m in httpx.get(front.url + "/v1/models").json()["data"]}
            assert names == {"alpha", "beta"}
            served[:] = ["alpha", "gamma"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                names = {m["id"] for m in httpx.get(front.url + "/v1/models").json()["data"]}
                if "gamma" in names:
                    break
                time.sleep(0.3)
            assert "gamma" in names
            body = {"model": "beta", "messages": [{"role": "user", "content": "Hi"}]}
            gone = httpx.post(front.url + "/v1/chat/completions", json=body, timeout=30)
            assert gone.status_code == 503 and "remote group 'lab'" in gone.json()["error"]["message"]
            local = gpustack("add-remote", "lab", upstream.url, "--from-server", env=env)
            assert local.returncode == 0 and "no new models" in local.stdout
    finally:
        upstream.stop()
