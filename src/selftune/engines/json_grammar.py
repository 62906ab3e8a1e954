"""JSON Schema to GBNF (llama.cpp's grammar format), bounded so that an answer always fits.

Structured output (``response_format``, llama.cpp's ``json_schema``, and forced tool calls)
decodes under a grammar that admits exactly the JSON texts valid against the schema, within
limits. Two promises follow, and both are tested against ``jsonschema``:

- **Valid.** Every text the grammar admits parses as JSON and is valid against the schema. A
  schema keyword the grammar cannot enforce (``pattern``, ``maximum``, ``uniqueItems``, ...) is
  refused with :class:`SchemaError` rather than ignored; annotations (``title``,
  ``description``, ``format``, ``default``, ...) are ignored, as validators ignore them.
- **Never cut.** Every text the grammar admits is at most :attr:`JsonGrammar.max_bytes` bytes,
  and a generated token is at least one byte (llama.cpp's grammar sampler never picks a token
  with no text), so an answer with that many tokens to spare always completes. Strings,
  arrays and maps without a ``maxLength``/``maxItems`` get one, and these caps are halved until
  the bound fits the budget the caller gives (the answer's ``max_tokens``). Caps only narrow
  what the schema allows, so the answer stays valid. A recursive schema, or one whose smallest
  answer does not fit, has no such bound: its answer can still be cut, and says so with
  ``finish_reason: "length"``.

The generated grammar is compact JSON: no whitespace but one optional space after ``:`` and
``,``; properties in the schema's order; strings of any characters but control characters,
which only come as the short escapes (``\\n``, ``\\t``, ...).

The same subset of JSON Schema is checked in Python by :func:`validate`, for tool calls that a
model wrote freely (``tool_choice: "auto"``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from typing import Any

from selftune.engines.base import InvalidRequest

__all__ = ["JsonGrammar", "SchemaError", "any_object_grammar", "schema_grammar", "validate"]

_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")

# Caps on what a schema leaves unbounded, before any shrinking, and the least they shrink to:
# nesting of free-form JSON, keys of a map, items of an array, characters of a string, digits
# of a number (16: integers exact in a double, as JavaScript clients read them), and whether
# optional properties are written at all (the last thing given up).
_START = {"depth": 3, "keys": 16, "items": 32, "chars": 256, "digits": 16, "optional": 1}
_FLOOR = {"depth": 0, "keys": 1, "items": 1, "chars": 1, "digits": 1, "optional": 0}
_BYTES_PER_CHAR = 4  # one character of a string: a UTF-8 character, or a 2-byte escape
_RANGE_LIMIT = 4096  # integer ranges up to this many values are spelled out

_CHAR = r'[^"\\\x00-\x1F\x7F] | "\\" ["\\/bfnrt]'


class SchemaError(InvalidRequest):
    """A schema selftune cannot turn into a grammar; the message names where and why."""


@dataclasses.dataclass(frozen=True)
class JsonGrammar:
    gbnf: str  # root rule "root"
    max_bytes: int | None  # the longest answer it admits; None: unbounded (a recursive schema)

    def fits(self, budget: int) -> bool:
        return self.max_bytes is not None and self.max_bytes <= budget


def schema_grammar(schema: Any, budget: int) -> JsonGrammar:
    """The grammar of the JSON texts valid against ``schema``, within caps that fit ``budget``
    tokens where they can. Raises :class:`SchemaError` for what it cannot enforce."""
    if not isinstance(schema, dict | bool):
        raise SchemaError("#: a schema must be a JSON object or a boolean")
    _check(schema, schema, "#")
    return _fitted(lambda caps: _Builder(schema, caps).grammar(schema), budget)


def any_object_grammar(budget: int) -> JsonGrammar:
    """The grammar of any JSON object (OpenAI's ``json_object`` mode), within caps that fit
    ``budget`` tokens where they can."""
    return _fitted(lambda caps: _Builder({}, caps).grammar({"type": "object"}), budget)


def _fitted(build: Any, budget: int) -> JsonGrammar:
    """The first grammar that fits ``budget``: the caps shrink one at a time, in turn (nesting
    first: it multiplies the most), optional properties go last; the smallest if none fits."""
    caps = dict(_START)
    grammar: JsonGrammar = build(caps)
    while not grammar.fits(budget) and grammar.max_bytes is not None and caps != _FLOOR:
        shrunk = False
        for name in ("depth", "keys", "items", "chars", "digits"):
            smaller = max(_FLOOR[name], caps[name] - 1 if name == "depth" else caps[name] // 2)
            if smaller != caps[name]:
                caps[name], shrunk = smaller, True
                grammar = build(caps)
                if grammar.fits(budget):
                    return grammar
        if not shrunk:
            caps["optional"] = 0
            grammar = build(caps)
    return grammar


# --- what the grammar can enforce ----------------------------------------------------------
def _check(node: Any, root: Any, where: str) -> None:
    """Refuse what a grammar cannot enforce, and malformed schemas, anywhere in ``node``."""
    if isinstance(node, bool):
        if not node:
            raise SchemaError(f"{where}: the schema 'false' admits no value")
        return
    if not isinstance(node, dict):
        raise SchemaError(f"{where}: a schema must be a JSON object or a boolean")
    for key in node:
        if key in _UNSUPPORTED:
            raise SchemaError(
                f"{where}: '{key}' is not supported in structured output (selftune cannot "
                "enforce it while decoding); remove it, and check that part yourself"
            )
        # Other unknown keywords are annotations, to a validator too.
    _check_shapes(node, where)
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for name in kinds:
        if name not in _TYPES:
            raise SchemaError(f"{where}: unknown type {name!r}")
    _check_numeric(node, [k for k in kinds if k in ("integer", "number")], where)
    if "oneOf" in node and not _disjoint(node["oneOf"], root):
        raise SchemaError(
            f"{where}: 'oneOf' is supported only when its branches cannot match the same value "
            "(different types, or objects told apart by a required const property); use 'anyOf'"
        )
    if "allOf" in node and len(node["allOf"]) != 1:
        raise SchemaError(f"{where}: 'allOf' is supported with one schema only; merge them")
    for combinator in ("$ref", "anyOf", "oneOf", "allOf"):
        beside = sorted((node.keys() & _ASSERTIONS) - {combinator})
        if combinator in node and beside:
            raise SchemaError(
                f"{where}: {beside} beside '{combinator}' is not supported; move them into "
                f"the schema '{combinator}' refers to"
            )
    if "prefixItems" in node and node.get("minItems", 0) > len(node["prefixItems"]):
        raise SchemaError(f"{where}: 'minItems' beyond 'prefixItems' is not supported")
    missing = [name for name in node.get("required", []) if name not in node.get("properties", {})]
    if missing:
        raise SchemaError(
            f"{where}: required {missing} must also be listed in 'properties' (with a schema)"
        )
    if "$ref" in node:
        _resolve(node["$ref"], root, where)
    for child, child_where in _children(node, where):
        _check(child, root, child_where)


# The assertions the grammar enforces.
_ASSERTIONS = frozenset(
    {
        "type", "enum", "const", "properties", "required", "additionalProperties", "items",
        "prefixItems", "minItems", "maxItems", "minLength", "maxLength", "anyOf", "oneOf",
        "allOf", "$ref", "minimum", "exclusiveMinimum", "maximum",
    }
)  # fmt: skip
# Assertions a grammar cannot enforce (or selftune does not yet).
_UNSUPPORTED = frozenset(
    {
        "pattern", "patternProperties", "propertyNames", "minProperties", "maxProperties",
        "dependentRequired", "dependentSchemas", "dependencies", "if", "then", "else", "not",
        "uniqueItems", "contains", "minContains", "maxContains", "unevaluatedProperties",
        "unevaluatedItems", "additionalItems", "multipleOf", "exclusiveMaximum",
        "$dynamicRef", "$recursiveRef", "contentSchema",
    }
)  # fmt: skip


def _check_shapes(node: dict[str, Any], where: str) -> None:
    """Each keyword's value has the JSON type JSON Schema gives it."""
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if key in node and not (_whole(node[key]) and node[key] >= 0):
            raise SchemaError(f"{where}: '{key}' must be a non-negative integer")
    for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
        if node.get(low, 0) > node.get(high, math.inf):
            raise SchemaError(f"{where}: '{low}' is above '{high}': no value fits")
    for key in ("anyOf", "oneOf", "allOf", "prefixItems", "enum"):
        if key in node and not (isinstance(node[key], list) and node[key]):
            raise SchemaError(f"{where}: '{key}' must be a non-empty list")
    for key in ("properties", "$defs", "definitions"):
        if key in node and not isinstance(node[key], dict):
            raise SchemaError(f"{where}: '{key}' must be an object")
    if "required" in node and not (
        isinstance(node["required"], list) and all(isinstance(n, str) for n in node["required"])
    ):
        raise SchemaError(f"{where}: 'required' must be a list of property names")
    for key in ("items", "additionalProperties"):
        if key in node and not isinstance(node[key], dict | bool):
            what = "a list is not supported: use 'prefixItems'" if key == "items" else ""
            raise SchemaError(f"{where}: '{key}' must be a schema {what}".strip())
    if "type" in node and not isinstance(node["type"], str | list):
        raise SchemaError(f"{where}: 'type' must be a type name or a list of them")


def _check_numeric(node: dict[str, Any], numeric: list[str], where: str) -> None:
    """Bounds on numbers: a non-negative number, a non-negative or positive integer, or an
    integer range short enough to spell out."""
    low, high = node.get("minimum"), node.get("maximum")
    exclusive = node.get("exclusiveMinimum")
    if low is None and high is None and exclusive is None:
        return
    if numeric == ["integer"] and _whole(low) and _whole(high) and exclusive is None:
        assert isinstance(low, int) and isinstance(high, int)
        if high < low:
            raise SchemaError(f"{where}: 'minimum' is above 'maximum': no value fits")
        if high - low < _RANGE_LIMIT:
            return
    if (
        numeric == ["integer"]
        and high is None
        and ((exclusive is None and low in (0, 1)) or (low is None and exclusive == 0))
    ):
        return
    if numeric == ["number"] and high is None and exclusive is None and low == 0:
        return
    raise SchemaError(
        f"{where}: of 'minimum', 'maximum' and 'exclusiveMinimum' (with one 'type', integer or "
        "number) selftune enforces only a minimum of 0, for integers also a minimum of 1 or "
        f"an exclusiveMinimum of 0, or an integer range of at most {_RANGE_LIMIT} values"
    )


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _children(node: dict[str, Any], where: str) -> Iterator[tuple[Any, str]]:
    for name, child in node.get("properties", {}).items():
        yield child, f"{where}/properties/{name}"
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield node[key], f"{where}/{key}"
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for i, child in enumerate(node.get(key, [])):
            yield child, f"{where}/{key}/{i}"
    for key in ("$defs", "definitions"):
        for name, child in node.get(key, {}).items():
            yield child, f"{where}/{key}/{name}"


def _resolve(ref: Any, root: Any, where: str) -> Any:
    """The schema a local ``$ref`` ("#/$defs/Name") points at."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise SchemaError(f"{where}: only local $ref ('#/$defs/...') is supported, not {ref!r}")
    node = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise SchemaError(f"{where}: $ref {ref!r} points at nothing")
    return node


def _disjoint(branches: Any, root: Any) -> bool:
    """Whether no value can match two of ``branches`` (so oneOf means anyOf)."""
    if not isinstance(branches, list) or not branches:
        return False
    signatures = []
    for branch in branches:
        while isinstance(branch, dict) and "$ref" in branch:
            branch = _resolve(branch["$ref"], root, "#")
        if not isinstance(branch, dict) or not isinstance(branch.get("type"), str):
            return False
        consts = {
            name: json.dumps(prop["const"], sort_keys=True)
            for name, prop in branch.get("properties", {}).items()
            if isinstance(prop, dict) and "const" in prop and name in branch.get("required", [])
        }
        # An integer is a number too: those two types do not tell branches apart.
        kind = "number" if branch["type"] == "integer" else branch["type"]
        signatures.append((kind, consts))
    for i, (kind, consts) in enumerate(signatures):
        for other_kind, other_consts in signatures[i + 1 :]:
            if kind != other_kind:
                continue
            if kind != "object" or not any(
                other_consts.get(name, value) != value for name, value in consts.items()
            ):
                return False
    return True


# --- building the grammar ------------------------------------------------------------------
class _Builder:
    """One schema's rules, with the longest text each admits (``None``: unbounded)."""

    def __init__(self, root: Any, caps: dict[str, int]) -> None:
        self.root, self.caps = root, caps
        self.rules: dict[str, str] = {"char": _CHAR}
        self.sizes: dict[str, int | None] = {}
        self._refs: dict[str, str] = {}
        self._pending: set[str] = set()  # refs being built: a reference back is recursion

    def grammar(self, schema: Any) -> JsonGrammar:
        body, size = self.node(schema)
        lines = [f"root ::= {body}", *(f"{name} ::= {rule}" for name, rule in self.rules.items())]
        return JsonGrammar("\n".join(lines), size)

    def rule(self, name: str, body: str, size: int | None) -> tuple[str, int | None]:
        """Name ``body`` (or reuse the rule that already has it)."""
        for existing, rule in self.rules.items():
            if rule == body and existing in self.sizes:
                return existing, size
        unique = f"{name}{len(self.rules)}"
        self.rules[unique] = body
        self.sizes[unique] = size
        return unique, size

    def node(self, schema: Any) -> tuple[str, int | None]:
        if schema is True or schema == {}:
            return self.any_value(self.caps["depth"])
        assert isinstance(schema, dict)
        if "$ref" in schema:
            return self.ref(schema["$ref"])
        if "allOf" in schema:
            return self.node(schema["allOf"][0])
        if "const" in schema or "enum" in schema:
            values = [schema["const"]] if "const" in schema else schema["enum"]
            # Only the values the rest of the schema admits too ({"type": "string", "enum": ...}).
            rest = {k: v for k, v in schema.items() if k not in ("const", "enum")}
            return self.literals([value for value in values if validate(value, rest, self.root)])
        branches = schema.get("anyOf") or schema.get("oneOf")
        if branches:
            return self.union([self.node(branch) for branch in branches])
        kind = schema.get("type")
        if isinstance(kind, list):
            return self.union([self.node({**schema, "type": name}) for name in kind])
        if kind is None:
            kind = _implied_type(schema)
        if kind is None:
            return self.any_value(self.caps["depth"])
        return self.typed(kind, schema)

    def typed(self, kind: str, schema: dict[str, Any]) -> tuple[str, int | None]:
        if kind == "object":
            return self.object(schema)
        if kind == "array":
            return self.array(schema)
        if kind == "string":
            return self.string(schema.get("minLength", 0), schema.get("maxLength"))
        if kind == "integer":
            return self.integer(schema)
        if kind == "number":
            sign = "" if schema.get("minimum") == 0 else '"-"? '
            digits = self.caps["digits"]
            fraction = _times_rule("[0-9]", 1, digits)
            body = f'{sign}{self._whole_number()} ("." {fraction})?'
            return self.rule("number", body, 1 + 2 * digits + 1)
        if kind == "boolean":
            return self.rule("boolean", '"true" | "false"', 5)
        return self.rule("null", '"null"', 4)

    def integer(self, schema: dict[str, Any]) -> tuple[str, int | None]:
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and high is not None:
            return self.literals(list(range(low, high + 1)))
        digits = self.caps["digits"]
        if low == 1 or schema.get("exclusiveMinimum") == 0:
            body = f"[1-9] {_times_rule('[0-9]', 0, digits - 1)}".strip()
        elif low == 0:
            body = self._whole_number()
        else:
            body = f'"-"? {self._whole_number()}'
        return self.rule("integer", body, 1 + digits)

    def _whole_number(self) -> str:
        """0, or up to ``digits`` digits not starting with 0."""
        more = _times_rule("[0-9]", 0, self.caps["digits"] - 1)
        return f'("0" | [1-9] {more})'.replace(" )", ")")

    def string(self, least: int, most: int | None) -> tuple[str, int | None]:
        cap = int(max(least, min(most if most is not None else math.inf, self.caps["chars"])))
        chars = f" {_times_rule('char', least, cap)} " if cap else " "
        return self.rule("string", f'"\\""{chars}"\\""', 2 + _BYTES_PER_CHAR * cap)

    def literals(self, values: list[Any]) -> tuple[str, int | None]:
        if not values:
            raise SchemaError("#: no value of 'enum' or 'const' fits the rest of its schema")
        texts = [json.dumps(value, ensure_ascii=True, separators=(",", ": ")) for value in values]
        body = " | ".join(_literal(text) for text in dict.fromkeys(texts))
        return self.rule("literal", body, max(len(text) for text in texts))

    def union(self, parts: list[tuple[str, int | None]]) -> tuple[str, int | None]:
        body = " | ".join(dict.fromkeys(name for name, _ in parts))
        return self.rule("alt", body, _largest(size for _, size in parts))

    def ref(self, ref: str) -> tuple[str, int | None]:
        """A rule per ``$ref``. A reference back to one still being built is recursion: its
        size is unbounded, and so (through the sums) is every size that includes it."""
        if ref in self._refs:
            name = self._refs[ref]
            return name, None if ref in self._pending else self.sizes[name]
        name = f"ref{len(self.rules)}"
        self._refs[ref] = name
        self.rules[name] = '"null"'  # replaced below
        self._pending.add(ref)
        body, size = self.node(_resolve(ref, self.root, "#"))
        self._pending.discard(ref)
        self.rules[name], self.sizes[name] = body, size
        return name, size

    def object(self, schema: dict[str, Any]) -> tuple[str, int | None]:
        properties: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        extra = schema.get("additionalProperties")
        if not properties and isinstance(extra, dict):
            return self.map(extra)
        if not properties and extra is not False:
            return self.any_object(self.caps["depth"])
        # Only the declared properties are written: extra ones are never needed to be valid.
        members: list[tuple[bool, str]] = []
        size: int | None = 2
        for name, child in properties.items():
            if name not in required and not self.caps["optional"]:
                continue
            value, value_size = self.node(child)
            key = json.dumps(name, ensure_ascii=True)
            members.append((name in required, f'{_literal(key)} ":" " "? {value}'))
            size = _plus(size, _plus(value_size, len(key) + 4))  # "key": value, and a comma
        return self.rule("object", self._members(members), size)

    def _members(self, members: list[tuple[bool, str]]) -> str:
        """``{`` the members in order, the optional ones optional, commas between ``}``."""
        n = len(members)
        # after[i]: members i.. once one has been written, each after a comma ("": none left).
        after = [""] * (n + 1)
        for i in reversed(range(1, n)):
            is_required, member = members[i]
            item = f'"," " "? {member}'
            expr = f"{item} {after[i + 1]}" if is_required else f"({item})? {after[i + 1]}"
            after[i] = self._named("members", expr.strip())
        # first: members i.. while none has been written yet (it may be empty when they are
        # all optional: "a | first" may be empty when first may).
        first = ""
        for i in reversed(range(n)):
            is_required, member = members[i]
            with_this = f"{member} {after[i + 1]}".strip()
            if is_required:
                first = self._named("first", with_this)
            elif not first:
                first = self._named("first", f"({with_this})?")
            else:
                first = self._named("first", f"{with_this} | {first}")
        return f'"{{" {first} "}}"' if first else '"{" "}"'

    def _named(self, name: str, body: str) -> str:
        return self.rule(name, body, None)[0]

    def map(self, values: Any) -> tuple[str, int | None]:
        """An object of any keys (at most the ``keys`` cap) whose values match ``values``."""
        return self._pairs("map", *self.node(values))

    def _pairs(self, name: str, value: str, value_size: int | None) -> tuple[str, int | None]:
        key, key_size = self.string(0, None)
        pair = f'{key} ":" " "? {value}'
        most = self.caps["keys"]
        more = _times_rule(f'("," " "? {pair})', 0, most - 1)
        body = f'"{{" ({pair} {more})? "}}"'
        pair_size = _plus(_plus(key_size, value_size), 4)
        return self.rule(name, body, _plus(2, _times(pair_size, most)))

    def array(self, schema: dict[str, Any]) -> tuple[str, int | None]:
        if "prefixItems" in schema:
            parts = [self.node(child) for child in schema["prefixItems"]]
            body = '"[" ' + ' "," " "? '.join(name for name, _ in parts) + ' "]"'
            size: int | None = 2
            for _, part_size in parts:
                size = _plus(size, _plus(part_size, 2))
            return self.rule("tuple", body, size)
        item, item_size = self.node(schema.get("items", True))
        least = schema.get("minItems", 0)
        most = schema.get("maxItems")
        cap = int(max(least, min(most if most is not None else math.inf, self.caps["items"])))
        return self.rule("array", _repeat(item, least, cap), _plus(2, _times(item_size, cap, 3)))

    # Any JSON at all, nested at most ``depth`` deep.
    def any_value(self, depth: int) -> tuple[str, int | None]:
        parts = [self.string(0, None), self.typed("number", {}), self.typed("boolean", {})]
        parts.append(self.typed("null", {}))
        if depth > 0:
            parts += [self.any_object(depth), self.any_array(depth)]
        return self.union(parts)

    def any_object(self, depth: int) -> tuple[str, int | None]:
        return self._pairs("anyobject", *self.any_value(depth - 1))

    def any_array(self, depth: int) -> tuple[str, int | None]:
        item, item_size = self.any_value(depth - 1)
        most = self.caps["items"]
        return self.rule("anyarray", _repeat(item, 0, most), _plus(2, _times(item_size, most, 3)))


def _implied_type(schema: dict[str, Any]) -> str | None:
    if {"properties", "additionalProperties", "required"} & schema.keys():
        return "object"
    if {"items", "prefixItems", "minItems", "maxItems"} & schema.keys():
        return "array"
    if {"minLength", "maxLength"} & schema.keys():
        return "string"
    return None


def _repeat(item: str, least: int, most: int) -> str:
    """``[`` ``least`` to ``most`` items, comma-separated ``]``."""
    if most == 0:
        return '"[" "]"'
    more = _times_rule(f'("," " "? {item})', max(least - 1, 0), most - 1)
    items = f"{item} {more}"
    return f'"[" {items.strip()} "]"' if least > 0 else f'"[" ({items.strip()})? "]"'


def _times_rule(expr: str, least: int, most: int) -> str:
    """``expr`` repeated ``least`` to ``most`` times, in GBNF ("" for none at all)."""
    if most == 0:
        return ""
    if least == most == 1:
        return expr
    return f"{expr}{{{least},{most}}}"


def _literal(text: str) -> str:
    """``text`` (ASCII) as a GBNF string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _plus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _times(size: int | None, count: int, separator: int = 0) -> int | None:
    return None if size is None else count * (size + separator)


def _largest(sizes: Iterator[int | None]) -> int | None:
    most = 0
    for size in sizes:
        if size is None:
            return None
        most = max(most, size)
    return most


# --- checking a value in Python -------------------------------------------------------------
def validate(value: Any, schema: Any, root: Any = None) -> bool:
    """Whether ``value`` is valid against ``schema``, for the subset :func:`schema_grammar`
    accepts (check the schema with it first)."""
    root = schema if root is None else root
    if schema is True or schema == {}:
        return True
    if not isinstance(schema, dict):
        return False
    if "$ref" in schema:
        return validate(value, _resolve(schema["$ref"], root, "#"), root)
    if "allOf" in schema and not validate(value, schema["allOf"][0], root):
        return False
    if "const" in schema and not _same(value, schema["const"]):
        return False
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        return False
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches and not any(validate(value, branch, root) for branch in branches):
        return False
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_is_type(value, name) for name in kinds):
            return False
    return _numbers_ok(value, schema) and _structure_ok(value, schema, root)


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _is_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return _whole(value) or (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    expected = {"object": dict, "array": list, "string": str, "boolean": bool}.get(kind)
    return value is None if kind == "null" else expected is not None and isinstance(value, expected)


def _numbers_ok(value: Any, schema: dict[str, Any]) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return True
    if "minimum" in schema and value < schema["minimum"]:
        return False
    if "maximum" in schema and value > schema["maximum"]:
        return False
    return not ("exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"])


def _structure_ok(value: Any, schema: dict[str, Any], root: Any) -> bool:
    if isinstance(value, str):
        return schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", math.inf)
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", math.inf):
            return False
        prefix = schema.get("prefixItems", [])
        if not all(validate(v, s, root) for v, s in zip(value, prefix, strict=False)):
            return False
        items = schema.get("items", True)
        return all(validate(v, items, root) for v in value[len(prefix) :])
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        if any(name not in value for name in schema.get("required", [])):
            return False
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                if not validate(item, properties[name], root):
                    return False
            elif extra is False or (isinstance(extra, dict) and not validate(item, extra, root)):
                return False
    return True
