"""Active health checks of remote upstreams, against real loopback HTTP servers."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer

from gpustack_cli.upstream.clients.session import SessionClient
from gpustack_cli.upstream.health import probe
from gpustack_cli.upstream.pool import RemoteEngine, Upstream
from tests.support.upstream import closed_port_url


class Upstreams:
    """A loopback server whose health answer the test sets, recording what it was sent."""

    def __init__(self) -> None:
        self.status = 200
        self.seen: list[tuple[str, str | None]] = []
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.answer)
        self.server = TestServer(app)

    async def answer(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, request.headers.get("Authorization")))
        return web.json_response({"object": "list", "data": []}, status=self.status)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


async def test_probe_takes_out_and_puts_back() -> None:
    live = Upstreams()
    await live.server.start_server()
    client = SessionClient(read_timeout=5)
    try:
        up, dead = Upstream(live.url), Upstream(closed_port_url())
        engine = RemoteEngine([dead, up], api_key="up-key")
        assert await probe(client, engine, up, 2) and up.up
        assert live.seen[-1] == ("/v1/models", "Bearer up-key")  # the upstream's own key
        assert not await probe(client, engine, dead, 2) and not dead.up
        assert [u.url for u in engine.order()] == [up.url, dead.url]  # the dead one goes last

        live.status = 503
        assert not await probe(client, engine, up, 2) and not up.up
        live.status = 401  # refusing our key still proves the server is up
        assert await probe(client, engine, up, 2) and up.up

        live.status = 200
        engine.health_path = "/health"
        back = Upstream(live.url)
        engine.failed(back)
        assert not back.up
        assert await probe(client, engine, back, 2) and back.up  # back without waiting out the cool-down
        assert live.seen[-1][0] == "/health"
    finally:
        await client.close()
        await live.server.close()


async def test_an_upstream_that_lists_its_models_says_what_others_run_there() -> None:
    """A gpustack upstream's `/api/ps` counts every client's requests on the model: those that are
    not this server's weigh in its choice of upstream."""
    busy = {"models": [{"name": "smollm2", "active": 3, "waiting": 2}, {"name": "other", "active": 9}]}

    async def ps(request: web.Request) -> web.Response:
        return web.json_response(busy)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_get("/api/ps", ps)
    app.router.add_get("/v1/models", models)
    loaded, plain = TestServer(app), Upstreams()
    await loaded.start_server()
    await plain.server.start_server()
    client = SessionClient(read_timeout=5)
    try:
        first, second = Upstream(str(loaded.make_url("")).rstrip("/")), Upstream(plain.url)
        engine = RemoteEngine([first, second])
        with engine.serving(first):  # one of the five is ours
            assert await probe(client, engine, first, 2, "smollm2")
        assert first.others == 4
        assert await probe(client, engine, second, 2, "smollm2") and second.others == 0  # lists nothing
        assert [u.url for u in engine.order()] == [second.url, first.url]
        engine.upstream_model = "other"  # the model's name there
        assert await probe(client, engine, first, 2, "smollm2") and first.others == 9
    finally:
        await client.close()
        await loaded.close()
        await plain.server.close()
