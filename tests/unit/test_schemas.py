"""The message schemas in schemas/ and their examples in schemas/examples/<name>/.

Every schema must be a valid draft 2020-12 schema, must compile with fastjsonschema (what the
worker uses), and must agree with jsonschema on every example: valid-*.json files pass both,
invalid-*.json files (each breaking exactly one rule, named in the file name) fail both.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest
from jsonschema import Draft202012Validator

SCHEMAS_DIR = Path(__file__).parents[2] / "schemas"
EXAMPLES_DIR = SCHEMAS_DIR / "examples"

INPUT_SCHEMAS = ("user-event", "notification-candidate")
OUTPUT_SCHEMAS = (
    "notification-intent",
    "notification-decision",
    "dead-letter",
    "training-example",
)
INTERNAL_SCHEMAS = ("event-time-tick",)  # written and read by the worker itself
ALL_SCHEMAS = INPUT_SCHEMAS + OUTPUT_SCHEMAS + INTERNAL_SCHEMAS
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def load_schema(name: str) -> dict[str, Any]:
    return load_json(SCHEMAS_DIR / f"{name}.schema.json")


def example_files(name: str, prefix: str) -> list[Path]:
    return sorted((EXAMPLES_DIR / name).glob(f"{prefix}-*.json"))


def example_params(prefix: str) -> list[Any]:
    return [
        pytest.param(name, path, id=f"{name}/{path.name}")
        for name in ALL_SCHEMAS
        for path in example_files(name, prefix)
    ]


def fast_validator(name: str) -> Any:
    return fastjsonschema.compile(load_schema(name))


def fast_is_valid(validate: Any, instance: Any) -> bool:
    # fastjsonschema fills in "default" values, so it gets its own copy.
    try:
        validate(copy.deepcopy(instance))
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def iter_property_schemas(schema: dict[str, Any], where: str = "$"):
    """Yield (path, subschema) for every property of the message, nested ones included.

    Only the data description is walked; the conditions under allOf / if / then are rules
    about properties already described, not properties of their own.
    """
    for prop, sub in schema.get("properties", {}).items():
        yield f"{where}.{prop}", sub
        if isinstance(sub, dict):
            yield from iter_property_schemas(sub, f"{where}.{prop}")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield f"{where}.*", extra
        yield from iter_property_schemas(extra, f"{where}.*")


def iter_keys(schema: Any):
    if isinstance(schema, dict):
        for key, value in schema.items():
            yield key
            if key not in ("examples", "const", "enum", "default", "properties"):
                yield from iter_keys(value)
            elif key == "properties":
                for sub in value.values():
                    yield from iter_keys(sub)
    elif isinstance(schema, list):
        for item in schema:
            yield from iter_keys(item)


def test_schema_files_match_the_expected_set() -> None:
    found = {p.name.removesuffix(".schema.json") for p in SCHEMAS_DIR.glob("*.schema.json")}
    assert found == set(ALL_SCHEMAS)
    example_dirs = {p.name for p in EXAMPLES_DIR.iterdir() if p.is_dir()}
    assert example_dirs == set(ALL_SCHEMAS)


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == DRAFT_2020_12
    assert schema["$id"] == f"https://pushflow.dev/schemas/{name}.schema.json"
    assert schema.get("title")
    assert schema.get("description")
    assert schema["type"] == "object"


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_schema_compiles_with_fastjsonschema(name: str) -> None:
    assert callable(fast_validator(name))


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_every_property_has_a_description(name: str) -> None:
    missing = [
        path
        for path, sub in iter_property_schemas(load_schema(name))
        if not (isinstance(sub, dict) and sub.get("description"))
    ]
    assert not missing, f"properties without description: {missing}"


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_no_format_keyword(name: str) -> None:
    # Validators disagree on "format" (assertion vs annotation); nothing may depend on it.
    assert "format" not in set(iter_keys(load_schema(name)))


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_additional_properties_policy(name: str) -> None:
    schema = load_schema(name)
    # Inputs ignore unknown fields (forward compatibility); outputs never produce any.
    expected = name in INPUT_SCHEMAS
    assert schema["additionalProperties"] is expected


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_schema_own_examples_validate(name: str) -> None:
    schema = load_schema(name)
    examples = schema.get("examples")
    assert isinstance(examples, list) and examples
    validator = Draft202012Validator(schema)
    validate = fastjsonschema.compile(schema)
    for instance in examples:
        validator.validate(instance)
        assert fast_is_valid(validate, instance)


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_each_schema_has_valid_and_invalid_examples(name: str) -> None:
    assert example_files(name, "valid"), f"no valid examples for {name}"
    assert example_files(name, "invalid"), f"no invalid examples for {name}"
    stray = [
        p.name
        for p in (EXAMPLES_DIR / name).iterdir()
        if not (p.suffix == ".json" and p.name.startswith(("valid-", "invalid-")))
    ]
    assert not stray, f"example files not named valid-*.json / invalid-*.json: {stray}"


@pytest.mark.parametrize(("name", "path"), example_params("valid"))
def test_valid_example_passes_both_validators(name: str, path: Path) -> None:
    instance = load_json(path)
    Draft202012Validator(load_schema(name)).validate(instance)
    assert fast_is_valid(fast_validator(name), instance)


@pytest.mark.parametrize(("name", "path"), example_params("invalid"))
def test_invalid_example_fails_both_validators(name: str, path: Path) -> None:
    instance = load_json(path)
    errors = list(Draft202012Validator(load_schema(name)).iter_errors(instance))
    # Each invalid example breaks exactly one rule.
    assert len(errors) == 1, [e.message for e in errors]
    assert not fast_is_valid(fast_validator(name), instance)
