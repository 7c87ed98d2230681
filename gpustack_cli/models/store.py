"""The local model store: one folder and one JSON manifest per model under `GPUSTACK_HOME/models`.

A model exists only once its folder, manifest included, has been renamed into place: pulls build
the folder under `GPUSTACK_HOME/tmp` and move it in with one `os.replace`, so a crash or Ctrl-C
mid-pull never leaves a model that looks complete. Changes that touch several files take a file
lock (the `filelock` package: portable, and already a dependency of huggingface_hub) so two
`gpustack` processes can pull, remove and edit at once.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from pydantic import BaseModel, Field, ValidationError

MANIFEST = "manifest.json"
# Beside each folder a pull is assembling: held while the pull runs.
LOCK_SUFFIX = ".lock"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class Category(StrEnum):
    llm = "llm"
    embedding = "embedding"
    reranker = "reranker"
    image = "image"
    speech_to_text = "speech_to_text"
    text_to_speech = "text_to_speech"


class ModelFile(BaseModel):
    path: str
    size: int
    sha256: str


class Manifest(BaseModel):
    name: str
    source: str
    categories: list[Category]
    engine: str
    files: list[ModelFile]
    created: float = Field(default_factory=time.time)
    # Engine options: context size, GPU layers, chat template override, ...
    options: dict[str, Any] = Field(default_factory=dict)
    # Source extras worth keeping (an Ollama template, the upstream revision, ...).
    metadata: dict[str, Any] = Field(default_factory=dict)
    generic_proxy: bool = False

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def modalities(self) -> list[str]:
        """What the model takes besides text, through its projector: "vision", "audio"."""
        if not self.options.get("mmproj_file"):
            return []
        return list(self.options.get("modalities") or ["vision"])


class StoreError(Exception):
    pass


class ModelNotFound(StoreError):
    def __init__(self, name: str):
        super().__init__(f"model '{name}' is not in the store (see `gpustack list`)")
        self.name = name


class InvalidModelName(StoreError, ValueError):
    """A name no model in the store can have: to a caller of the API, a model that does not exist."""


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise InvalidModelName(f"invalid model name {name!r}: use letters, digits, '.', '_', '-' and ':' (at most 128)")
    return name


def disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def link_or_copy(source: Path, dest: Path, done: Callable[[int], None] | None = None) -> None:
    """`dest` made the same file as `source`: a hard link where the filesystem allows one (no
    copy, and safe if the original goes; a store's files are never changed in place, only
    replaced), else a copy. `done` is told of the bytes as they are placed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
        if done:
            done(source.stat().st_size)
        return
    except OSError:
        pass
    try:
        copy_blocks(source, dest, lambda block: done(len(block)) if done else None)
    except OSError as exc:
        if disk_full(exc):
            raise StoreError(f"{source.name}: disk full while copying") from exc
        raise


