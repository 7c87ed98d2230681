import json
from pathlib import Path

import pytest

from gpustack_cli.models.detect import UnknownFormat, detect
from gpustack_cli.models.gguf_meta import GGUFError, read_metadata
from gpustack_cli.models.store import Category
from tests.support.gguf_writer import write_gguf

CHAT = {"general.architecture": "llama", "llama.context_length": 32768, "tokenizer.chat_template": "{{ x }}"}


def test_reads_gguf_metadata_and_summarises_long_arrays(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf",
        {
            **CHAT,
            "tokenizer.ggml.tokens": [f"t{i}" for i in range(500)],
            "small": [1, 2, 3],
            "flag": True,
            "scale": 0.5,
        },
    )
    meta = read_metadata(path)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.context_length"] == 32768
    assert meta["tokenizer.ggml.tokens"] == {"array_length": 500}
    assert meta["small"] == [1, 2, 3]
    assert meta["flag"] is True
    assert meta["scale"] == 0.5


def test_not_gguf(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"nope" * 10)
    with pytest.raises(GGUFError):
        read_metadata(tmp_path / "x.gguf")
    (tmp_path / "y.gguf").write_bytes(b"GGUF\x03\x00")
    with pytest.raises(GGUFError, match="truncated"):
        read_metadata(tmp_path / "y.gguf")


def test_gguf_chat_model(tmp_path: Path) -> None:
    write_gguf(tmp_path / "model.gguf", CHAT)
    write_gguf(tmp_path / "mmproj-model.gguf", {"general.architecture": "clip", "clip.has_audio_encoder": True})
    found = detect(tmp_path)
    assert (found.engine, found.categories) == ("llama.cpp", [Category.llm])
    assert found.options == {
        "model_file": "model.gguf",
        "n_ctx_train": 32768,
        "mmproj_file": "mmproj-model.gguf",
        "modalities": ["audio"],
    }
    # A projector that names no encoder (an older LLaVA one) sees.
    write_gguf(tmp_path / "mmproj-model.gguf", {"general.architecture": "clip"})
    assert detect(tmp_path).options["modalities"] == ["vision"]


def test_gguf_embedding_and_reranker(tmp_path: Path) -> None:
    emb, rank = tmp_path / "emb", tmp_path / "rank"
    emb.mkdir()
    rank.mkdir()
    write_gguf(emb / "e.gguf", {"general.architecture": "bert", "bert.pooling_type": 1, "bert.context_length": 512})
    write_gguf(rank / "r.gguf", {"general.architecture": "bert", "bert.pooling_type": 4})
    assert detect(emb).categories == [Category.embedding, Category.reranker]
    assert detect(emb).options["n_ctx_train"] == 512
    assert detect(rank).categories == [Category.reranker]
    head = tmp_path / "head"
    head.mkdir()
    write_gguf(head / "h.gguf", {"general.architecture": "bert", "bert.classifier.output_labels": ["LABEL_0"]})
    assert detect(head).categories == [Category.reranker] and detect(head).options["pooling"] == "rank"


def test_folders(tmp_path: Path) -> None:
    cases = {
        "diffusers": ({"model_index.json": "{}"}, "diffusers", [Category.image]),
        "st": (
            {"modules.json": "[]", "config.json": "{}"},
            "sentence-transformers",
            [Category.embedding, Category.reranker],
        ),
        "cross": (
            {"config.json": json.dumps({"architectures": ["BertForSequenceClassification"]})},
            "sentence-transformers",
            [Category.reranker],
        ),
        "whisper": (
            {"model.bin": "x", "config.json": "{}", "vocabulary.txt": "a"},
            "faster-whisper",
            [Category.speech_to_text],
        ),
        "piper": ({"voice.onnx": "x", "voice.onnx.json": "{}"}, "piper", [Category.text_to_speech]),
    }
    for folder_name, (files, engine, categories) in cases.items():
        folder = tmp_path / folder_name
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        found = detect(folder)
        assert (found.engine, found.categories) == (engine, categories), folder_name


def test_unknown_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnknownFormat, match="cannot tell which engine"):
        detect(tmp_path)
