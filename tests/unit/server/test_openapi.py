"""The OpenAPI document is built from the routes as each protocol adds them."""

from __future__ import annotations

import re
from pathlib import Path

from gpustack_cli.server.app import create_app
from gpustack_cli.server.openapi import document
from tests.support.api import make_context


def test_every_route_served_is_described_with_its_protocols_shapes(tmp_path: Path) -> None:
    app = create_app(make_context(tmp_path, ui=True))
    doc = document(app)
    described = {(m.upper(), p) for p, methods in doc["paths"].items() for m in methods}
    for route in app.router.routes():
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.resource.canonical)
        if path == "/" or path.startswith("/ui/") or route.method == "HEAD":
            continue  # the playground's pages, and the HEAD aiohttp adds beside each GET
        if path.startswith("/model/proxy"):
            assert ("POST", "/model/proxy/{path}") in described
            continue
        assert (route.method, path) in described, f"{route.method} {path} is served but not described"
    # Each answer refers to its protocol's model, and each error to its protocol's shape.
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert chat["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletion")
    assert chat["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
    messages = doc["paths"]["/v1/messages"]["post"]["responses"]
    assert messages["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/AnthropicError")
    assert {"ChatCompletion", "AnthropicMessage", "RerankList", "RunningList", "OllamaError"} <= set(
        doc["components"]["schemas"]
    )
    assert document(app) is doc  # built once
