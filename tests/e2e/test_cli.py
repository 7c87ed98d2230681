"""The CLI's store and key commands, run as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from gpustack_cli import __version__
from tests.support.gguf_writer import write_gguf
from tests.support.harness import clean_env, gpustack


def test_pull_list_show_rm(tmp_path: Path) -> None:
    env = clean_env(GPUSTACK_HOME=str(tmp_path / "home"), COLUMNS="200")
    model = write_gguf(
        tmp_path / "Tiny-Chat.gguf",
        {"general.architecture": "llama", "llama.context_length": 4096, "tokenizer.chat_template": "{{ messages }}"},
    )
    pulled = gpustack("pull", str(model), "--name", "tiny", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "tiny ready: llm via llama.cpp" in pulled.stdout

    listed = json.loads(gpustack("list", "--json", env=env).stdout)
    assert [(m["name"], m["categories"], m["engine"], m["size"]) for m in listed] == [
        ("tiny", ["llm"], "llama.cpp", model.stat().st_size)
    ]
    table = gpustack("list", env=env).stdout
    assert "NAME" in table and "tiny" in table and "llama.cpp" in table

    shown = json.loads(gpustack("show", "tiny", "--json", env=env).stdout)
    assert shown["options"] == {"model_file": "Tiny-Chat.gguf", "n_ctx_train": 4096}
    assert shown["gguf"]["general.architecture"] == "llama" and shown["gguf"]["has_chat_template"] is True
    assert len(shown["files"][0]["sha256"]) == 64
    assert "general.architecture" in gpustack("show", "tiny", env=env).stdout

    assert gpustack("rm", "tiny", env=env).returncode == 0
    assert json.loads(gpustack("list", "--json", env=env).stdout) == []
    for args in (("rm", "tiny"), ("show", "tiny")):
        result = gpustack(*args, env=env)
        assert result.returncode == 1 and "not in the store" in result.stderr, args
    ran = gpustack("run", "tiny", env=env)  # not stored, so pulled: and there is no such model to pull
    assert ran.returncode == 1 and "unknown model 'tiny'" in ran.stderr


def test_ls_cp_and_rm_of_several(tmp_path: Path) -> None:
    """Ollama's habits: `ls`, `cp SRC DST` (sharing the files), `rm A B`."""
    env = clean_env(GPUSTACK_HOME=str(tmp_path / "home"))
    model = write_gguf(tmp_path / "Tiny.gguf", {"general.architecture": "llama", "llama.context_length": 2048})
    assert gpustack("pull", str(model), "--name", "tiny", env=env).returncode == 0
    copied = gpustack("cp", "tiny", "tiny-long", env=env)
    assert copied.returncode == 0 and "copied tiny to tiny-long" in copied.stdout
    assert gpustack("cp", "tiny", "tiny-long", env=env).returncode == 1  # the name is taken
    assert gpustack("model", "set", "tiny-long", "--ctx-size", "1024", env=env).returncode == 0
    listed = {m["name"]: m for m in json.loads(gpustack("ls", "--json", env=env).stdout)}
    assert set(listed) == {"tiny", "tiny-long"} and listed["tiny-long"]["options"]["n_ctx"] == 1024
    assert "n_ctx" not in listed["tiny"]["options"]  # a setting of the copy is its own
    files = [tmp_path / "home" / "models" / name / "Tiny.gguf" for name in ("tiny", "tiny-long")]
    assert files[0].stat().st_ino == files[1].stat().st_ino  # one file on disk, two names
    removed = gpustack("rm", "tiny", "tiny-long", "nope", env=env)
    assert removed.returncode == 1 and "removed tiny\nremoved tiny-long" in removed.stdout and "nope" in removed.stderr
    assert json.loads(gpustack("ls", "--json", env=env).stdout) == []


def test_keys_commands(tmp_path: Path) -> None:
    env = clean_env(GPUSTACK_HOME=str(tmp_path))
    created = gpustack(
        "keys", "create", "--name", "bot", "--expires-in", "1h", "--models", "a, b", "--scope", "all", env=env
    )
    assert created.returncode == 0 and "not shown again" in created.stderr
    [record] = json.loads(gpustack("keys", "list", "--json", env=env).stdout)
    assert record["name"] == "bot" and record["models"] == ["a", "b"] and record["scope"] == "all"
    assert 3500 < record["expires"] - record["created"] <= 3600 and record["expired"] is False
    assert created.stdout.strip() not in json.dumps(record)
    bad = gpustack("keys", "create", "--expires-in", "soon", env=env)
    assert bad.returncode == 1 and "not a duration" in bad.stderr
    assert gpustack("keys", "revoke", "nobody", env=env).returncode == 1
    assert gpustack("keys", "revoke", record["id"], env=env).returncode == 0
    assert json.loads(gpustack("keys", "list", "--json", env=env).stdout) == []


