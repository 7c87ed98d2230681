"""The access log: one line per request, as `remote "METHOD target HTTP/1.1" status bytes
seconds rid=request-id`.

Written here rather than with aiohttp's format string for two reasons: a secret a client put in
the query string (`?api_key=...`, `?k=...`) must never reach the log, so a query is logged by its
parameters' names alone, and a request whose client left while
its handler ran gets no line from aiohttp at all (it cancels the handler and logs nothing), so
the error middleware writes that line itself, with nginx's 499. Requests aiohttp refuses before
any handler runs (a malformed head, a header or URL over its limits) are logged in one line,
without the traceback aiohttp attaches: they are the client's errors, not the server's.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("aiohttp.access")
# Bytes a log line must not hold as they are (control characters, a raw NUL): written escaped.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def _printable(text: str) -> str:
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def target(request: web.BaseRequest) -> str:
    """The request's path and query as logged: the query's parameter names, never their values
    (any of them may be a secret, under any name and in any encoding)."""
    path, _, query = request.raw_path.partition("?")
    if not query:
        return _printable(path)
    names = (part.partition("=")[0] for part in query.split("&") if part)
    return _printable(path + "?" + "&".join(f"{name}=*" for name in names))


def line(request: web.BaseRequest, status: int, size: int, seconds: float, request_id: str | None) -> str:
    head = f"{request.method} {target(request)} HTTP/{request.version.major}.{request.version.minor}"
    return f'{request.remote} "{head}" {status} {size} {seconds:.6f}s rid={request_id or "-"}'


class AccessLogger(web.AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        rid = response.headers.get("x-request-id")
        self.logger.info(line(request, response.status, response.body_length, time, rid))


def client_left(request: web.BaseRequest, seconds: float, request_id: str | None) -> None:
    """The line for a request whose client left while it was being answered."""
    if log.isEnabledFor(logging.INFO):
        log.info(line(request, 499, request.writer.output_size if request.writer else 0, seconds, request_id))


class RefusedRequests(logging.Filter):
    """On aiohttp's server logger: a request it refused as malformed is one line at INFO, with
    its reason, instead of an error with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and (exc.code or 400) < 500:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "%s (refused: %s)", (record.getMessage(), str(exc).splitlines()[0])
            record.exc_info, record.exc_text = None, None
        return True
