"""What a caller's JSON schema (a response format, a tool's parameters) may be, checked before
any grammar is built from it.

Engines turn schemas into sampling grammars (llama.cpp's converter writes a repeated item out
once per repetition, so `minItems: 10**9` grows without end; an empty `enum` makes a rule that
matches nothing, on which llama.cpp's grammar code crashes the process). This walk bounds the
work and refuses what no output can satisfy, in microseconds and before a model is loaded or a
request slot taken. It is written here rather than taken from a JSON Schema validator because
the limits need a walk of their own, and because it checks what the grammar converters support,
a subset of JSON Schema, not the meta-schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
COUNTS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
# Upper bounds past the repeat limit (a tool's `maxLength: 524288`) are dropped rather than
# refused: a grammar cannot afford them, and no answer comes near them. Lower bounds that large
# cannot be dropped without letting through what the schema forbids, so they are refused.
UPPER = frozenset({"maxItems", "maxLength", "maxProperties"})
# Nesting deeper than this is no real schema, and would exhaust the converters' recursion.
MAX_DEPTH = 48
SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


class SchemaError(ValueError):
    """A schema that cannot be served; the message names the place in it, `param` the request
    parameter that holds it."""

    param: str = ""


@dataclass(frozen=True)
class SchemaLimits:
    # Nodes in all of a request's schemas: subschemas, properties, enum values, and each
    # repetition a count asks for.
    max_nodes: int
    # The largest count one keyword may ask (minItems, maxLength, ...), or a pattern's `{m,n}`.
    max_repeat: int
    # Unbounded repetitions (`*`, `+`) in one pattern, those inside a repeated group counted
    # once per repetition.
    max_pattern_loops: int = 10


class _Walk:
    def __init__(self, root: Any, limits: SchemaLimits, nodes: int):
        self.root = root
        self.limits = limits
        self.nodes = nodes

    def count(self, n: int, where: str) -> None:
        self.nodes += n
        if self.nodes > self.limits.max_nodes:
            raise SchemaError(
                f"{where}: the schema is too large (over {self.limits.max_nodes} nodes and repetitions in all)"
            )

    def schema(self, node: Any, where: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise SchemaError(f"{where}: the schema nests deeper than {MAX_DEPTH} levels")
        if node is True or node == {}:
            self.count(1, where)
            return
        if not isinstance(node, dict):
            raise SchemaError(f"{where}: a schema must be an object, not {_kind(node)}")
        self.count(1, where)
        self.type(node.get("type"), where)
        if "enum" in node:
            values = node["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError(f"{where}.enum: must be a non-empty list (an empty one matches nothing)")
            self.count(len(values), f"{where}.enum")
        for key in COUNTS:
            if key in node and not (key in UPPER and _past(node[key], self.limits.max_repeat)):
                self.repeat(node[key], f"{where}.{key}")
        for low, high in (("minItems", "maxItems"), ("minLength", "maxLength")):
            if isinstance(node.get(low), int) and isinstance(node.get(high), int) and node[low] > node[high]:
                raise SchemaError(f"{where}: {low} is greater than {high}, so nothing matches")
        if "pattern" in node:
            if not isinstance(node["pattern"], str):
                raise SchemaError(f"{where}.pattern: must be a string")
            self.pattern(node["pattern"], f"{where}.pattern")
        if "$ref" in node:
            self.ref(node["$ref"], f"{where}.$ref")
        if "required" in node and not (
            isinstance(node["required"], list) and all(isinstance(r, str) for r in node["required"])
        ):
            raise SchemaError(f"{where}.required: must be a list of property names")
        for key in SUBSCHEMA_MAPS:
            if key in node:
                children = node[key]
                if not isinstance(children, dict):
                    raise SchemaError(f"{where}.{key}: must be an object mapping names to schemas")
                for name, child in children.items():
                    self.schema(child, f"{where}.{key}.{name}", depth + 1)
        for key in SUBSCHEMA_LISTS:
            if key in node:
                children = node[key]
                if not isinstance(children, list) or (key in ("anyOf", "oneOf") and not children):
                    raise SchemaError(f"{where}.{key}: must be a non-empty list of schemas")
                for index, child in enumerate(children):
                    self.schema(child, f"{where}.{key}[{index}]", depth + 1)
        if "items" in node:
            items = node["items"]
            if isinstance(items, list):
                for index, child in enumerate(items):
                    self.schema(child, f"{where}.items[{index}]", depth + 1)
            elif items is not False:
                self.schema(items, f"{where}.items", depth + 1)
        extra = node.get("additionalProperties")
        if extra is not None and not isinstance(extra, bool):
            self.schema(extra, f"{where}.additionalProperties", depth + 1)

    def type(self, value: Any, where: str) -> None:
        if value is None:
            return
        names = value if isinstance(value, list) else [value]
        if not names or not all(isinstance(n, str) and n in TYPES for n in names):
            raise SchemaError(
                f"{where}.type: {value!r} is not a JSON type (use one or more of {', '.join(sorted(TYPES))})"
            )

    def repeat(self, value: Any, where: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SchemaError(f"{where}: must be a non-negative integer")
        if value > self.limits.max_repeat:
            raise SchemaError(f"{where}: {value} is over the limit of {self.limits.max_repeat}")
        self.count(value, where)

    def pattern(self, text: str, where: str) -> None:
        """A regular expression's cost in the grammar: each repetition `{m,n}` is written out
        max(m, n) times by the converter (nested ones multiply), and each unbounded one (`*`,
        `+`, `{m,}`) is a loop the grammar may be in at any point, which multiplies the states it
        tracks per token."""
        cost = _Pattern(text, where, self.limits.max_repeat).cost()
        self.count(cost.size, where)
        if cost.loops > self.limits.max_pattern_loops:
            raise SchemaError(
                f"{where}: {cost.loops} unbounded repetitions (`*`, `+`, `{{m,}}`, counting those repeated "
                f"inside others) are over the limit of {self.limits.max_pattern_loops}"
            )

    def ref(self, ref: Any, where: str) -> None:
        """Only references inside the schema itself: a caller's schema never makes us fetch a URL."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"{where}: only references within the schema ('#/...') are supported")
        target = self.root
        for part in ref[1:].split("/")[1:]:
            key = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and key in target:
                target = target[key]
            elif (
                isinstance(target, list)
                and key.isascii()
                and key.isdigit()
                and len(key) < 10
                and int(key) < len(target)
            ):
                target = target[int(key)]
            else:
                raise SchemaError(f"{where}: {ref!r} points at nothing in the schema")
        if not isinstance(target, dict):
            raise SchemaError(f"{where}: {ref!r} does not point at a schema")


