"""An app on FakeEngine models (unit tests only), keys for it, and reading its errors."""

from __future__ import annotations

from pathlib import Path

from gpustack_cli.config import Settings
from gpustack_cli.models.store import Category, Manifest, ModelFile, ModelStore
from gpustack_cli.runtime.scheduler import Scheduler
from gpustack_cli.server.context import ServerContext
from gpustack_cli.server.keys import Authenticator, KeyStore
from gpustack_cli.server.metrics import Metrics
from tests.support.fake_engine import FakeLoader
from tests.support.openapi import validate

MODELS = {
    "chat": [Category.llm],
    "embed": [Category.embedding, Category.reranker],
    "qwen2.5:0.5b": [Category.llm],
}


def make_context(home: Path, **settings) -> ServerContext:
    config = Settings.load(home=home, **settings)
    store = ModelStore(home)
    for name, categories in MODELS.items():
        with store.staging(name) as folder:
            (folder / "w.bin").write_bytes(b"w")
            store.commit(
                folder,
                Manifest(
                    name=name,
                    source="test",
                    categories=categories,
                    engine="fake",
                    files=[ModelFile(path="w.bin", size=1, sha256="0" * 64)],
                ),
            )
    scheduler = Scheduler(FakeLoader(), max_queue=0, keep_alive=60)
    auth = Authenticator(KeyStore(config.keys_file), config.api_key)
    return ServerContext(settings=config, store=store, scheduler=scheduler, auth=auth, metrics=Metrics())


def keyed(ctx: ServerContext, **kwargs) -> str:
    return KeyStore(ctx.settings.keys_file).create(**kwargs)[1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def error_of(response, status: int) -> dict:
    assert response.status == status, await response.text()
    body = await response.json()
    validate(body, "ErrorResponse")
    return body["error"]
