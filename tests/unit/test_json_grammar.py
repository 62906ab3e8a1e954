"""JSON Schema to GBNF: what is refused, what the bound promises, and the Python checker.

That the grammar admits only valid answers is tested by generating under it
(tests/integration/test_structured_output.py); here, the parts that need no model.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest

from selftune.engines.json_grammar import (
    SchemaError,
    any_object_grammar,
    schema_grammar,
    validate,
)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "title": "Name"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name"],
}
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        }
    },
    "$ref": "#/$defs/node",
}


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "string", "pattern": "^a$"}, "#: 'pattern' is not supported"),
        ({"properties": {"n": {"type": "number", "maximum": 3}}}, "#/properties/n: of 'minimum'"),
        ({"type": "integer", "minimum": 5}, "minimum"),
        ({"type": "integer", "minimum": 0, "maximum": 10**6}, "at most 4096 values"),
        ({"type": "array", "uniqueItems": True}, "'uniqueItems'"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "'oneOf'"),
        ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "'allOf'"),
        ({"$ref": "other.json#/x"}, "only local $ref"),
        ({"$ref": "#/$defs/missing"}, "points at nothing"),
        ({"type": "object", "required": ["x"]}, "must also be listed in 'properties'"),
        ({"type": "array", "items": [{"type": "string"}]}, "use 'prefixItems'"),
        ({"type": "string", "minLength": 3, "maxLength": 2}, "no value fits"),
        ({"type": "strin"}, "unknown type"),
        ({"enum": []}, "non-empty list"),
        ({"type": "integer", "enum": ["a", "b"]}, "no value of 'enum'"),
        ({"$ref": "#/$defs/x", "maxLength": 2, "$defs": {"x": {}}}, "['maxLength'] beside '$ref'"),
        ({"type": "object", "anyOf": [{"required": []}]}, "['type'] beside 'anyOf'"),
        (False, "admits no value"),
        ("string", "a schema must be"),
    ],
)
def test_what_cannot_be_enforced_is_refused_with_where(schema: Any, words: str) -> None:
    with pytest.raises(SchemaError, match=re.escape(words)):
        schema_grammar(schema, 1000)


@pytest.mark.parametrize(
    "schema",
    [
        PERSON,
        {"oneOf": [{"type": "string"}, {"type": "integer"}]},  # disjoint: as anyOf
        {
            "oneOf": [
                {"type": "object", "properties": {"kind": {"const": "a"}}, "required": ["kind"]},
                {"type": "object", "properties": {"kind": {"const": "b"}}, "required": ["kind"]},
            ]
        },
        {"allOf": [{"$ref": "#/$defs/x"}], "$defs": {"x": {"type": "null"}}},
        {"type": "integer", "exclusiveMinimum": 0},
        {"type": "integer", "minimum": -5, "maximum": 5},
        {"type": "number", "minimum": 0, "format": "float", "x-anything": 1, "nullable": True},
        True,
        {},
    ],
)
def test_what_can_be_enforced_is_accepted(schema: Any) -> None:
    assert "root ::=" in schema_grammar(schema, 1000).gbnf


@pytest.mark.parametrize("budget", [40, 100, 300, 1000, 4000])
def test_the_longest_answer_fits_the_budget_when_it_can(budget: int) -> None:
    grammar = schema_grammar(PERSON, budget)
    assert grammar.max_bytes is not None and grammar.max_bytes <= budget
    generic = any_object_grammar(budget)
    assert generic.max_bytes is not None and generic.max_bytes <= budget


def test_enum_values_the_rest_of_the_schema_refuses_are_left_out() -> None:
    gbnf = schema_grammar({"type": "string", "enum": ["a", 1, None, "b"]}, 1000).gbnf
    assert '"\\"a\\""' in gbnf and '"\\"b\\""' in gbnf
    assert '"1"' not in gbnf and '"null"' not in gbnf


def test_caps_shrink_only_as_far_as_the_budget_needs() -> None:
    roomy = schema_grammar(PERSON, 100_000)
    tight = schema_grammar(PERSON, 300)
    assert roomy.max_bytes is not None and tight.max_bytes is not None
    assert tight.max_bytes < roomy.max_bytes <= 100_000
    assert "char{0,256}" in roomy.gbnf  # the starting caps fit: nothing shrank
    assert "char{0,256}" not in tight.gbnf
    # A maxLength in the schema is kept where it fits.
    assert "char{0,5}" in schema_grammar({"type": "string", "maxLength": 5}, 4000).gbnf


def test_a_recursive_schema_has_no_bound_and_one_too_large_keeps_its_floor() -> None:
    assert schema_grammar(TREE, 4000).max_bytes is None
    required = {"type": "array", "items": {"type": "string", "minLength": 50}, "minItems": 3}
    grammar = schema_grammar(required, 100)
    assert grammar.max_bytes is not None and not grammar.fits(100)


VALIDATION_CASES: list[tuple[Any, list[Any]]] = [
    (
        PERSON,
        [
            {"name": "x"},
            {"name": "x", "age": -1},
            {"age": 3},
            {"name": 3},
            [],
            {"name": "x", "z": 1},
        ],
    ),
    (
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
        [{"a": 1}, {"a": 1.0}, {"a": True}, {"b": 1}, {}],
    ),
    ({"type": ["string", "null"], "maxLength": 2}, ["ab", "abc", None, 1]),
    ({"enum": ["a", 1, None]}, ["a", 1, None, True, "b"]),
    ({"const": {"k": [1, 2]}}, [{"k": [1, 2]}, {"k": [2, 1]}]),
    (
        {"type": "array", "prefixItems": [{"type": "boolean"}], "items": False},
        [[True], [True, 1], ["x"]],
    ),
    (
        {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 2},
        [[], [1], [1, 2, 3]],
    ),
    ({"type": "object", "additionalProperties": {"type": "integer"}}, [{"a": 1}, {"a": "1"}]),
    (
        {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 3}, {"const": "x"}]},
        [2, 4, "x", "y"],
    ),
    (TREE, [{"children": [{"children": []}]}, {"children": [{"children": 1}]}]),
]


@pytest.mark.parametrize(("schema", "values"), VALIDATION_CASES)
def test_the_python_checker_agrees_with_jsonschema(schema: Any, values: list[Any]) -> None:
    for value in values:
        expected = jsonschema.Draft202012Validator(schema).is_valid(value)
        assert validate(value, schema) == expected, (schema, value)
