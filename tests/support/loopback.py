"""A real HTTP server on 127.0.0.1 that lays out files as PyPI, Hugging Face, the Ollama registry
and a plain file host do, so pull sources are tested over real sockets with their real client.

It can also misbehave on demand: drop the connection part-way, ignore `Range`, or go slowly.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
import zipfile
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Served:
    data: bytes
    # Close the connection after this many bytes, once (then serve normally).
    drop_after: int | None = None
    ignore_range: bool = False
    # Seconds to sleep between 64 KiB chunks.
    delay: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(dist: str, version: str, files: dict[str, bytes]) -> tuple[str, bytes]:
    """A wheel named as pip names them, holding `files` plus the code and metadata a wheel has."""
    package = dist.replace("-", "_")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{package}/__init__.py", "")
        for path, data in files.items():
            archive.writestr(f"{package}/{path}", data)
        archive.writestr(f"{package}-{version}.dist-info/METADATA", f"Name: {dist}\nVersion: {version}\n")
        archive.writestr(f"{package}-{version}.dist-info/RECORD", "")
    return f"{package}-{version}-py3-none-any.whl", buffer.getvalue()


class BackgroundApp:
    """An aiohttp app served on a free 127.0.0.1 port from a thread of its own, so that blocking
    test code (and subprocesses) can call it; `stop` shuts it down."""

    def __init__(self, app: web.Application, **runner_options: Any):
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, **runner_options)
        ready = threading.Event()

        async def run() -> None:
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", 0).start()
            ready.set()

        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(run(), self._loop)
        if not ready.wait(10):
            raise RuntimeError("test server did not start")
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@dataclass
class LoopbackServer:
    files: dict[str, Served] = field(default_factory=dict)
    # project -> list of wheel file names (served from /files/)
    projects: dict[str, list[str]] = field(default_factory=dict)
    # "org/repo" -> {path: bytes}
    hf_repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    # "ns/model:tag" -> manifest
    ollama: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    # wheel file name -> the sha256 the index claims for it (to test that pulls check it)
    advertised_sha: dict[str, str] = field(default_factory=dict)
    json_index: bool = True
    url: str = ""

    # -- content -------------------------------------------------------------------------

    def add_file(self, name: str, data: bytes, **behaviour: Any) -> str:
        self.files[name] = Served(data, **behaviour)
        return f"{self.url}/files/{name}"

    def add_wheel(self, dist: str, version: str, files: dict[str, bytes]) -> str:
        filename, data = make_wheel(dist, version, files)
        self.add_file(filename, data)
        self.projects.setdefault(dist.lower().replace("_", "-"), []).append(filename)
        return filename

    def add_ollama(self, ref: str, layers: list[tuple[str, bytes]]) -> None:
        entries = []
        for media_type, data in layers:
            digest = f"sha256:{sha256(data)}"
            self.files[digest] = Served(data)
            entries.append({"mediaType": media_type, "digest": digest, "size": len(data)})
        self.ollama[ref] = {"schemaVersion": 2, "layers": entries}

    # -- handlers ------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> None:
        self.requests.append(Recorded(request.method, request.path_qs, dict(request.headers)))

    async def _serve(self, request: web.Request, name: str) -> web.StreamResponse:
        served = self.files.get(name)
        if served is None:
            raise web.HTTPNotFound()
        data, start = served.data, 0
        header = request.headers.get("Range", "")
        if header.startswith("bytes=") and not served.ignore_range:
            start = int(header[6:].split("-")[0])
            if start >= len(data):
                return web.Response(status=416)
        response = web.StreamResponse(status=206 if start else 200)
        response.content_length = len(data) - start
        response.headers["Accept-Ranges"] = "bytes"
        if start:
            response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await response.prepare(request)
        sent = start
        for offset in range(start, len(data), 65536):
            chunk = data[offset : offset + 65536]
            if served.drop_after is not None and sent + len(chunk) > served.drop_after:
                await response.write(chunk[: served.drop_after - sent])
                served.drop_after = None
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(chunk)
            sent += len(chunk)
            if served.delay:
                await asyncio.sleep(served.delay)
        await response.write_eof()
        return response

    async def file(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return await self._serve(request, request.match_info["name"])

    async def simple(self, request: web.Request) -> web.Response:
        await self._record(request)
        wheels = self.projects.get(request.match_info["project"])
        if wheels is None:
            raise web.HTTPNotFound()
        if self.json_index and "application/vnd.pypi.simple.v1+json" in request.headers.get("Accept", ""):
            files = [
                {
                    "filename": w,
                    "url": f"/files/{w}",
                    "hashes": {"sha256": self._sha(w)},
                    "size": len(self.files[w].data),
                }
                for w in wheels
            ]
            return web.json_response(
                {"meta": {"api-version": "1.1"}, "files": files}, content_type="application/vnd.pypi.simple.v1+json"
            )
        links = "".join(f'<a href="../../files/{w}#sha256={self._sha(w)}">{w}</a>' for w in wheels)
        return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")

    def _sha(self, wheel: str) -> str:
        return self.advertised_sha.get(wheel) or sha256(self.files[wheel].data)

    async def hf_info(self, request: web.Request) -> web.Response:
        await self._record(request)
        repo = f"{request.match_info['org']}/{request.match_info['repo']}"
        if repo not in self.hf_repos:
            return web.json_response(
                {"error": "Repository not found"}, status=404, headers={"X-Error-Code": "RepoNotFound"}
            )
        siblings = []
        for path, data in self.hf_repos[repo].items():
            sibling: dict[str, Any] = {"rfilename": path, "size": len(data), "blobId": sha256(data)[:40]}
            if len(data) > 100:
                sibling["lfs"] = {"sha256": sha256(data), "size": len(data), "pointerSize": 130}
            siblings.append(sibling)
        return web.json_response({"id": repo, "sha": "0" * 40, "siblings": siblings})

    async def hf_file(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        repo = f"{request.match_info['org']}/{request.match_info['repo']}"
        data = self.hf_repos.get(repo, {}).get(request.match_info["path"])
        if data is None:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"})
        # What huggingface_hub reads of a file before it downloads: the commit, and the ETag that
        # names the blob in its cache (an LFS file's sha256).
        tag = sha256(data) if len(data) > 100 else sha256(data)[:40]
        headers = {"X-Repo-Commit": "0" * 40, "ETag": f'"{tag}"', "Content-Length": str(len(data))}
        if request.method == "HEAD":
            return web.Response(headers=headers)
        self.files.setdefault(f"hf:{repo}:{request.match_info['path']}", Served(data))
        return await self._serve(request, f"hf:{repo}:{request.match_info['path']}")

    async def ollama_manifest(self, request: web.Request) -> web.Response:
        await self._record(request)
        info = request.match_info
        manifest = self.ollama.get(f"{info['ns']}/{info['model']}:{info['tag']}")
        if manifest is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        return web.json_response(manifest, content_type="application/vnd.docker.distribution.manifest.v2+json")

    async def ollama_blob(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return await self._serve(request, request.match_info["digest"])

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> LoopbackServer:
        app = web.Application()
        app.router.add_get("/files/{name}", self.file)
        app.router.add_get("/simple/{project}/", self.simple)
        app.router.add_get("/api/models/{org}/{repo}/revision/{rev}", self.hf_info)
        app.router.add_get("/{org}/{repo}/resolve/{rev}/{path:.+}", self.hf_file)
        app.router.add_get("/v2/{ns}/{model}/manifests/{tag}", self.ollama_manifest)
        app.router.add_get("/v2/{ns}/{model}/blobs/{digest}", self.ollama_blob)
        self._server = BackgroundApp(app)
        self.url = self._server.url
        return self

    def stop(self) -> None:
        self._server.stop()
