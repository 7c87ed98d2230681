"""`ollama:[NAMESPACE/]MODEL[:TAG]` — a GGUF model from an Ollama registry (OCI distribution API).

The manifest's layers are blobs addressed by sha256 digest, so each is verified as it lands. The
model layer becomes `model.gguf`; a vision projector `mmproj.gguf`; the template, system prompt
and parameters are kept in the manifest's metadata (the Go template is Ollama's, not Jinja, and
is kept for reference: llama.cpp uses the template inside the GGUF).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpustack_cli.models.pull.download import Downloader, PullError

MANIFEST_TYPES = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
LAYER_FILES = {
    "application/vnd.ollama.image.model": "model.gguf",
    "application/vnd.ollama.image.projector": "mmproj.gguf",
}
LAYER_TEXT = {
    "application/vnd.ollama.image.template": "template",
    "application/vnd.ollama.image.system": "system",
    "application/vnd.ollama.image.license": "license",
    "application/vnd.ollama.image.params": "params",
}
# Layers kept small enough to live in the manifest; anything larger is not metadata.
TEXT_LIMIT = 1024 * 1024


@dataclass
class OllamaSpec:
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> OllamaSpec:
        path, _, tag = text.partition(":")
        parts = [p for p in path.strip("/").split("/") if p]
        if not parts or len(parts) > 2:
            raise PullError(f"ollama:{text}: expected ollama:[NAMESPACE/]MODEL[:TAG]")
        namespace = parts[0] if len(parts) == 2 else "library"
        return cls(namespace=namespace, model=parts[-1], tag=tag or "latest")

    @property
    def default_name(self) -> str:
        return self.model if self.tag == "latest" else f"{self.model}:{self.tag}"


def fetch_ollama(spec: OllamaSpec, registry: str, into: Path, downloader: Downloader) -> dict[str, Any]:
    base = f"{registry.rstrip('/')}/v2/{spec.namespace}/{spec.model}"
    response = downloader.client.get(f"{base}/manifests/{spec.tag}", headers={"Accept": MANIFEST_TYPES})
    if response.status_code == 404:
        raise PullError(f"ollama:{spec.namespace}/{spec.model}:{spec.tag}: not found in {registry}")
    if response.status_code >= 400:
        raise PullError(f"ollama registry {registry} answered HTTP {response.status_code}")
    try:
        layers = response.json()["layers"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PullError(f"ollama registry {registry} sent a manifest without layers") from exc
    metadata: dict[str, Any] = {"registry": registry, "reference": f"{spec.namespace}/{spec.model}:{spec.tag}"}
    if not any(layer.get("mediaType") in LAYER_FILES for layer in layers):
        raise PullError(f"ollama:{spec.model}: the manifest has no model layer")
    for layer in layers:
        kind, digest, size = layer.get("mediaType"), str(layer.get("digest", "")), layer.get("size")
        if not digest.startswith("sha256:"):
            raise PullError(f"ollama:{spec.model}: layer with unsupported digest {digest!r}")
        url, sha = f"{base}/blobs/{digest}", digest.removeprefix("sha256:")
        if kind in LAYER_FILES:
            downloader.fetch(url, into / LAYER_FILES[kind], sha256=sha, size=size, label=LAYER_FILES[kind])
        elif kind in LAYER_TEXT and (size or 0) <= TEXT_LIMIT:
            target = into / f".{LAYER_TEXT[kind]}"
            downloader.fetch(url, target, sha256=sha, size=size, label=LAYER_TEXT[kind])
            text = target.read_text(errors="replace")
            target.unlink()
            metadata[LAYER_TEXT[kind]] = json.loads(text) if kind.endswith(".params") else text
    return metadata


def options_from_params(params: dict[str, Any]) -> dict[str, Any]:
    """Ollama's `params` layer, as engine options (stop words and sampling defaults)."""
    mapping = {"num_ctx": "n_ctx", "stop": "stop", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k"}
    return {ours: params[theirs] for theirs, ours in mapping.items() if theirs in params}
