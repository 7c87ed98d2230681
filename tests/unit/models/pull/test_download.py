import errno
import hashlib
import os
from pathlib import Path

import pytest

from gpustack_cli.models.pull.download import ChecksumError, Downloader, NoProgress, PullError
from tests.support.loopback import LoopbackServer

DATA = os.urandom(700_000)
SHA = hashlib.sha256(DATA).hexdigest()


def downloader(tmp_path: Path) -> Downloader:
    return Downloader(tmp_path / "downloads", NoProgress())


def test_plain_download_checks_sha_and_size(tmp_path: Path, loopback: LoopbackServer) -> None:
    url = loopback.add_file("m.bin", DATA)
    digest = downloader(tmp_path).fetch(url, tmp_path / "out" / "m.bin", sha256=SHA, size=len(DATA))
    assert digest == SHA
    assert (tmp_path / "out" / "m.bin").read_bytes() == DATA
    assert not list((tmp_path / "downloads").glob("*.part"))


def test_dropped_connection_resumes_with_range(tmp_path: Path, loopback: LoopbackServer) -> None:
    url = loopback.add_file("m.bin", DATA, drop_after=300_000)
    downloader(tmp_path).fetch(url, tmp_path / "m.bin", sha256=SHA)
    assert (tmp_path / "m.bin").read_bytes() == DATA
    ranges = [r.headers.get("Range") for r in loopback.requests]
    assert ranges[0] is None
    assert ranges[1] is not None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"


def test_part_left_by_an_earlier_run_is_resumed(tmp_path: Path, loopback: LoopbackServer) -> None:
    url = loopback.add_file("m.bin", DATA)
    parts = tmp_path / "downloads"
    parts.mkdir()
    (parts / f"{SHA[:32]}.part").write_bytes(DATA[:123_456])
    downloader(tmp_path).fetch(url, tmp_path / "m.bin", sha256=SHA, size=len(DATA))
    assert (tmp_path / "m.bin").read_bytes() == DATA
    assert loopback.requests[0].headers["Range"] == "bytes=123456-"


def test_server_ignoring_range_starts_over(tmp_path: Path, loopback: LoopbackServer) -> None:
    url = loopback.add_file("m.bin", DATA, ignore_range=True)
    parts = tmp_path / "downloads"
    parts.mkdir()
    (parts / f"{SHA[:32]}.part").write_bytes(b"garbage" * 1000)
    downloader(tmp_path).fetch(url, tmp_path / "m.bin", sha256=SHA)
    assert (tmp_path / "m.bin").read_bytes() == DATA


def test_checksum_mismatch_keeps_nothing(tmp_path: Path, loopback: LoopbackServer) -> None:
    url = loopback.add_file("m.bin", DATA)
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        downloader(tmp_path).fetch(url, tmp_path / "m.bin", sha256="0" * 64)
    assert not (tmp_path / "m.bin").exists()
    assert not list((tmp_path / "downloads").glob("*.part"))


def test_size_mismatch(tmp_path: Path, loopback: LoopbackServer) -> None:
    url = loopback.add_file("m.bin", DATA)
    with pytest.raises(ChecksumError, match="expected 5 bytes"):
        downloader(tmp_path).fetch(url, tmp_path / "m.bin", size=5)


def test_not_found(tmp_path: Path, loopback: LoopbackServer) -> None:
    with pytest.raises(PullError, match="not found"):
        downloader(tmp_path).fetch(f"{loopback.url}/files/missing", tmp_path / "m.bin")


def test_connection_refused(tmp_path: Path) -> None:
    with pytest.raises(PullError, match="failed after 3 attempts"):
        downloader(tmp_path).fetch("http://127.0.0.1:9/x", tmp_path / "m.bin")


def test_disk_full_deletes_the_part(tmp_path: Path, loopback: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """No real disk fills up in a test: the file write is made to fail the way a full disk fails."""
    url = loopback.add_file("m.bin", DATA)
    real_open = Path.open

    def full_disk_open(self: Path, mode: str = "r", *args, **kwargs):
        handle = real_open(self, mode, *args, **kwargs)
        if (self.suffix == ".part" and "a" in mode) or (self.suffix == ".part" and "w" in mode):

            def write(_data: bytes) -> int:
                raise OSError(errno.ENOSPC, "No space left on device")

            handle.write = write
        return handle

    monkeypatch.setattr(Path, "open", full_disk_open)
    with pytest.raises(PullError, match="disk full"):
        downloader(tmp_path).fetch(url, tmp_path / "m.bin")
    assert not list((tmp_path / "downloads").glob("*.part"))


def test_file_url(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(DATA)
    downloader(tmp_path).fetch(source.as_uri(), tmp_path / "m.bin", sha256=SHA)
    assert (tmp_path / "m.bin").read_bytes() == DATA
