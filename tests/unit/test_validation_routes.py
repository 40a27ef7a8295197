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

from streams.contracts import _acceptor, _decided_conditions, schemas_dir, validator


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


def _agreements(name: str, variants: Any, as_is: bool) -> int:
    """How many instances ``validator(name)`` judged as the whole schema does (asserted for
    each): each example's ``variants``, with every value of every enumerated field, and
    also unchanged when ``as_is``."""
    schema = _schema(name)
    whole, tested = fastjsonschema.compile(schema), validator(name)
    fields = [*schema.get("properties", {}), "unknown_field"]
    enums = {f: s["enum"] for f, s in schema.get("properties", {}).items() if "enum" in s}
    cases = [*enums.items(), *([("", [None])] if as_is else [])]
    checked = 0
    for path in _examples(name):
        example = orjson.loads(path.read_bytes())
        if not isinstance(example, dict):
            continue
        for variant in variants(example, fields):
            for field, values in cases:
                for value in values:
                    instance = variant if not field else {**variant, field: value}
                    assert _outcome(tested, instance) == _outcome(whole, instance), instance
                    checked += 1
    return checked


@pytest.mark.parametrize("name", ROUTED)
def test_routed_validators_agree_with_the_whole_schema(name: str) -> None:
    assert _agreements(name, _variants, as_is=False) > 1000


def test_user_events_are_routed_by_type() -> None:
    """The schema this exists for: an activity event is validated without its condition."""
    assert "user-event" in ROUTED
    routed = validator("user-event")
    activity = {"event_id": "e1", "user_id": "u1", "type": "like",
                "event_time_ms": 1_767_225_600_000, "tz": "UTC"}
    routed(activity)
    with pytest.raises(fastjsonschema.JsonSchemaValueException, match="intent_id"):
        routed({**activity, "type": "push_opened"})



EDGE_VALUES = [*ODD_VALUES, 1_767_225_600_000, 1_767_225_600_000.0, 946_684_799_999,
               4_102_444_800_001, "x" * 64, "x" * 65, "x" * 128, "x" * 129, "x" * 257,
               "Europe/Berlin", "+05:30", "+15:00", "a b", "live_started", "Live", False,
               {"a": 1}]


def _edge_variants(example: dict[str, Any], fields: list[str]) -> Any:
    """The example, without one or two of its fields, and with each field set to each
    edge value (alone, and with another field missing)."""
    yield example
    for a, b in itertools.combinations(fields, 2):
        yield {k: v for k, v in example.items() if k not in (a, b)}
    for field, value in itertools.product(fields, EDGE_VALUES):
        yield {**example, field: value}
        for other in fields[:: max(1, len(fields) // 3)]:
            if other != field:
                yield {k: v for k, v in {**example, field: value}.items() if k != other}


@pytest.mark.parametrize("name", ["user-event", "notification-candidate"])
def test_quick_acceptance_agrees_with_the_whole_schema(name: str) -> None:
    """``validator`` first asks a generated check that only accepts (``_acceptor``); whatever
    it does not accept goes to fastjsonschema. Either way the outcome, defaults filled in or
    the error, is the whole schema's."""
    assert _agreements(name, _edge_variants, as_is=True) > 1000


@pytest.mark.parametrize("name", ["user-event", "notification-candidate"])
def test_the_inputs_have_a_quick_acceptance(name: str) -> None:
    schema = _schema(name)
    decided = _decided_conditions(schema)
    for each in [schema] if decided is None else decided[1].values():
        assert _acceptor(each, fastjsonschema.compile(each)) is not None
