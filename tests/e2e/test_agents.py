"""The real coding-agent CLIs against a real `gpustack serve`: Claude Code (`claude -p`) on
`/v1/messages` and Codex (`codex exec`) on `/v1/responses`, both with Gemma 3 270M at a 32k
context, each in a home of its own, with an API key. What is tested is the protocol, not the
answers (a 270M model is no coding agent): the CLI ends cleanly, reports no API error, and the
server answered every request it sent without an error.

Gemma 3 270M is a base model: it never learnt to end a turn, and would write until the context
is full. A stop string in its settings (`model set --stop`) ends its answer at the first line
break, as a user of a base model would set it.

The CLIs come from the npm registry (the README's test command installs them when missing).
A first request carries the agent's whole instructions and tools (over 20,000 tokens for Claude
Code) and takes minutes on a small CPU, hence the long timeouts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import ORIGINAL_ENV, ServerProcess, clean_env, gpustack

MODEL = "gemma3-270m"
KEY = "gpustack-agents-test-key"
# Generous: a first request reads its whole prompt, and the suite may share the machine.
AGENT_TIMEOUT_S = 1800
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3}) ')


@pytest.fixture(scope="module")
def server(models_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    result = gpustack("pull", MODEL, env=clean_env(GPUSTACK_HOME=str(models_home)), timeout=1800)
    assert result.returncode == 0, result.stderr
    # A store of its own, whose copy of the model (its files linked, not copied) has settings of
    # its own: the test models' manifests stay as they are.
    home = tmp_path_factory.mktemp("agents-home")
    env = clean_env(GPUSTACK_HOME=str(home))
    for args in (
        ("pull", str(models_home / "models" / MODEL), "--name", MODEL),
        ("model", "set", MODEL, "--ctx-size", "32768", "--stop", "\n"),
    ):
        result = gpustack(*args, env=env)
        assert result.returncode == 0, result.stderr
    args = ("--no-pull", "--preload", MODEL, "--parallel", "1")
    with ServerProcess(home, *args, env={"GPUSTACK_API_KEY": KEY}) as running:
        yield running


def requests_in(log: str) -> list[tuple[str, str, int]]:
    """The requests of the server's access log: method, target, status."""
    return [(m["method"], m["target"], int(m["status"])) for m in ACCESS_LINE.finditer(log)]


def cli(name: str) -> str:
    found = shutil.which(name, path=ORIGINAL_ENV.get("PATH"))
    assert found, f"{name} is not installed: the README's test command installs it from the npm registry"
    return found


def agent_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment of the agent's own: a fresh home, nothing of the user's configuration."""
    home.mkdir(parents=True, exist_ok=True)
    keep = ("PATH", "LANG", "LC_ALL", "TERM", "TMPDIR")
    return {**{k: ORIGINAL_ENV[k] for k in keep if k in ORIGINAL_ENV}, "HOME": str(home), **extra}


def run_agent(command: list[str], env: dict[str, str], workdir: Path) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "notes.txt").write_text("The project's only file.\n")
    return subprocess.run(
        command,
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=AGENT_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def served(server: ServerProcess, before: int, route: str) -> list[tuple[str, str, int]]:
    """The requests the server answered since `before` log characters, checked: some on `route`,
    and no client or server error among them."""
    seen = requests_in(server.output()[before:])
    assert any(target.split("?")[0] == route for _, target, _ in seen), seen
    failed = [r for r in seen if r[2] >= 400]
    assert not failed, f"requests answered with an error: {failed}\n{server.output()[before:][-4000:]}"
    return seen


@pytest.mark.timeout(AGENT_TIMEOUT_S + 300)
def test_claude_code_print_mode(server: ServerProcess, tmp_path: Path) -> None:
    env = agent_env(
        tmp_path / "home",
        ANTHROPIC_BASE_URL=server.url,
        ANTHROPIC_API_KEY=KEY,
        # Every model Claude Code asks for by role is the local one.
        ANTHROPIC_MODEL=MODEL,
        ANTHROPIC_DEFAULT_OPUS_MODEL=MODEL,
        ANTHROPIC_DEFAULT_SONNET_MODEL=MODEL,
        ANTHROPIC_DEFAULT_HAIKU_MODEL=MODEL,
        ANTHROPIC_SMALL_FAST_MODEL=MODEL,
        API_TIMEOUT_MS=str(AGENT_TIMEOUT_S * 1000),
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
    )
    before = len(server.output())
    command = [cli("claude"), "-p", "Say hello in one short sentence.", "--max-turns", "3", "--output-format", "json"]
    result = run_agent(command, env, tmp_path / "project")
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    outcome = json.loads(result.stdout)
    assert outcome["type"] == "result" and outcome["is_error"] is False, outcome
    assert "API Error" not in result.stdout + result.stderr
    seen = served(server, before, "/v1/messages")
    assert all(method == "POST" for method, target, _ in seen if target.startswith("/v1/messages"))


@pytest.mark.timeout(AGENT_TIMEOUT_S + 300)
def test_codex_exec(server: ServerProcess, tmp_path: Path) -> None:
    codex_home = tmp_path / "codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(
        f'model = "{MODEL}"\n'
        'model_provider = "gpustack"\n'
        'web_search = "disabled"\n'
        "\n"
        "[model_providers.gpustack]\n"
        'name = "gpustack"\n'
        f'base_url = "{server.url}/v1"\n'
        'env_key = "GPUSTACK_API_KEY"\n'
        'wire_api = "responses"\n'
        f"stream_idle_timeout_ms = {AGENT_TIMEOUT_S * 1000}\n"
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
    )
    env = agent_env(tmp_path / "home", CODEX_HOME=str(codex_home), GPUSTACK_API_KEY=KEY)
    before = len(server.output())
    command = [cli("codex"), "exec", "--skip-git-repo-check", "--json", "Say hello in one short sentence."]
    result = run_agent(command, env, tmp_path / "project")
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    kinds = [event.get("type") for event in events]
    assert "turn.completed" in kinds and "turn.failed" not in kinds and "error" not in kinds, kinds
    served(server, before, "/v1/responses")
