import time
from pathlib import Path

import pytest

from gpustack_cli.server.keys import Authenticator, KeyStore, Scope, check_secret, hash_secret, split_key


def test_hash_is_salted_and_slow_kind(tmp_path: Path) -> None:
    first, second = hash_secret("s3cret"), hash_secret("s3cret")
    assert first != second and first.startswith("scrypt$")
    assert "s3cret" not in first
    assert check_secret("s3cret", first) and check_secret("s3cret", second)
    assert not check_secret("s3cre", first)
    assert not check_secret("s3cret", "md5$nope")


def test_key_format_and_storage(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    record, key = store.create(name="ci", models=["smollm2"], scope=Scope.all)
    assert key.startswith(f"gpustack_{record.id}_")
    assert split_key(key) == (record.id, key.split("_", 2)[2])
    raw = (tmp_path / "keys.json").read_text()
    assert key.split("_", 2)[2] not in raw  # only the hash is stored
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    assert [k.name for k in store.load()] == ["ci"]


def test_verify_accepts_only_valid_live_keys(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    auth = Authenticator(store)
    assert not auth.enabled
    record, key = store.create(name="a", models=["m1"])
    assert auth.enabled
    assert auth.cached(key) is None  # never verified: only `verify` may hash it
    who = auth.verify(key)
    assert who is not None and who.name == "a" and who.scope == Scope.inference
    assert who.may_use("m1") and not who.may_use("m2")
    assert who.may(Scope.inference) and not who.may(Scope.management)
    assert auth.cached(key) is not None  # verified once: known without hashing again
    assert auth.verify(key)
    assert auth.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert auth.verify(f"gpustack_{record.id}_") is None
    assert auth.verify("gpustack_nope_secret") is None
    assert auth.verify("Bearer whatever") is None
    assert auth.verify("") is None and auth.verify(None) is None


def test_revoked_key_stops_working_at_once(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    auth = Authenticator(store)
    record, key = store.create(name="gone")
    _, other = store.create(name="stays")
    assert auth.verify(key)
    time.sleep(0.01)  # a distinct modification time
    assert [k.id for k in store.revoke("gone")] == [record.id]
    assert auth.verify(key) is None and auth.cached(key) is None
    assert auth.verify(other) is not None
    assert store.revoke("gone") == []


def test_expired_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore(tmp_path / "keys.json")
    record, key = store.create(expires_in=60.0)
    assert Authenticator(store).verify(key) is not None
    later = record.expires + 1
    monkeypatch.setattr(time, "time", lambda: later)  # the clock moved past the expiry
    assert record.expired()
    assert Authenticator(store).verify(key) is None


def test_environment_key(tmp_path: Path) -> None:
    auth = Authenticator(KeyStore(tmp_path / "keys.json"), env_key="plain-env-key")
    assert auth.enabled
    who = auth.verify("plain-env-key")
    assert who is not None and who.scope == Scope.all and who.may_use("anything")
    assert auth.cached("plain-env-key") == who
    assert auth.verify("plain-env-kez") is None


def test_revoking_the_last_key_locks_rather_than_opens(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    auth = Authenticator(store)
    _, key = store.create(name="only")
    store.revoke("only")
    assert auth.enabled
    assert auth.verify(key) is None