def copy_blocks(source: Path, dest: Path, each: Callable[[bytes], None]) -> None:
    """Copy `source` to `dest` a megabyte at a time, handing each block to `each` as it is
    written (to count or hash it); a copy that fails leaves no `dest` behind."""
    try:
        with source.open("rb") as src, dest.open("wb") as out:
            while block := src.read(1024 * 1024):
                out.write(block)
                each(block)
    except OSError:
        dest.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, fsync it, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelStore:
    def __init__(self, home: Path):
        self.home = home
        self.models_dir = home / "models"
        self.tmp_dir = home / "tmp"
        self._lock = FileLock(str(home / "store.lock"))
        # Parsed manifests by name (with their file's path), kept while the file's (mtime, size)
        # stays the same: the server looks a model up on every request, so one stat is the cost.
        self._cache: dict[str, tuple[str, tuple[int, int], Manifest]] = {}

    def _ensure(self) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with self._lock:
            yield

    def model_dir(self, name: str) -> Path:
        # ':' is not allowed in Windows paths; '@' is not allowed in model names.
        return self.models_dir / check_name(name).replace(":", "@")

    def get(self, name: str) -> Manifest:
        cached = self._cache.get(name)
        path = cached[0] if cached else str(self.model_dir(name) / MANIFEST)
        try:
            stat = os.stat(path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if cached and cached[1] == stamp:
                return cached[2]
            manifest = Manifest.model_validate_json(Path(path).read_bytes())
        except FileNotFoundError:
            raise ModelNotFound(name) from None
        except ValidationError as exc:
            raise StoreError(f"manifest of '{name}' is damaged: {exc}") from exc
        self._cache[name] = (path, stamp, manifest)
        return manifest

    def exists(self, name: str) -> bool:
        return (self.model_dir(name) / MANIFEST).is_file()

    def list(self) -> list[Manifest]:
        if not self.models_dir.is_dir():
            return []
        manifests = []
        for entry in sorted(self.models_dir.iterdir()):
            path = entry / MANIFEST
            if not path.is_file():
                continue
            try:
                manifests.append(Manifest.model_validate_json(path.read_bytes()))
            except ValidationError:
                continue  # A damaged manifest must not hide every other model.
        return manifests

    @contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A fresh folder to assemble a model in; removed on any failure or interruption.

        The folder is held by a lock file beside it for as long as it is in use, so that one
        left by a pull that was killed (no `finally` runs then) is known as abandoned and swept
        away by the next pull or server start, while other processes' pulls are left alone."""
        check_name(name)
        self._ensure()
        self.sweep()
        folder = self.tmp_dir / f"{name.replace(':', '@')}.{uuid.uuid4().hex[:8]}"
        lock_path = Path(str(folder) + LOCK_SUFFIX)
        try:
            with FileLock(str(lock_path)):
                folder.mkdir()
                try:
                    yield folder
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
        finally:
            lock_path.unlink(missing_ok=True)

    def sweep(self) -> list[Path]:
        """Remove what killed pulls and removals left in the store's tmp folder; the removed."""
        swept: list[Path] = []
        if not self.tmp_dir.is_dir():
            return swept
        for entry in self.tmp_dir.iterdir():
            if entry.name.endswith(LOCK_SUFFIX):
                continue
            lock_path = Path(str(entry) + LOCK_SUFFIX)
            lock = FileLock(str(lock_path), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                continue  # a pull in another process is assembling it
            try:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                swept.append(entry)
            finally:
                lock.release()
                lock_path.unlink(missing_ok=True)
        return swept

    def commit(self, staged: Path, manifest: Manifest, replace: bool = False) -> Manifest:
        """Write the manifest into `staged` and move the folder into place as model `manifest.name`."""
        write_atomic(staged / MANIFEST, manifest.model_dump_json(indent=2).encode())
        target = self.model_dir(manifest.name)
        with self.locked():
            if target.exists():
                if not replace:
                    raise StoreError(f"model '{manifest.name}' already exists (remove it, or pull with --force)")
                trash = self.tmp_dir / f"{target.name}.old.{uuid.uuid4().hex[:8]}"
                os.replace(target, trash)
                os.replace(staged, target)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(staged, target)
        return manifest

    def update(self, name: str, **changes: Any) -> Manifest:
        with self.locked():
            manifest = self.get(name).model_copy(update=changes)
            manifest = Manifest.model_validate(manifest.model_dump())
            write_atomic(self.model_dir(name) / MANIFEST, manifest.model_dump_json(indent=2).encode())
        return manifest

    def copy(self, source: str, target: str) -> Manifest:
        """Model `source` again under the name `target`, sharing its files (hard links), copied
        where links cannot be made."""
        manifest = self.get(source)
        check_name(target)
        if self.exists(target):
            raise StoreError(f"model '{target}' already exists (remove it first)")
        with self.staging(target) as folder:
            for entry in self.model_dir(source).rglob("*"):
                if entry.is_file() and entry.name != MANIFEST:
                    link_or_copy(entry, folder / entry.relative_to(self.model_dir(source)))
            return self.commit(folder, manifest.model_copy(update={"name": target, "created": time.time()}))

    def remove(self, name: str) -> None:
        with self.locked():
            target = self.model_dir(name)
            if not (target / MANIFEST).is_file():
                raise ModelNotFound(name)
            self._ensure()
            # Rename first so the model vanishes at once even if deleting its files takes long.
            trash = self.tmp_dir / f"{target.name}.rm.{uuid.uuid4().hex[:8]}"
            os.replace(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