@dataclass(frozen=True)
class _Cost:
    # Grammar elements the pattern expands to, and the unbounded loops among them.
    size: int
    loops: int


class _Pattern:
    """A reader of the regular expressions JSON Schema's `pattern` holds (the subset
    llama.cpp's converter takes: literals, classes, groups, alternatives and quantifiers), for
    their cost alone: it never matches anything, so it need not be exact about what matches."""

    def __init__(self, text: str, where: str, max_repeat: int):
        self.text, self.where, self.max_repeat = text, where, max_repeat
        self.at = 0

    def cost(self) -> _Cost:
        total = self.alternatives()
        if self.at < len(self.text):  # a `)` with no `(`
            raise SchemaError(f"{self.where}: unbalanced ')' at character {self.at}")
        return total

    def alternatives(self) -> _Cost:
        size = loops = 0
        while True:
            part = self.sequence()
            size, loops = size + part.size, loops + part.loops
            if self.at < len(self.text) and self.text[self.at] == "|":
                self.at += 1
                continue
            return _Cost(size, loops)

    def sequence(self) -> _Cost:
        size = loops = 0
        text = self.text
        while self.at < len(text) and text[self.at] not in "|)":
            atom = self.atom()
            low, high = self.quantifier()
            if high is None:  # unbounded: written `low` times, then a loop
                atom = _Cost(atom.size * max(low, 1), atom.loops * max(low, 1) + 1)
            elif high != 1 or low != 1:
                atom = _Cost(atom.size * max(high, 1), atom.loops * max(high, 1))
            size, loops = size + atom.size, loops + atom.loops
        return _Cost(size, loops)

    def atom(self) -> _Cost:
        text = self.text
        ch = text[self.at]
        self.at += 1
        if ch == "(":
            if text.startswith("?", self.at):  # (?:...), (?=...), (?P<name>...): the group's body
                end = text.find(":", self.at) if text.startswith("?:", self.at) else self.at + 1
                self.at = max(end + 1, self.at + 1)
            inner = self.alternatives()
            if self.at >= len(text) or text[self.at] != ")":
                raise SchemaError(f"{self.where}: unbalanced '(' in the pattern")
            self.at += 1
            return _Cost(inner.size + 1, inner.loops)
        if ch == "[":
            if text.startswith("^", self.at):
                self.at += 1
            if text.startswith("]", self.at):
                self.at += 1
            while self.at < len(text) and text[self.at] != "]":
                self.at += 2 if text[self.at] == "\\" else 1
            if self.at >= len(text):
                raise SchemaError(f"{self.where}: unbalanced '[' in the pattern")
            self.at += 1
        elif ch == "\\":
            self.at += 1
        elif ch in "*+?":
            raise SchemaError(f"{self.where}: a quantifier '{ch}' with nothing to repeat at character {self.at - 1}")
        return _Cost(1, 0)

    def quantifier(self) -> tuple[int, int | None]:
        """(least, most) repetitions of the atom just read; most is None when unbounded."""
        text = self.text
        if self.at >= len(text):
            return 1, 1
        ch = text[self.at]
        bounds: tuple[int, int | None]
        if ch in "*+?":
            self.at += 1
            bounds = {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
        elif ch == "{" and (match := _BRACES.match(text, self.at)):
            self.at = match.end()
            low = int(match.group(1))
            high = low if match.group(2) is None else (int(match.group(3)) if match.group(3) else None)
            for count in (low, high):
                if count is not None and count > self.max_repeat:
                    raise SchemaError(
                        f"{self.where}: the repetition {match.group(0)} is over the limit of {self.max_repeat}"
                    )
            if high is not None and low > high:
                raise SchemaError(f"{self.where}: the repetition {match.group(0)} has its bounds reversed")
            bounds = (low, high)
        else:
            return 1, 1
        if self.at < len(text) and text[self.at] in "?+":  # lazy or possessive: the same cost
            self.at += 1
        return bounds


_BRACES = re.compile(r"\{(\d{1,12})(,(\d{0,12}))?\}")


def _past(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > limit


def loosened(schema: Any, limit: int) -> Any:
    """`schema` without the upper bounds past `limit` (see UPPER), as the grammar is built from
    it; the schema itself when it has none."""
    if isinstance(schema, list):
        items = [loosened(item, limit) for item in schema]
        return items if any(a is not b for a, b in zip(items, schema, strict=True)) else schema
    if not isinstance(schema, dict):
        return schema
    changed = {k: loosened(v, limit) for k, v in schema.items() if not (k in UPPER and _past(v, limit))}
    same = len(changed) == len(schema) and all(changed[k] is schema[k] for k in changed)
    return schema if same else changed


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def check_schemas(schemas: list[tuple[str, Any]], limits: SchemaLimits) -> None:
    """Check each (param, schema) of one request, with the limits counted over all of them;
    a SchemaError names the param and the place in the schema."""
    nodes = 0
    for param, schema in schemas:
        walk = _Walk(schema, limits, nodes)
        try:
            walk.schema(schema, param, 0)
        except SchemaError as exc:
            exc.param = param
            raise
        nodes = walk.nodes
