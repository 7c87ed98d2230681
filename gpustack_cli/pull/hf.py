"""`hf:org/repo[/FILE-OR-GLOB][@REVISION]` — a file, a glob or a whole repository from Hugging Face.

huggingface_hub lists the repository (with LFS sha256s) and builds the URLs and auth headers, so
`HF_ENDPOINT` and `HF_TOKEN` work as everywhere else; the bytes go through our own downloader so
every source shares one progress display, resume and checksum path.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gpustack_cli.pull.download import Downloader, PullError

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


def fetch_hf(spec: HfSpec, into: Path, downloader: Downloader) -> dict[str, str]:
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import build_hf_headers

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
    headers = build_hf_headers(token=token)
    for sibling in siblings:
        relative = PurePosixPath(sibling.rfilename)
        if relative.is_absolute() or ".." in relative.parts:
            raise PullError(f"hf:{spec.repo}: refusing unsafe path {sibling.rfilename}")
        # A single file lands at the top of the model folder; a glob or a repo keeps its layout.
        target = into / (relative.name if spec.pattern == sibling.rfilename else relative.as_posix())
        url = hf_hub_url(spec.repo, sibling.rfilename, revision=revision, endpoint=endpoint)
        downloader.fetch(
            url,
            target,
            sha256=sibling.lfs.sha256 if sibling.lfs else None,
            size=sibling.size,
            headers=headers,
            label=sibling.rfilename,
        )
    return {"repo": spec.repo, "revision": revision}
