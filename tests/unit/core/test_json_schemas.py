"""The checks a caller's JSON schema passes before a grammar is built from it (no model)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gpustack_cli.core.json_schemas import SchemaError, SchemaLimits, check_schemas

LIMITS = SchemaLimits(max_nodes=4000, max_repeat=1000)


def check(schema: Any, limits: SchemaLimits = LIMITS) -> None:
    check_schemas([("response_format", schema)], limits)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        {"type": ["string", "null"]},
        {"enum": ["a", "b", 3]},
        {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 1000},
        {"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"},
        {"anyOf": [{"type": "string"}, {"type": "number"}]},
        {"type": "object", "additionalProperties": {"type": "string"}},
        {},
    ],
)
def test_schemas_that_pass(schema: Any) -> None:
    check(schema)


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "object", "properties": {"a": {"enum": []}}, "required": ["a"]}, "properties.a.enum"),
        ({"type": "banana"}, "not a JSON type"),
        ({"type": 123}, "not a JSON type"),
        ({"type": []}, "not a JSON type"),
        ({"anyOf": []}, "anyOf"),
        ({"$ref": "#/$defs/missing"}, "points at nothing"),
        ({"$ref": "https://example.com/schema.json"}, "only references within the schema"),
        ({"type": "object", "properties": ["a", "b"]}, "properties: must be an object"),
        ({"type": "string", "pattern": 5}, "pattern: must be a string"),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 1_000_000_000}, "minItems: 1000000000 is over"),
        ({"type": "array", "minItems": -1}, "non-negative integer"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "minLength is greater than maxLength"),
        ({"required": "a"}, "required: must be a list"),
        ([1, 2], "must be an object, not a list"),
    ],
)
def test_schemas_refused_with_their_place(schema: Any, words: str) -> None:
    with pytest.raises(SchemaError, match=words) as raised:
        check(schema)
    assert raised.value.param == "response_format" and str(raised.value).startswith("response_format")


def test_size_is_counted_over_every_schema_of_a_request() -> None:
    limits = SchemaLimits(max_nodes=100, max_repeat=1000)
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(60)}}
    check(wide, limits)
    with pytest.raises(SchemaError, match="too large") as raised:
        check_schemas([("tools[0].parameters", wide), ("tools[1].parameters", wide)], limits)
    assert raised.value.param == "tools[1].parameters"
    with pytest.raises(SchemaError, match="too large"):  # repetitions count as nodes
        check({"type": "array", "items": {}, "minItems": 200}, limits)


def test_big_schemas_are_refused_at_once() -> None:
    started = time.perf_counter()
    with pytest.raises(SchemaError, match="too large"):
        check({"enum": list(range(100_000))})
    with pytest.raises(SchemaError, match="too large"):
        check({"type": "object", "properties": {f"p{i}": {} for i in range(10_000)}})
    deep: dict[str, Any] = {}
    for _ in range(10_000):
        deep = {"type": "array", "items": deep}
    with pytest.raises(SchemaError, match="nests deeper"):
        check(deep)
    assert time.perf_counter() - started < 5.0  # microseconds of work; generous for a busy machine


def test_upper_bounds_past_the_limit_are_dropped_not_refused() -> None:
    """A coding agent's tool says `maxLength: 524288`: the grammar leaves the bound out (no answer
    comes near it) instead of refusing the tool; a lower bound that large is still refused."""
    from gpustack_cli.core.json_schemas import loosened

    schema = {
        "type": "object",
        "properties": {
            "script": {"type": "string", "maxLength": 524288},
            "lines": {"type": "array", "items": {"type": "string", "maxLength": 80}, "maxItems": 10**6},
        },
    }
    check(schema)
    assert loosened(schema, 1000) == {
        "type": "object",
        "properties": {
            "script": {"type": "string"},
            "lines": {"type": "array", "items": {"type": "string", "maxLength": 80}},
        },
    }
    small = {"type": "string", "maxLength": 10}
    assert loosened(small, 1000) is small  # nothing to drop: the same object
    with pytest.raises(SchemaError, match="minLength: 524288 is over"):
        check({"type": "string", "minLength": 524288})


def test_schemas_with_only_annotations_become_grammars() -> None:
    """A coding agent's tool may describe a property and constrain nothing (any JSON value); the
    grammar converter takes it once the annotations are gone and the "anything" is spelled out."""
    from llama_cpp.llama_grammar import SchemaConverter

    from engines.llama import _convertible

    schema = {
        "type": "object",
        "description": "A tool's arguments.",
        "properties": {
            "args": {"description": "Any value, passed on verbatim."},
            "name": {"type": "string", "title": "Name", "default": "x"},
            "description": {"type": "string"},  # a property named like an annotation stays
        },
        "$schema": "http://json-schema.org/draft-07/schema#",
    }
    plain = _convertible(schema)
    assert plain == {
        "type": "object",
        "properties": {
            "args": {"type": ["string", "number", "boolean", "object", "array", "null"]},
            "name": {"type": "string"},
            "description": {"type": "string"},
        },
    }
    assert _convertible({}) == {}  # a root with nothing to say stays an object, as tool arguments are
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    converter.visit(converter.resolve_refs(plain, "t"), "")
    assert "args" in converter.format_grammar()
