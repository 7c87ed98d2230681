from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.loopback import LoopbackServer

ROOT = Path(__file__).resolve().parents[1]
# The environment as the test run found it, before any test changed it.
ORIGINAL_ENV = dict(os.environ)
# Models pulled for the end-to-end tests are kept between runs, outside the repository.
CACHE = Path(ORIGINAL_ENV.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpustack-tests"
# A suite started in the background by a non-interactive shell inherits SIGINT ignored, and so
# would every command it starts: the Ctrl-C tests need it delivered as a terminal delivers it.
# (A handled signal goes back to its default in a started program; an ignored one stays ignored.)
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_finish(session: pytest.Session) -> None:
    # pytest exits 5 when it collects nothing; make that a loud failure instead of a quiet pass.
    if not session.items:
        raise pytest.UsageError("no tests were collected: the suite is empty or everything was deselected")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in ORIGINAL_ENV.items() if not k.startswith("GPUSTACK_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gpustack(*args: str, env: dict[str, str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    # No standard input unless given: `run` reads a piped one as part of its prompt.
    if "input" not in kwargs:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [sys.executable, "-m", "gpustack_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kwargs,
    )


class ServerProcess:
    """`gpustack serve` in a subprocess on a free port, stopped (SIGTERM) when the block ends;
    `command` runs another gpustack than this source tree's (a built binary)."""

    def __init__(
        self,
        home: Path,
        *args: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        command: list[str] | None = None,
        host: str = "127.0.0.1",
    ):
        self.command = command or [sys.executable, "-m", "gpustack_cli"]
        self.port = port or free_port()
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
        self.args = ["serve", "--port", str(self.port), *args]
        self.env = clean_env(GPUSTACK_HOME=str(home), **(env or {}))
        self.log = home / f"serve-{self.port}.log"

    def __enter__(self) -> ServerProcess:
        home = Path(self.env["GPUSTACK_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            [*self.command, *self.args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gpustack serve exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError(f"gpustack serve did not start:\n{self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log.read_text()

    def internal_errors(self) -> int:
        """Exceptions no route turned into an API error, as the server counts them; each is a bug."""
        key = self.env.get("GPUSTACK_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.get(self.url + "/metrics", headers=headers, timeout=30)
        if response.status_code != 200:  # keys only in the store: the log says it as well
            return self.output().count("internal error in ") + self.output().count("error while streaming")
        found = re.search(r"^gpustack_internal_errors_total (\S+)$", response.text, re.MULTILINE)
        return int(float(found.group(1))) if found else 0

    def __exit__(self, *exc: object) -> None:
        errors = self.internal_errors() if self.proc.poll() is None else 0
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        # Every end-to-end test's server ends with no internal error: one is a bug, whatever the test checked.
        assert errors == 0, f"the server counted {errors} internal error(s):\n{self.log.read_text()[-5000:]}"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("GPUSTACK_HOME", str(path))
    return path


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    server = LoopbackServer().start()
    yield server
    server.stop()


@pytest.fixture
def pip_index(monkeypatch: pytest.MonkeyPatch, loopback: LoopbackServer) -> LoopbackServer:
    """Point pip's configuration (and so `pypi:` pulls) at the loopback index only."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", f"{loopback.url}/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    return loopback


DEFAULT_MODELS = ("smollm2", "all-minilm-l6-v2", "whisper-tiny.en", "piper-joe")


@pytest.fixture(scope="session")
def models_home() -> Path:
    """A store holding the default models, pulled from the package index by `gpustack pull` once
    and kept in the user's cache folder for later runs."""
    path = CACHE / "home"
    env = clean_env(GPUSTACK_HOME=str(path))
    for name in DEFAULT_MODELS:
        result = gpustack("pull", name, env=env)
        assert result.returncode == 0, result.stderr
    return path


def home_sharing_models(models_home: Path, home: Path) -> Path:
    """`home`, a store of its own (keys, stored responses, models added to it) whose models
    folder links to each of the test models: their files are shared, never copied or changed."""
    (home / "models").mkdir(parents=True)
    for model in (models_home / "models").iterdir():
        (home / "models" / model.name).symlink_to(model, target_is_directory=True)
    return home


def llama_cpp_sdist() -> Path:
    """The source distribution of the llama-cpp-python installed (it vendors llama.cpp: its
    converter, its real chat templates), downloaded once into the tests' cache."""
    from importlib.metadata import version

    folder = CACHE / "sdist"
    release = version("llama-cpp-python")
    found = list(folder.glob(f"llama_cpp_python-{release}.tar.gz"))
    if not found:
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        command += [f"llama-cpp-python=={release}", "-d", str(folder)]
        subprocess.run(command, check=True, env=clean_env(), timeout=600)
        found = list(folder.glob(f"llama_cpp_python-{release}.tar.gz"))
    return found[0]


def extract_llama_cpp(target: Path, wanted: Callable[[str], bool]) -> Path:
    """The files of the sdist's vendored llama.cpp whose paths (under it) `wanted` takes,
    extracted under `target`; the extracted llama.cpp folder."""
    import tarfile

    sdist = llama_cpp_sdist()
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix) and wanted(m.name[len(prefix) :])]
        archive.extractall(target, members=members, filter="data")
    return target / prefix


def _converter(workdir: Path) -> Path:
    """llama.cpp's own convert_hf_to_gguf.py, from the sdist of the llama-cpp-python installed."""
    return extract_llama_cpp(
        workdir, lambda path: path == "convert_hf_to_gguf.py" or path.startswith(("gguf-py/", "conversion/"))
    )


def convert_to_gguf(folder: Path, target: Path, outtype: str, workdir: Path) -> Path:
    """A Hugging Face folder converted by llama.cpp's own converter (kept in the cache)."""
    if not target.is_file():
        llama_dir = _converter(workdir)
        partial = target.with_suffix(".part")
        subprocess.run(
            [sys.executable, "convert_hf_to_gguf.py", str(folder), "--outfile", str(partial), "--outtype", outtype],
            cwd=llama_dir,
            check=True,
            capture_output=True,
            timeout=600,
            env=clean_env(PYTHONPATH=f"{llama_dir / 'gguf-py'}:{llama_dir}"),
        )
        partial.rename(target)
    return target


def pull_as(models_home: Path, source: Path, name: str) -> str:
    if not (models_home / "models" / name / "manifest.json").is_file():
        result = gpustack("pull", str(source), "--name", name, env=clean_env(GPUSTACK_HOME=str(models_home)))
        assert result.returncode == 0, result.stderr
    return name


@pytest.fixture(scope="session")
def minilm_gguf(models_home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real GGUF embedding model: all-MiniLM-L6-v2, converted by llama.cpp's own converter and
    pulled into the test store as `minilm-gguf` (kept in the cache for later runs)."""
    target = CACHE / "minilm-f16.gguf"
    if not (models_home / "models" / "minilm-gguf").is_dir():
        convert_to_gguf(models_home / "models" / "all-minilm-l6-v2", target, "f16", tmp_path_factory.mktemp("sdist"))
    return pull_as(models_home, target, "minilm-gguf")


@pytest.fixture(scope="session")
def gguf_reranker(models_home: Path, cross_encoder: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny cross-encoder converted to GGUF: llama.cpp scores pairs with its classifier head."""
    target = CACHE / "tiny-cross-encoder-f32.gguf"
    if not (models_home / "models" / "tiny-gguf-reranker").is_dir():
        convert_to_gguf(models_home / "models" / cross_encoder, target, "f32", tmp_path_factory.mktemp("sdist"))
    return pull_as(models_home, target, "tiny-gguf-reranker")


@pytest.fixture(scope="session")
def cross_encoder(models_home: Path) -> str:
    """A tiny cross-encoder built from transformers' own classes (random weights: the test is the
    loading and scoring path) with MiniLM's real tokenizer, pulled into the store from its folder."""
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    name = "tiny-cross-encoder"
    if not (models_home / "models" / name / "manifest.json").is_file():
        folder = CACHE / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=1,
        )
        BertForSequenceClassification(config).save_pretrained(folder)
        for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            shutil.copy(models_home / "models" / "all-minilm-l6-v2" / file, folder / file)
        result = gpustack("pull", str(folder), "--name", name, env=clean_env(GPUSTACK_HOME=str(models_home)))
        assert result.returncode == 0, result.stderr
    return name


@pytest.fixture(scope="session")
def tiny_sd(models_home: Path) -> str:
    """A tiny Stable Diffusion pipeline (random weights, 64x64) pulled into the store from its folder."""
    from tests.tiny_diffusion import build_tiny_pipeline

    name = "tiny-sd"
    if not (models_home / "models" / name / "manifest.json").is_file():
        folder = build_tiny_pipeline(CACHE / name)
        result = gpustack("pull", str(folder), "--name", name, env=clean_env(GPUSTACK_HOME=str(models_home)))
        assert result.returncode == 0, result.stderr
    return name


@pytest.fixture(scope="session")
def bge_m3(models_home: Path) -> str:
    """The seeds' example names a model bge-m3: all-MiniLM-L6-v2 pulled under that name, proxy on."""
    env = clean_env(GPUSTACK_HOME=str(models_home))
    result = gpustack(
        "pull",
        str(models_home / "models" / "all-minilm-l6-v2"),
        "--name",
        "bge-m3",
        "--generic-proxy",
        "--force",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return "bge-m3"


def seeds_proxy_example(server_url: str, key: str) -> list:
    """The seeds' Generic Proxy curl example, verbatim but for the server's address; its JSON answer."""
    command = f"""curl {server_url}/model/proxy/embed \\
  -X POST \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer $GPUSTACK_API_KEY" \\
  -H "X-GPUStack-Model: bge-m3" \\
  -d '{{"inputs": ["What is Deep Learning?", "Deep Learning is not..."]}}'"""
    result = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**ORIGINAL_ENV, "GPUSTACK_API_KEY": key},
    )
    return json.loads(result.stdout)


@pytest.fixture(scope="session")
def chat_templates() -> dict[str, str]:
    """llama.cpp's collection of real chat templates (models/templates/*.jinja in the sdist), by
    file name: Llama 3.x, Qwen, Mistral, Gemma, DeepSeek, Granite, Hermes, Command R, ..."""
    folder = extract_llama_cpp(CACHE / "templates", lambda path: path.startswith("models/templates/"))
    return {path.name: path.read_text() for path in sorted((folder / "models" / "templates").glob("*.jinja"))}


@pytest.fixture(scope="session")
def built_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-file binary, built by scripts/build_binary.py with the llama.cpp engine."""
    out = tmp_path_factory.mktemp("binary")
    build = subprocess.run(
        [sys.executable, "scripts/build_binary.py", "--engines", "llm", "--dist", out / "dist", "--work", out / "work"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    path = out / "dist" / "gpustack"
    assert path.is_file() and "built" in build.stdout
    return path
