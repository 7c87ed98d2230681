import asyncio
import os
import sys
from pathlib import Path

import pytest

from gpustack_cli.config import DEFAULT_PORT, Settings, is_loopback, parse_duration
from gpustack_cli.server.serve import StartupError, event_loop
from tests.support.harness import ROOT


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300", 300), ("5m", 300), ("1h", 3600), ("1.5s", 1.5), ("250ms", 0.25), ("-1", -1), ("-5m", -1), ("0", 0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(Settings.model_fields):
        monkeypatch.delenv("GPUSTACK_" + name.upper(), raising=False)
    settings = Settings.load()
    assert settings.host == "127.0.0.1"
    assert settings.port == DEFAULT_PORT
    assert settings.keep_alive == 300
    assert settings.home == Path.home() / ".gpustack"
    assert settings.url == f"http://127.0.0.1:{DEFAULT_PORT}"


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUSTACK_PORT", "9000")
    monkeypatch.setenv("GPUSTACK_HOST", "0.0.0.0")
    monkeypatch.setenv("GPUSTACK_KEEP_ALIVE", "10m")
    monkeypatch.setenv("GPUSTACK_PRELOAD", "a, b")
    monkeypatch.setenv("GPUSTACK_HOME", str(tmp_path))
    settings = Settings.load(port=9100, keep_alive=None)
    assert settings.port == 9100  # the flag wins
    assert settings.keep_alive == 600  # None means "flag not given"
    assert settings.preload == ["a", "b"]
    assert settings.home == tmp_path
    assert settings.url == "http://127.0.0.1:9100"
    assert not settings.loopback_only


def test_bad_environment_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUSTACK_PORT", "many")
    with pytest.raises(ValueError, match="port"):
        Settings.load()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.2", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop does not exist for Windows")
def test_event_loop_is_uvloop_unless_asyncio_is_asked_for() -> None:
    import uvloop

    for choice in ("auto", "uvloop"):
        loop, named = event_loop(choice)
        loop.close()
        assert isinstance(loop, uvloop.Loop) and named == "uvloop"
    loop, named = event_loop("asyncio")
    loop.close()
    assert not isinstance(loop, uvloop.Loop) and isinstance(loop, asyncio.AbstractEventLoop) and named == "asyncio"


def test_event_loop_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what a machine without it sees: ImportError
    loop, named = event_loop("auto")
    loop.close()
    assert named == "asyncio"
    with pytest.raises(StartupError, match="pip install uvloop"):
        event_loop("uvloop")
    monkeypatch.setenv("GPUSTACK_EVENT_LOOP", "libuv")
    with pytest.raises(ValueError, match="event_loop"):
        Settings.load()


def test_every_setting_is_documented() -> None:
    """docs/settings.md names each setting's variable, and each serve flag beside it."""
    text = (ROOT / "docs" / "settings.md").read_text()
    for name in Settings.model_fields:
        assert f"`GPUSTACK_{name.upper()}`" in text, name
    for flag in ("--host", "--port", "--parallel", "--ctx-size", "--keep-alive", "--max-completion-tokens"):
        assert f"`{flag}`" in text, flag


@pytest.mark.parametrize(
    ("value", "host", "port", "url"),
    [
        ("0.0.0.0", "0.0.0.0", DEFAULT_PORT, f"http://127.0.0.1:{DEFAULT_PORT}"),
        ("0.0.0.0:9000", "0.0.0.0", 9000, "http://127.0.0.1:9000"),
        ("127.0.0.1:8080", "127.0.0.1", 8080, "http://127.0.0.1:8080"),
        ("[::1]:8081", "::1", 8081, "http://[::1]:8081"),
        ("http://10.0.0.5:7000", "10.0.0.5", 7000, "http://10.0.0.5:7000"),
        ("https://gpu.example.com", "gpu.example.com", 443, "https://gpu.example.com"),
        ("https://example.com/gpustack/", "example.com", 443, "https://example.com/gpustack"),
    ],
)
def test_gpustack_host_names_the_server_for_every_command(
    monkeypatch: pytest.MonkeyPatch, value: str, host: str, port: int, url: str
) -> None:
    """As OLLAMA_HOST: where `serve` listens, and where `run`, `ps` and `stop` connect."""
    monkeypatch.setenv("GPUSTACK_HOST", value)
    settings = Settings.load()
    assert (settings.host, settings.port, settings.url) == (host, port, url)
    assert Settings.load(port=9999).port == 9999  # a --port flag still wins
    monkeypatch.setenv("GPUSTACK_SERVER_URL", "http://other:1")
    assert Settings.load().url == "http://other:1"  # the older variable keeps working


def test_a_bad_gpustack_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUSTACK_HOST", "localhost:notaport")
    with pytest.raises(ValueError, match="GPUSTACK_HOST"):
        Settings.load()


def test_kv_cache_settings_are_checked_as_llama_cpp_would(monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.base import KvCache

    KvCache("auto", "q8_0", "q8_0")
    KvCache("off", "q4_0", "f16")  # a quantized K alone needs no flash attention
    with pytest.raises(ValueError, match="needs flash attention"):
        KvCache("off", "f16", "q8_0")
    with pytest.raises(ValueError, match="one of f16, q8_0, q4_0"):
        KvCache("on", "q5_1", "f16")  # type: ignore[arg-type]
    assert KvCache().over({"cache_type_v": "q8_0", "n_ctx": 4096}) == KvCache("auto", "f16", "q8_0")
    monkeypatch.setenv("GPUSTACK_CACHE_TYPE_V", "q4_0")
    monkeypatch.setenv("GPUSTACK_FLASH_ATTN", "off")
    with pytest.raises(ValueError, match="needs flash attention"):
        Settings.load()


def test_list_settings_take_commas_in_repeated_flags_too() -> None:
    assert Settings.load(preload=["smollm2,gemma3-270m", "all-minilm-l6-v2"]).preload == [
        "smollm2",
        "gemma3-270m",
        "all-minilm-l6-v2",
    ]


def test_settings_given_to_a_child_server_read_back_the_same(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`Settings.environment()`: what a model's child server is started with reads back as the
    settings that made it (lists, booleans, durations, unset values alike)."""
    for name in list(os.environ):
        if name.startswith("GPUSTACK_"):
            monkeypatch.delenv(name)
    made = Settings.load(
        home=tmp_path,
        rpc="10.0.0.2:50052,10.0.0.3:50052",
        keep_alive="-1",
        allow_image_urls=True,
        ctx_size=2048,
        origins=["https://a.example", "https://b.example"],
        cache_type_k="q8_0",
    )
    for name, value in made.environment().items():
        monkeypatch.setenv(name, value)
    assert Settings.load() == made
    assert made.rpc == ["10.0.0.2:50052", "10.0.0.3:50052"]
    with pytest.raises(ValueError, match="HOST:PORT"):
        Settings.load(rpc="10.0.0.2")
