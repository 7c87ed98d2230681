"""`hf:org/repo[/FILE-OR-GLOB][@REVISION]` — a file, a glob or a whole repository from Hugging Face.

Downloads go through huggingface_hub itself (`hf_hub_download`), into the user's Hugging Face
cache: a file already there is not downloaded again, xet-backed repositories download as
huggingface_hub does, and `HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME` and `HF_HUB_CACHE` work as
everywhere else. The store then links each file to the cached one (a hard link: one copy on disk
for both), copying only where the two are on different filesystems. Files the repository lists
with an LFS sha256 are checked against it.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gpustack_cli.models.pull.download import ChecksumError, ProgressReporter, PullError, sha256_file
from gpustack_cli.models.store import link_or_copy

# Repository housekeeping that is never part of a model.
_SKIP = (".gitattributes", ".gitignore")


@dataclass
class HfSpec:
    repo: str
    pattern: str | None
    revision: str

    @classmethod
    def parse(cls, text: str) -> HfSpec:
        body, _, revision = text.partition("@")
        parts = [p for p in body.strip("/").split("/") if p]
        if len(parts) < 2:
            raise PullError(f"hf:{text}: expected hf:ORG/REPO[/FILE-OR-GLOB][@REVISION]")
        pattern = "/".join(parts[2:]) or None
        return cls(repo="/".join(parts[:2]), pattern=pattern, revision=revision or "main")

    @property
    def default_name(self) -> str:
        if self.pattern and not any(c in self.pattern for c in "*?["):
            return PurePosixPath(self.pattern).stem.lower()
        return self.repo.split("/")[1].lower()


def hf_cache() -> Path | None:
    """The Hugging Face cache as the environment names it now (huggingface_hub reads it once, at
    import); None for its default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return None


def _bars(progress: ProgressReporter) -> type:
    """A tqdm class that draws huggingface_hub's download bars with our progress display."""
    from tqdm.auto import tqdm

    class Bar(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any):
            self._task = None
            total, label = kwargs.get("total"), kwargs.get("desc") or "download"
            kwargs["disable"] = True  # tqdm draws nothing; the updates come to us
            super().__init__(*args, **kwargs)
            self._task = progress.task(str(label), total)
            self._advance: Callable[[int], None] = self._task.__enter__()
            if kwargs.get("initial"):
                self._advance(int(kwargs["initial"]))

        def update(self, n: float | None = 1) -> bool | None:
            if self._task is not None and n:
                self._advance(int(n))
            return None

        def close(self) -> None:
            task, self._task = self._task, None
            if task is not None:
                task.__exit__(None, None, None)

    return Bar


def fetch_hf(spec: HfSpec, into: Path, progress: ProgressReporter) -> dict[str, str]:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = os.environ.get("HF_ENDPOINT") or None
    token = os.environ.get("HF_TOKEN") or None
    api = HfApi(endpoint=endpoint, token=token)
    try:
        info = api.model_info(spec.repo, revision=spec.revision, files_metadata=True)
    except RevisionNotFoundError as exc:
        raise PullError(f"hf:{spec.repo}: revision '{spec.revision}' not found") from exc
    except RepositoryNotFoundError as exc:
        raise PullError(f"hf:{spec.repo}: repository not found (or private: set HF_TOKEN)") from exc
    except HfHubHTTPError as exc:
        raise PullError(f"hf:{spec.repo}: {exc}") from exc
    siblings = [s for s in info.siblings or [] if s.rfilename not in _SKIP]
    if spec.pattern:
        siblings = [
            s
            for s in siblings
            if s.rfilename == spec.pattern
            or fnmatch.fnmatch(s.rfilename, spec.pattern)
            or s.rfilename.startswith(spec.pattern.rstrip("/") + "/")
        ]
    if not siblings:
        raise PullError(f"hf:{spec.repo}: no file matches '{spec.pattern}'")
    revision = info.sha or spec.revision
    for sibling in siblings:
        relative = PurePosixPath(sibling.rfilename)
        if relative.is_absolute() or ".." in relative.parts:
            raise PullError(f"hf:{spec.repo}: refusing unsafe path {sibling.rfilename}")
        try:
            cached = hf_hub_download(
                spec.repo,
                sibling.rfilename,
                revision=revision,
                endpoint=endpoint,
                token=token,
                cache_dir=hf_cache(),
                tqdm_class=_bars(progress),
            )
        except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError) as exc:
            raise PullError(f"hf:{spec.repo}/{sibling.rfilename}: {exc}") from exc
        blob = Path(os.path.realpath(cached))
        if sibling.lfs and sibling.lfs.sha256:
            with progress.task(f"verify {relative.name}", blob.stat().st_size) as done:
                got = sha256_file(blob, done)
            if got != sibling.lfs.sha256:
                raise ChecksumError(
                    f"hf:{spec.repo}/{sibling.rfilename}: the cached file's sha256 {got} is not the repository's "
                    f"{sibling.lfs.sha256}; delete it from the Hugging Face cache and pull again"
                )
        # A single file lands at the top of the model folder; a glob or a repo keeps its layout.
        link_or_copy(blob, into / (relative.name if spec.pattern == sibling.rfilename else relative.as_posix()))
    return {"repo": spec.repo, "revision": revision}
