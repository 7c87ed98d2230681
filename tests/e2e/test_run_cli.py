"""`gpustack run` on the real SmolLM2, in a pseudo-terminal (pexpect), in-process and via a server."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.support.harness import ROOT, ServerProcess, clean_env, free_port, gpustack

PROMPT = ">>> "


def spawn(home: Path, *args: str, server_url: str | None = None) -> pexpect.spawn:
    env = clean_env(
        GPUSTACK_HOME=str(home),
        GPUSTACK_SERVER_URL=server_url or f"http://127.0.0.1:{free_port()}",
        TERM="dumb",
        COLUMNS="120",
    )
    child = pexpect.spawn(
        sys.executable, ["-m", "gpustack_cli", "run", *args], env=env, cwd=str(ROOT), encoding="utf-8", timeout=120
    )
    return child


def test_one_shot_in_process(models_home: Path) -> None:
    env = clean_env(GPUSTACK_HOME=str(models_home), GPUSTACK_SERVER_URL=f"http://127.0.0.1:{free_port()}")
    result = gpustack("run", "smollm2", "Say", "hello", "--max-tokens", "12", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_repl_commands_and_ctrl_c(models_home: Path) -> None:
    child = spawn(models_home, "smollm2", "--max-tokens", "400")
    child.expect("chatting via this process")
    child.expect_exact(PROMPT)
    child.sendline("/?")
    child.expect("/system TEXT")
    child.expect_exact(PROMPT)
    child.sendline("/system You are a pirate.")
    child.expect("system prompt set")
    child.expect_exact(PROMPT)
    child.sendline('"""Write a very long story')
    child.expect_exact("... ")
    child.sendline('about the sea."""')
    child.expect_exact('about the sea."""\r\n')  # the terminal's echo of what we typed
    child.expect(r"\w+\W+\w+\W+\w+")  # then the answer streams in
    child.sendintr()  # Ctrl-C stops the answer, not the program
    child.expect("stopped")
    child.expect_exact(PROMPT)
    child.sendline("/clear")
    child.expect("cleared")
    child.expect_exact(PROMPT)
    child.sendline("Hi")
    child.expect_exact(PROMPT)
    assert len(child.before.strip()) > 0
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_repl_against_a_running_server(models_home: Path) -> None:
    with ServerProcess(models_home, "--no-pull") as server:
        child = spawn(models_home, "smollm2", "--max-tokens", "10", server_url=server.url)
        child.expect(f"chatting via {server.url}")
        child.expect_exact(PROMPT)
        child.sendline("Hello there")
        child.expect_exact(PROMPT)
        assert child.before.strip()
        time.sleep(0.5)  # let input() take the terminal first: an EOF typed before it is lost
        child.sendeof()  # Ctrl-D leaves
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert "POST /v1/chat/completions" in server.output()


def test_run_refusals(models_home: Path, tmp_path: Path) -> None:
    env = clean_env(GPUSTACK_HOME=str(models_home), GPUSTACK_SERVER_URL=f"http://127.0.0.1:{free_port()}")
    result = gpustack("run", "nope", env=env)  # not in the store, so pulled: and no such model exists
    assert result.returncode == 1 and "unknown model 'nope'" in result.stderr
    result = gpustack("run", "piper-joe", env=env)
    assert result.returncode == 1 and "give the text to speak" in result.stderr
    result = gpustack("run", "whisper-tiny.en", str(tmp_path / "missing.wav"), env=env)
    assert result.returncode == 1 and "give one audio file" in result.stderr
    result = gpustack("run", "piper-joe", "hi", "-o", str(tmp_path / "x.ogg"), env=env)
    assert result.returncode == 1 and "cannot write .ogg" in result.stderr


