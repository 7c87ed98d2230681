"""Validate our bodies against OpenAI's official OpenAPI schemas (../shared/specs)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).resolve().parents[2] / "shared" / "specs" / "openai-openapi.yaml"


def _nullable(node: Any) -> Any:
    """The spec still marks some fields with OpenAPI 3.0's `nullable: true`, which JSON Schema
    ignores; spell it the 3.1 way (`null` among the types) so the spec's intent is checked."""
    if isinstance(node, dict):
        node = {k: _nullable(v) for k, v in node.items()}
        if node.pop("nullable", False):
            if isinstance(node.get("type"), str):
                node["type"] = [node["type"], "null"]
            if isinstance(node.get("enum"), list):
                node["enum"] = [*node["enum"], None]
        return node
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


@functools.cache
def _registry() -> Registry:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec = _nullable(yaml.load(SPEC.read_text(), Loader=loader))
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    return Registry().with_resource("urn:openai", resource)


def validate(instance: Any, schema_name: str) -> None:
    """Raise jsonschema.ValidationError unless `instance` matches components/schemas/<schema_name>."""
    registry = _registry()
    schema = {"$ref": f"urn:openai#/components/schemas/{schema_name}"}
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    validator.validate(instance)