def test_version_and_bad_settings(tmp_path: Path) -> None:
    env = clean_env(GPUSTACK_HOME=str(tmp_path))
    assert gpustack("version", env=env).stdout.strip() == f"gpustack {__version__}"
    for flag in ("--version", "-v"):
        assert gpustack(flag, env=env).stdout.strip() == f"gpustack {__version__}"
    assert json.loads(gpustack("version", "--json", env=env).stdout) == {"version": __version__}
    result = gpustack("list", env={**env, "GPUSTACK_MAX_LOADED_MODELS": "zero"})
    assert result.returncode == 1 and "max_loaded_models" in result.stderr and "Traceback" not in result.stderr


def test_a_models_chat_template_and_stops_are_set_shown_and_checked(tmp_path: Path) -> None:
    env = clean_env(GPUSTACK_HOME=str(tmp_path / "home"), COLUMNS="200")
    model = write_gguf(
        tmp_path / "Broken.gguf",
        {"general.architecture": "llama", "llama.context_length": 4096, "tokenizer.chat_template": "{% for %}"},
    )
    assert gpustack("pull", str(model), "--name", "t", env=env).returncode == 0
    shown = json.loads(gpustack("show", "t", "--json", env=env).stdout)["chat_template"]
    assert shown["origin"] == "the GGUF file" and shown["compiles"] is False and "does not compile" in shown["error"]
    assert "cannot be used" in gpustack("show", "t", env=env).stdout

    (tmp_path / "bad.jinja").write_text("{% if %}")
    refused = gpustack("model", "set", "t", "--chat-template", str(tmp_path / "bad.jinja"), env=env)
    assert refused.returncode == 1 and "does not compile" in refused.stderr
    refused = gpustack("model", "set", "t", "--chat-template-kwargs", "[1]", env=env)
    assert refused.returncode == 1 and "JSON object" in refused.stderr

    (tmp_path / "good.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    args = ("--chat-template", str(tmp_path / "good.jinja"), "--chat-template-kwargs", '{"enable_thinking": false}')
    assert gpustack("model", "set", "t", *args, env=env).returncode == 0
    shown = json.loads(gpustack("show", "t", "--json", env=env).stdout)
    assert shown["chat_template"]["compiles"] is True and "model set" in shown["chat_template"]["origin"]
    assert shown["options"]["chat_template_kwargs"] == {"enable_thinking": False}

    assert gpustack("model", "set", "t", "--chat-template", "", "--chat-template-kwargs", "{}", env=env).returncode == 0
    shown = json.loads(gpustack("show", "t", "--json", env=env).stdout)
    assert shown["chat_template"]["origin"] == "the GGUF file" and "chat_template_kwargs" not in shown["options"]

    assert gpustack("model", "set", "t", "--stop", "\n", "--stop", "User:", env=env).returncode == 0
    assert json.loads(gpustack("show", "t", "--json", env=env).stdout)["options"]["stop"] == ["\n", "User:"]
    assert gpustack("model", "set", "t", "--stop", "", env=env).returncode == 0
    assert "stop" not in json.loads(gpustack("show", "t", "--json", env=env).stdout)["options"]


def test_version_verbose_says_what_this_build_can_do(tmp_path: Path) -> None:
    env = clean_env(GPUSTACK_HOME=str(tmp_path))
    report = json.loads(gpustack("version", "--verbose", "--json", env=env).stdout)
    assert report["version"] == __version__ and report["binary"] is False
    assert {name for name, engine in report["engines"].items() if engine["bundled"]} == {
        "llama.cpp",
        "sentence-transformers",
        "diffusers",
        "faster-whisper",
        "piper",
    }
    assert "AVX" in report["llama_cpp"]["system_info"] or "NEON" in report["llama_cpp"]["system_info"]
    assert report["torch"]["device"] in ("cpu", "cuda", "mps")
    assert "int8" in report["ctranslate2"]["cpu"]
    assert report["store"] == {"path": str(tmp_path), "models": 0, "size": 0}
    shown = gpustack("version", "--verbose", env=env).stdout
    assert "llama.cpp" in shown and "CTranslate2" in shown and "store:" in shown


def test_shell_completion_is_offered(tmp_path: Path) -> None:
    shown = gpustack("--help", env=clean_env(GPUSTACK_HOME=str(tmp_path), COLUMNS="200")).stdout
    assert "--install-completion" in shown and "--show-completion" in shown
