"""Resumable, checksummed downloads over HTTP(S) and file:// with progress reporting.

httpx (already needed by huggingface_hub) streams the body; an interrupted download keeps its
`.part` file under `GPUSTACK_HOME/downloads` and the next attempt asks for the rest with a
`Range` header. A checksum or size mismatch, a full disk or a refused request deletes the part:
only an interruption keeps it.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import httpx
from filelock import FileLock

from gpustack_cli import __version__
from gpustack_cli.models.store import copy_blocks, disk_full

CHUNK = 1024 * 1024
RETRIES = 3


class PullError(Exception):
    """A pull failed; the message is meant for the user."""


class ChecksumError(PullError):
    pass


class ProgressReporter(Protocol):
    def task(self, description: str, total: int | None) -> AbstractContextManager[Callable[[int], None]]:
        """A context whose value is called with each number of bytes done."""


class NoProgress:
    def task(self, description: str, total: int | None) -> AbstractContextManager[Callable[[int], None]]:
        return nullcontext(lambda _n: None)


def http_client(headers: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(60.0, connect=30.0),
        headers={"User-Agent": f"gpustack/{__version__}", **(headers or {})},
    )


def sha256_file(path: Path, done: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
            if done:
                done(len(block))
    return digest.hexdigest()


def _check(path: Path, got_sha: str, got_size: int, sha256: str | None, size: int | None, what: str) -> None:
    if size is not None and got_size != size:
        path.unlink(missing_ok=True)
        raise ChecksumError(f"{what}: expected {size} bytes, got {got_size}")
    if sha256 and got_sha != sha256.lower():
        path.unlink(missing_ok=True)
        raise ChecksumError(f"{what}: sha256 mismatch (expected {sha256}, got {got_sha})")


class Downloader:
    """Downloads into `downloads_dir`, keyed by checksum (or URL), and hands back verified files."""

    def __init__(self, downloads_dir: Path, progress: ProgressReporter, client: httpx.Client | None = None):
        self.dir = downloads_dir
        self.progress = progress
        self.client = client or http_client()

    def fetch(
        self,
        url: str,
        dest: Path,
        *,
        sha256: str | None = None,
        size: int | None = None,
        headers: dict[str, str] | None = None,
        label: str | None = None,
    ) -> str:
        """Download `url` to `dest` (moved there once verified); returns the sha256 of the file."""
        label = label or dest.name
        key = sha256 or hashlib.sha256(url.encode()).hexdigest()
        self.dir.mkdir(parents=True, exist_ok=True)
        part = self.dir / f"{key[:32]}.part"
        # Two processes pulling the same file take turns instead of writing one part twice.
        with FileLock(str(part) + ".lock"):
            if url.startswith("file:"):
                digest = self._copy_local(Path(unquote(urlparse(url).path)), part, size, label)
            else:
                digest = self._fetch_http(url, part, size, headers or {}, label)
            _check(part, digest, part.stat().st_size, sha256, size, label)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(part, dest)
        return digest

    def _copy_local(self, source: Path, part: Path, size: int | None, label: str) -> str:
        if not source.is_file():
            raise PullError(f"{label}: not found: {source}")
        digest = hashlib.sha256()

        def hashed(block: bytes) -> None:
            digest.update(block)
            done(len(block))

        try:
            with self.progress.task(label, size or source.stat().st_size) as done:
                copy_blocks(source, part, hashed)
        except OSError as exc:
            if disk_full(exc):
                raise PullError(f"{label}: disk full while copying") from exc
            raise
        return digest.hexdigest()

    def _fetch_http(self, url: str, part: Path, size: int | None, headers: dict[str, str], label: str) -> str:
        for attempt in range(1, RETRIES + 1):
            try:
                return self._fetch_once(url, part, size, headers, label)
            except (httpx.TransportError, _ShortRead) as exc:
                if attempt == RETRIES:
                    raise PullError(f"{label}: download failed after {RETRIES} attempts: {exc}") from exc
        raise AssertionError("unreachable")

    def _fetch_once(self, url: str, part: Path, size: int | None, headers: dict[str, str], label: str) -> str:
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset > size:
            part.unlink()
            offset = 0
        request_headers = dict(headers)
        if offset:
            request_headers["Range"] = f"bytes={offset}-"
        with self.client.stream("GET", url, headers=request_headers) as response:
            if response.status_code == 416 and offset and offset == size:
                return sha256_file(part)
            if response.status_code == 416:
                part.unlink(missing_ok=True)
                raise _ShortRead("the server refused to resume; starting over")
            _raise_for_status(response, label)
            if response.status_code != 206:
                offset = 0  # The server ignored the range: start again from the first byte.
            total = size or _content_total(response, offset)
            digest = hashlib.sha256()
            mode = "ab" if offset else "wb"
            if offset:
                with part.open("rb") as existing:
                    while block := existing.read(CHUNK):
                        digest.update(block)
            try:
                with self.progress.task(label, total) as done, part.open(mode) as out:
                    done(offset)
                    for block in response.iter_bytes():
                        out.write(block)
                        digest.update(block)
                        done(len(block))
            except OSError as exc:
                if disk_full(exc):
                    part.unlink(missing_ok=True)
                    raise PullError(f"{label}: disk full while downloading") from exc
                raise
        got = part.stat().st_size
        if total is not None and got < total:
            raise _ShortRead(f"connection closed at {got} of {total} bytes")
        return digest.hexdigest()


class _ShortRead(Exception):
    pass


def _content_total(response: httpx.Response, offset: int) -> int | None:
    length = response.headers.get("content-length")
    # With compression the length is of the encoded body, not of the file.
    if length is None or response.headers.get("content-encoding"):
        return None
    return offset + int(length)


def _raise_for_status(response: httpx.Response, label: str) -> None:
    status = response.status_code
    if status < 400:
        return
    if status == 404:
        raise PullError(f"{label}: not found (HTTP 404 from {response.url})")
    if status in (401, 403):
        raise PullError(f"{label}: access denied (HTTP {status} from {response.url}); check your token")
    raise PullError(f"{label}: HTTP {status} from {response.url}")
