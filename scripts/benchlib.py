"""What the benchmark scripts share: a free port, a `gpustack serve` started and ready (with the key
every request of theirs sends, `HEADERS`), and the peers started likewise: llama.cpp's llama-server
and llama-cpp-python's server."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
# The key the servers started here take (the caller's GPUSTACK_API_KEY, or one for this run only:
# a key from the environment is never stored), so that a store with API keys answers the
# benchmarks as any other; the clients send it.
KEY = os.environ.get("GPUSTACK_API_KEY") or "bench-" + secrets.token_urlsafe(16)
HEADERS = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, seconds: float = 120, process: subprocess.Popen | None = None) -> None:
    """Until `url` answers 200; an error at once where `process` (the server) exited first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited ({process.returncode}) before it answered")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {seconds:.0f} s")


def start_server(home: Path | str, *args: str, **env: str) -> tuple[subprocess.Popen, str]:
    """`gpustack serve --no-pull ARGS` on a free port, quiet, once /healthz answers: (process, URL)."""
    port = free_port()
    log = (Path(tempfile.mkdtemp()) / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gpustack_cli", "serve", "--port", str(port), "--no-pull", *args],
        env={**os.environ, "GPUSTACK_HOME": str(home), "GPUSTACK_LOG_LEVEL": "warning", "GPUSTACK_API_KEY": KEY, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/healthz", 600)
    return process, url


def start_llama_server(
    binary: Path | str, model: Path, *extra: str, ctx: int, threads: int
) -> tuple[subprocess.Popen, str]:
    """llama.cpp's llama-server on `model`, `ctx` tokens of context in all, `threads` threads,
    512-token batches and the `extra` arguments, quiet, once /health answers: (process, URL)."""
    port = free_port()
    # fmt: off
    args = [
        str(binary), "-m", str(model), "-c", str(ctx), "-t", str(threads), "-tb", str(threads),
        "-b", "512", "-ub", "512", "--host", "127.0.0.1", "--port", str(port), *extra,
    ]
    # fmt: on
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/health", 300, process)
    return process, url


def start_llama_cpp_python(model_path: Path, n_ctx: int, threads: int) -> tuple[subprocess.Popen, str] | None:
    """llama-cpp-python's own OpenAI server on a GGUF with these settings, once it answers; None
    where its `server` extra is not installed."""
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        return None
    port = free_port()
    # fmt: off
    args = [
        "--model", str(model_path), "--n_ctx", str(n_ctx), "--n_batch", "512", "--n_ubatch", "512",
        "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_gpu_layers", "-1",
        "--host", "127.0.0.1", "--port", str(port), "--verbose", "False",
    ]
    # fmt: on
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/v1/models", 300, process)
    except RuntimeError as exc:  # its extra is half installed: the row says so
        print(f"llama-cpp-python's server: {exc}", file=sys.stderr)
        return None
    return process, url


@dataclass
class Streamed:
    """One streamed chat answer as a client sees it."""

    first: float  # seconds from sending to the first token
    tokens: int  # content chunks (one token each)
    decode: float  # seconds from the first token to the last
    text: str

    @property
    def rate(self) -> float:
        return (self.tokens - 1) / self.decode if self.tokens > 1 and self.decode > 0 else 0.0


def stream_chat(url: str, body: dict) -> Streamed:
    """POST a streamed chat completion (`stream` set here) and time its tokens."""
    started = time.perf_counter()
    first = last = 0.0
    count, text = 0, []
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={**body, "stream": True}, headers=HEADERS, timeout=600
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            delta = choices[0].get("delta", {}).get("content")
            if delta:
                last = time.perf_counter()
                first = first or last
                count += 1
                text.append(delta)
    return Streamed(first - started if first else 0.0, count, last - first, "".join(text))


# The request shapes the LLM benchmarks time: what chat clients send (sampled, an everyday answer
# length, the end of generation allowed; with and without a seed) beside the favourable case
# (greedy, end of generation banned: every answer exactly as long, sampling costs nothing).
def chat_cases(tokens: int, eos: int) -> dict[str, dict]:
    return {
        f"greedy, {tokens} tokens, EOS banned": {
            "max_tokens": tokens,
            "temperature": 0,
            "logit_bias": {str(eos): -100},
        },
        "sampled 0.8, up to 256 tokens, EOS allowed": {"max_tokens": 256, "temperature": 0.8},
        "sampled 0.8 with a seed, up to 256 tokens": {"max_tokens": 256, "temperature": 0.8, "seed": 7},
    }
