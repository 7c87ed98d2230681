"""The browser playground: static files (HTML, CSS, JavaScript modules, no build step) under
`/ui/`, where `/` sends browsers. The page holds no data and no key: it is public, and talks only
to the public API of the same origin with the key the user gives it (kept in the browser's session
storage). A strict Content-Security-Policy allows nothing but this origin's own scripts, styles and
API, and the blob and data URLs of the audio and images it makes."""

from __future__ import annotations

import mimetypes
from importlib import resources
from pathlib import Path

from aiohttp import web

from gpustack_cli.server.plumbing import public

ROOT = Path(str(resources.files("gpustack_cli.server") / "ui"))
PREFIX = "/ui/"
_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' data: blob:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": _POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The files change with the server: the browser asks again, and gets a 304 when unchanged.
    "Cache-Control": "no-cache",
}
# Where the playground is, when it is served: `/` sends browsers there (`gpustack_cli/ollama/`).
UI_HOME = web.AppKey("ui_home", str)
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}


async def ui_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["path"] or "index.html"
    if "\0" in name:  # no file has one, and the file system refuses the name
        raise web.HTTPNotFound()
    path = (ROOT / name).resolve()
    if not path.is_relative_to(ROOT.resolve()) or not path.is_file():
        raise web.HTTPNotFound()
    kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return web.FileResponse(path, headers={**HEADERS, "Content-Type": f"{kind}; charset=utf-8"})


def add_routes(app: web.Application) -> None:
    public(app, prefixes=(PREFIX,))
    app[UI_HOME] = PREFIX
    app.router.add_get(PREFIX + "{path:.*}", ui_file)