@pytest.mark.parametrize("command", ["/bye", "/exit"])
def test_leaving(models_home: Path, command: str) -> None:
    child = spawn(models_home, "smollm2")
    child.expect_exact(PROMPT)
    child.sendline(command)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_run_pulls_what_the_store_lacks(models_home: Path, tmp_path: Path) -> None:
    weights = next((models_home / "models" / "smollm2").glob("*.gguf"))
    env = clean_env(GPUSTACK_HOME=str(tmp_path / "home"), GPUSTACK_SERVER_URL=f"http://127.0.0.1:{free_port()}")
    result = gpustack("run", str(weights), "Say hello.", "--max-tokens", "5", env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "not in the store: pulling it" in result.stderr and result.stdout.strip()
    assert weights.stem.lower() in gpustack("list", "--json", env=env).stdout.lower()


def test_a_piped_prompt_verbose_timings_and_json(models_home: Path) -> None:
    env = clean_env(GPUSTACK_HOME=str(models_home), GPUSTACK_SERVER_URL=f"http://127.0.0.1:{free_port()}")

    def prompt_tokens(output: str) -> int:
        return int(re.search(r"prompt eval count:\s+(\d+)", output).group(1))

    alone = gpustack("run", "smollm2", "Summarise:", "--verbose", "--max-tokens", "4", env=env, timeout=120)
    assert alone.returncode == 0, alone.stderr
    for line in ("total duration:", "time to first token:", "eval count:", "eval rate:"):
        assert line in alone.stdout
    notes = "The meeting moved to Thursday. Bring the budget figures and the draft plan."
    piped = gpustack(
        "run", "smollm2", "Summarise:", "--verbose", "--max-tokens", "4", env=env, timeout=120, input=notes
    )
    assert piped.returncode == 0, piped.stderr
    assert prompt_tokens(piped.stdout) > prompt_tokens(alone.stdout) + 10  # the notes reached the model
    data = gpustack(
        "run",
        "smollm2",
        "A JSON object with a name and an age.",
        "--format",
        "json",
        "--max-tokens",
        "60",
        env=env,
        timeout=120,
    )
    assert data.returncode == 0, data.stderr
    assert data.stdout.strip().startswith("{")


def test_repl_settings(models_home: Path) -> None:
    child = spawn(models_home, "smollm2", "--max-tokens", "5")
    child.expect_exact(PROMPT)
    child.sendline("/set parameter temperature 0.2")
    child.expect("set temperature to 0.2")
    child.expect_exact(PROMPT)
    child.sendline("/set parameter num_predict 7")
    child.expect_exact(PROMPT)
    child.sendline("/set parameter warmth 3")
    child.expect("unknown parameter 'warmth'")
    child.expect_exact(PROMPT)
    child.sendline("/set system You answer in French.")
    child.expect("system prompt set")
    child.expect_exact(PROMPT)
    child.sendline("/show info")
    child.expect("model: smollm2")
    child.expect("system prompt: You answer in French.")
    child.expect('"max_tokens": 7, "temperature": 0.2')
    child.expect_exact(PROMPT)
    child.sendline("/set verbose")
    child.expect_exact(PROMPT)
    child.sendline("Hello")
    child.expect("eval count: +[1-7] token")
    child.expect_exact(PROMPT)
    child.sendline("/bye")
    child.expect(pexpect.EOF)


def test_gpustack_host_points_every_command_at_the_server(models_home: Path) -> None:
    with ServerProcess(models_home, "--no-pull", "--preload", "smollm2") as server:
        env = clean_env(GPUSTACK_HOME=str(models_home), GPUSTACK_HOST=f"127.0.0.1:{server.port}")
        listed = gpustack("ps", "--json", env=env)
        assert listed.returncode == 0 and '"smollm2"' in listed.stdout
        answered = gpustack("run", "smollm2", "Hi", "--max-tokens", "3", env=env, timeout=120)
        assert answered.returncode == 0, answered.stderr
        assert "POST /v1/chat/completions" in server.output()
        assert gpustack("stop", "smollm2", env=env).returncode == 0


def test_an_over_long_prompt_is_refused_alike_in_process_and_over_http(models_home: Path) -> None:
    """The terminal's in-process path checks a request as the server does: the same refusal."""
    limits = {"GPUSTACK_CTX_SIZE": "256", "GPUSTACK_PARALLEL": "1"}
    long = "word " * 300

    def refusal(result: subprocess.CompletedProcess) -> str:
        assert result.returncode == 1, result.stdout
        said = " ".join(result.stderr.split())
        return said[said.index("error: ") :].removesuffix(" (HTTP 400)")

    env = clean_env(GPUSTACK_HOME=str(models_home), GPUSTACK_SERVER_URL=f"http://127.0.0.1:{free_port()}", **limits)
    here = refusal(gpustack("run", "smollm2", "Summarise:", env=env, input=long, timeout=120))
    assert "maximum context length is 256 tokens" in here
    with ServerProcess(models_home, "--no-pull", env=limits) as server:
        env = clean_env(GPUSTACK_HOME=str(models_home), GPUSTACK_SERVER_URL=server.url)
        there = refusal(gpustack("run", "smollm2", "Summarise:", env=env, input=long, timeout=120))
        assert "POST /v1/chat/completions" in server.output()
    assert here == there
