"""Speculative decoding with prompt lookup on the real Gemma 3 270M: a copy of the model set to
draft (`model set --draft ngram`) gives the same greedy text as the model without drafts, on a
prompt whose answer copies the prompt, and says what its drafts did (`/metrics`, `/api/ps`)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import openai

from tests.support.harness import ServerProcess, clean_env, gpustack, home_sharing_models

MODEL = "gemma3-270m"
CODE = """class Inventory:
    def __init__(self):
        self.items = {}

    def add(self, name, count):
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name, count):
        if self.items.get(name, 0) < count:
            raise ValueError(f"only {self.items.get(name, 0)} of {name} left")
        self.items[name] -= count

    def total(self):
        return sum(self.items.values())
"""


def test_drafts_keep_the_greedy_text_and_are_counted(models_home: Path, tmp_path: Path) -> None:
    home = home_sharing_models(models_home, tmp_path / "home")
    env = clean_env(GPUSTACK_HOME=str(home))
    assert gpustack("cp", MODEL, "drafting", env=env).returncode == 0
    done = gpustack("model", "set", "drafting", "--draft", "ngram", "--draft-max", "16", env=env)
    assert done.returncode == 0 and "drafting ngram, 16 tokens at most" in done.stdout, done.stderr
    refused = gpustack("model", "set", "drafting", "--draft", "smollm2", env=env)
    assert refused.returncode == 1 and "ngram" in refused.stderr
    prompt = f"Here is a Python file:\n\n{CODE}\nThe same file, with the class Inventory renamed to Stock:\n\n"
    with ServerProcess(home, "--no-pull", "--parallel", "2", "--ctx-size", "2048") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)

        def complete(model: str) -> str:
            return client.completions.create(model=model, prompt=prompt, max_tokens=100, temperature=0).choices[0].text

        plain, drafted = complete(MODEL), complete("drafting")
        assert drafted == plain and "def remove(self, name, count)" in drafted
        metrics = httpx.get(server.url + "/metrics").text

        def counted(name: str) -> float:
            found = re.search(rf'^{name}_total{{model="drafting"}} (\S+)$', metrics, re.M)
            return float(found.group(1)) if found else 0.0

        assert counted("gpustack_draft_accepted_tokens") >= 40  # most of the copy came from drafts
        assert counted("gpustack_draft_tokens") >= counted("gpustack_draft_accepted_tokens")
        running = {m["name"]: m for m in httpx.get(server.url + "/api/ps").json()["models"]}
        assert running["drafting"]["draft"]["kind"] == "ngram" and running["drafting"]["draft"]["max_tokens"] == 16
        assert running[MODEL]["draft"] is None
        listed = " ".join(gpustack("ps", env=clean_env(GPUSTACK_SERVER_URL=server.url, COLUMNS="200")).stdout.split())
        kept = running["drafting"]["draft"]["accepted_tokens"]
        assert f"ngram drafts: {kept} of {running['drafting']['draft']['drafted_tokens']} tokens kept" in listed, listed
