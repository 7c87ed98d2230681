"""JSON values that come from outside (request bodies, tool-call arguments a client sends back,
a model's output), bounded in how deeply they nest.

Python's `json` and pydantic walk nested values recursively: a value a few hundred levels deep
exhausts the interpreter's recursion limit wherever it is next parsed, validated or written out.
orjson refuses nesting past 1024 levels when it parses; the depth below is what the server takes,
far past any real tool call or schema, and checked without recursion.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_DEPTH = 100


class TooDeep(ValueError):
    """A value nested deeper than MAX_DEPTH."""


def depth(value: Any) -> int:
    """How many arrays and objects deep `value` nests (a scalar is 0), walked without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level) for child in children if isinstance(child, dict | list | tuple))
    return deepest


def check_depth(value: Any, where: str) -> None:
    if depth(value) > MAX_DEPTH:
        raise TooDeep(f"{where} nests deeper than {MAX_DEPTH} levels")


def loads(text: str | bytes, where: str = "the JSON") -> Any:
    """`text` parsed, refused (ValueError) when it is not JSON or nests past MAX_DEPTH."""
    value = orjson.loads(text)  # orjson.JSONDecodeError is a ValueError
    check_depth(value, where)
    return value
