"""API keys: `gpustack_<id>_<secret>`, stored as an scrypt hash of the secret, looked up by id.

scrypt comes with Python's hashlib, so a slow, salted hash needs no extra dependency. Verifying a
slow hash on every request would cost tens of milliseconds, so a key that verified once is
remembered in memory only, by a fast keyed digest of the whole key, until the key file changes.
A wrong key costs the server a slow hash each time, so the server hashes a few at a time and
`Throttle` turns away a client address or key id after repeated failures.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from filelock import FileLock
from pydantic import BaseModel, Field, TypeAdapter

from gpustack_cli.models.store import write_atomic

PREFIX = "gpustack"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class Scope(StrEnum):
    inference = "inference"
    management = "management"
    all = "all"


class ApiKey(BaseModel):
    id: str
    name: str = ""
    hash: str
    created: float = Field(default_factory=time.time)
    expires: float | None = None
    # Empty means every model.
    models: list[str] = Field(default_factory=list)
    scope: Scope = Scope.inference

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (now or time.time()) >= self.expires


_KEYS = TypeAdapter(list[ApiKey])


def hash_secret(secret: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt).decode()}${b64(digest).decode()}"


def check_secret(secret: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if algo != "scrypt":
        return False
    expected = base64.b64decode(digest)
    got = hashlib.scrypt(
        secret.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
    )
    return hmac.compare_digest(got, expected)


def split_key(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class KeyStore:
    def __init__(self, path: Path):
        self.path = path
        self._file = str(path)
        self._lock = FileLock(self._file + ".lock")

    def load(self) -> list[ApiKey]:
        try:
            return _KEYS.validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return []

    def _save(self, keys: list[ApiKey]) -> None:
        write_atomic(self.path, _KEYS.dump_json(keys, indent=2))
        os.chmod(self.path, 0o600)

    def create(
        self,
        name: str = "",
        expires_in: float | None = None,
        models: list[str] | None = None,
        scope: Scope = Scope.inference,
    ) -> tuple[ApiKey, str]:
        """A new key; returns the record and the full key, which is shown once and never stored."""
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        record = ApiKey(
            id=key_id,
            name=name,
            hash=hash_secret(secret),
            expires=time.time() + expires_in if expires_in else None,
            models=models or [],
            scope=scope,
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._save([*self.load(), record])
        return record, f"{PREFIX}_{key_id}_{secret}"

    def revoke(self, id_or_name: str) -> list[ApiKey]:
        with self._lock:
            keys = self.load()
            gone = [k for k in keys if id_or_name in (k.id, k.name)]
            if gone:
                self._save([k for k in keys if k not in gone])
        return gone

    def mtime(self) -> float | None:
        """When the key file last changed; None while no key was ever created."""
        try:
            return os.stat(self._file).st_mtime  # a plain string: checked on every request
        except FileNotFoundError:
            return None


@dataclass(frozen=True)
class Principal:
    """Who made a request: the key's name, what it may do and on which models; `key_id` tells
    keys apart (names need not be unique), and owns what the key stores on the server."""

    name: str
    scope: Scope
    models: tuple[str, ...] = ()
    key_id: str = ""

    def may_use(self, model: str) -> bool:
        return not self.models or model in self.models

    def may(self, scope: Scope) -> bool:
        return self.scope in (Scope.all, scope)


class Authenticator:
    def __init__(self, store: KeyStore, env_key: str | None = None):
        self.store = store
        self.env_key = env_key
        self._lock = threading.Lock()
        self._mtime: float | None = -1.0
        self._keys: dict[str, ApiKey] = {}
        # Keys verified once, by a digest keyed with a secret of this process (so that the table
        # says nothing of the keys to whoever reads this process's memory without it).
        self._verified: dict[bytes, str] = {}
        self._pepper = secrets.token_bytes(32)

    def _refresh(self) -> None:
        mtime = self.store.mtime()
        if mtime != self._mtime:
            self._keys = {k.id: k for k in self.store.load()}
            self._verified.clear()
            self._mtime = mtime

    @property
    def enabled(self) -> bool:
        """Whether keys are in force. Once a key file exists it stays in force even after the last
        key is revoked: revoking every key locks the server rather than opening it."""
        with self._lock:
            self._refresh()
            return bool(self.env_key) or self._mtime is not None

    def cached(self, token: str) -> Principal | None:
        """As `verify`, but only for the environment's key and keys verified before: no scrypt
        hash, so it is cheap enough for the event loop. None means "ask `verify`"."""
        return self._check(token, hash_new=False)

    def verify(self, token: str | None) -> Principal | None:
        """The principal for a presented key, or None for a missing, wrong, revoked or expired key."""
        return self._check(token, hash_new=True) if token else None

    def _check(self, token: str, hash_new: bool) -> Principal | None:
        try:
            raw = token.encode()
        except UnicodeEncodeError:  # bytes a header held that are not UTF-8: no key of ours
            return None
        if self.env_key and hmac.compare_digest(raw, self.env_key.encode()):
            return Principal(name="GPUSTACK_API_KEY", scope=Scope.all, key_id="env")
        parts = split_key(token)
        if parts is None:
            return None
        key_id, secret = parts
        fast = hmac.digest(self._pepper, raw, "sha256")
        with self._lock:
            self._refresh()
            record = self._keys.get(key_id)
            known = self._verified.get(fast) == key_id
        if record is None or record.expired():
            return None
        if not known:
            if not hash_new or not check_secret(secret, record.hash):
                return None
            with self._lock:
                self._verified[fast] = key_id
        return Principal(
            name=record.name or record.id, scope=record.scope, models=tuple(record.models), key_id=record.id
        )


class Throttle:
    """Failed key checks, per subject (a client address, a key id): past `limit` failures within
    `window` seconds a subject is turned away until the oldest of them is that old."""

    # Subjects kept at most; the idle ones are forgotten first.
    MAX_SUBJECTS = 10_000

    def __init__(self, limit: int = 20, window: float = 60.0):
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, subjects: list[str], now: float | None = None) -> float:
        """Seconds before any of `subjects` may try again; 0 when all may now."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for subject in subjects:
            times = self._failures.get(subject)
            if times is None:
                continue
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) >= self.limit:
                wait = max(wait, times[0] + self.window - now)
        return wait

    def failed(self, subjects: list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._failures) >= self.MAX_SUBJECTS:
            self._failures = {s: t for s, t in self._failures.items() if t and t[-1] > now - self.window}
        for subject in subjects:
            self._failures.setdefault(subject, deque(maxlen=self.limit)).append(now)
