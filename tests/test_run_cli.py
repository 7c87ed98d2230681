"""`gpustack run` on the real SmolLM2, in a pseudo-terminal (pexpect), in-process and via a server."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.conftest import ROOT, ServerProcess, clean_env, free_port, gpustack

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
    result = gpustack("run", "nope", env=env)
    assert result.returncode == 1 and "not in the store" in result.stderr
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
