from pathlib import Path

import pytest

from gpustack_cli.config import DEFAULT_PORT, Settings, is_loopback, parse_duration


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
