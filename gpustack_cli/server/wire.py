"""JSON bodies on the wire, serialized by orjson.

orjson writes JSON several times faster than the standard library, which shows on large answers
(an embeddings response of a few hundred vectors) and on the per-token chunks of a stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

# Integer dict keys (logit_bias echoes) and numpy values (engine outputs) serialize as JSON would.
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, option=_OPTIONS)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(data), status=status, headers=headers, content_type="application/json")
