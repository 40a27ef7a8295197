"""A validator routed by a schema's enumerated field accepts and refuses exactly what the whole
schema does, with the same error (``streams.contracts.validator``)."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import pytest

from streams.contracts import _decided_conditions, schemas_dir, validator


def _schema(name: str) -> dict[str, Any]:
    return dict(orjson.loads((schemas_dir() / f"{name}.schema.json").read_bytes()))


ALL = sorted(p.name.removesuffix(".schema.json") for p in schemas_dir().glob("*.schema.json"))
ROUTED = [name for name in ALL if _decided_conditions(_schema(name)) is not None]
ODD_VALUES = [None, 0, -1, 1.5, True, "", "x" * 200, [], {}, "push_opened", "uninstall"]


def _outcome(validate: Any, instance: Any) -> tuple[str, Any]:
    instance = copy.deepcopy(instance)  # fastjsonschema may fill in defaults
    try:
        validate(instance)
    except fastjsonschema.JsonSchemaValueException as exc:
        return "refused", exc.message
    return "accepted", instance


def _variants(example: dict[str, Any], fields: list[str]) -> Any:
    yield example
    for field in fields:
        yield {k: v for k, v in example.items() if k != field}
        for value in ODD_VALUES:
            yield {**example, field: value}
    for a, b in itertools.combinations(fields, 2):
        yield {k: v for k, v in example.items() if k not in (a, b)}


def _examples(name: str) -> list[Path]:
    return sorted((schemas_dir() / "examples" / name).glob("*.json"))


@pytest.mark.parametrize("name", ROUTED)
def test_routed_validators_agree_with_the_whole_schema(name: str) -> None:
    schema = _schema(name)
    whole, routed = fastjsonschema.compile(schema), validator(name)
    fields = [*schema.get("properties", {}), "unknown_field"]
    enums = {f: s["enum"] for f, s in schema.get("properties", {}).items() if "enum" in s}
    checked = 0
    for path in _examples(name):
        example = orjson.loads(path.read_bytes())
        if not isinstance(example, dict):
            continue
        for variant in _variants(example, fields):
            for field, values in enums.items():  # every value of every enumerated field
                for value in values:
                    instance = {**variant, field: value}
                    assert _outcome(routed, instance) == _outcome(whole, instance), instance
                    checked += 1
    assert checked > 1000


def test_user_events_are_routed_by_type() -> None:
    """The schema this exists for: an activity event is validated without its condition."""
    assert "user-event" in ROUTED
    routed = validator("user-event")
    activity = {"event_id": "e1", "user_id": "u1", "type": "like",
                "event_time_ms": 1_767_225_600_000, "tz": "UTC"}
    routed(activity)
    with pytest.raises(fastjsonschema.JsonSchemaValueException, match="intent_id"):
        routed({**activity, "type": "push_opened"})
