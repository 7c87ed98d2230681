"""Remote models read from other servers' model lists (`gpustack add-remote GROUP URL...
--from-server`): every model those servers list in `/v1/models` becomes a remote model of the same
name here, with the URLs of the servers that list it as its pool. A gpustack upstream says each
model's categories; another OpenAI-compatible server's models are chat models.

The group is read again on a schedule while the server runs (`remote_refresh_interval`): models
the upstreams start serving are added, and models none of them lists any more are marked
unavailable (a 503 naming the group), until one lists them again. A model of the same name that is
not the group's (a local one, another remote) is never replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from aiohttp import web

from gpustack_cli.models.pull.download import PullError
from gpustack_cli.models.store import Category, Manifest, ModelStore, StoreError

log = logging.getLogger("gpustack.remote")
GROUP = "from_server"
UNAVAILABLE = "unavailable"


class LinkError(RuntimeError):
    pass


def listed_models(urls: list[str], api_key: str | None, timeout: float = 10.0) -> dict[str, tuple[list[str], Any]]:
    """Model id -> (the URLs listing it, its `categories` where the server gives them)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    found: dict[str, tuple[list[str], Any]] = {}
    failures = []
    for url in urls:
        try:
            answer = httpx.get(f"{url}/v1/models", headers=headers, timeout=timeout)
            answer.raise_for_status()
            models = answer.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            failures.append(f"{url}: {exc}")
            continue
        for model in models:
            if isinstance(model, dict) and isinstance(model.get("id"), str):
                entry = found.setdefault(model["id"], ([], model.get("categories")))
                entry[0].append(url)
    if failures and len(failures) == len(urls):
        raise LinkError("no server of the group answered /v1/models: " + "; ".join(failures))
    return found


def _categories(given: Any) -> list[Category]:
    known = {c.value for c in Category}
    chosen = [Category(c) for c in given or [] if c in known] if isinstance(given, list) else []
    return chosen or [Category.llm]


def link(store: ModelStore, group: str, urls: list[str], api_key: str | None, add: Any) -> list[str]:
    """Read the group's servers and bring its models up to date; the names added or changed.
    `add(name, urls, upstream_model, categories, force)` adds one remote model (the puller's)."""
    listed = listed_models(urls, api_key)
    ours = {m.name: m for m in store.list() if m.options.get(GROUP) == group}
    changed = []
    for name, (where, categories) in sorted(listed.items()):
        current = ours.get(name)
        if current is None and store.exists(name):
            log.warning("%s: a model of that name is here already; %s's is not added", name, group)
            continue
        if current is None or current.options.get("urls") != where or current.options.get(UNAVAILABLE):
            try:
                manifest: Manifest = add(name, where, name, _categories(categories), current is not None)
            except (PullError, StoreError, ValueError) as exc:  # a name this store cannot hold
                log.warning("%s: not added from %s: %s", name, group, exc)
                continue
            store.update(name, options={**manifest.options, GROUP: group, "group_urls": urls})
            changed.append(name)
    for name, manifest in ours.items():
        if name not in listed and not manifest.options.get(UNAVAILABLE):
            store.update(name, options={**manifest.options, UNAVAILABLE: True})
            changed.append(name)
    return changed


def groups(store: ModelStore) -> dict[str, tuple[list[str], str | None]]:
    """Each group in the store: its servers' URLs and their key."""
    found: dict[str, tuple[list[str], str | None]] = {}
    for manifest in store.list():
        group = manifest.options.get(GROUP)
        if group:
            found.setdefault(group, (manifest.options.get("group_urls") or [], manifest.options.get("api_key")))
    return found


async def refreshing(app: web.Application) -> AsyncIterator[None]:
    """The groups read again every `remote_refresh_interval` seconds, for the app's lifetime (an
    aiohttp cleanup context); a model that changed is unloaded, to be loaded anew on its next use."""
    from gpustack_cli.models.pull import Puller
    from gpustack_cli.server.context import CONTEXT

    context = app[CONTEXT]
    interval = context.settings.remote_refresh_interval

    async def forever() -> None:
        store = ModelStore(context.settings.home)
        puller = Puller(context.settings)
        while True:
            await asyncio.sleep(interval)
            for group, (urls, key) in groups(store).items():
                try:
                    changed = await asyncio.to_thread(link, store, group, urls, key, adder(puller, key))
                except LinkError as exc:
                    log.warning("remote group %s: %s", group, exc)
                    continue
                for name in changed:
                    log.info("remote group %s: %s changed", group, name)
                    await context.scheduler.unload(name)

    task = asyncio.create_task(forever()) if interval > 0 else None
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def adder(puller: Any, api_key: str | None) -> Any:
    """The puller's `add_remote` as `link` calls it."""

    def add(name: str, urls: list[str], upstream: str, categories: list[Category], replace: bool) -> Manifest:
        return puller.add_remote(
            name, urls, api_key=api_key, upstream_model=upstream, categories=categories, force=replace
        )

    return add
