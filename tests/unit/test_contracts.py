"""The edge: every way bytes can be wrong gives a precise ContractError, never anything else."""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contracts import (
    dead_letter,
    intent_id_for,
    local_time,
    parse_candidate,
    parse_user_event,
    validator,
)
from streams.errors import ContractError

EVENT = {
    "event_id": "e1", "user_id": "u1", "type": "push_opened", "intent_id": "i1",
    "event_time_ms": 1_780_315_200_000, "tz": "Europe/Berlin",
}
CANDIDATE = {
    "candidate_id": "c1", "user_id": "u1", "kind": "live_started", "content_id": "v1",
    "created_at_ms": 1_780_315_200_000, "expires_at_ms": 1_780_318_800_000,
}


def raw(obj: dict, **changes: object) -> bytes:
    return orjson.dumps({**obj, **changes})


def without(obj: dict, field: str) -> bytes:
    return orjson.dumps({k: v for k, v in obj.items() if k != field})


@pytest.mark.parametrize(
    ("payload", "key", "code"),
    [
        (b"", b"u1", "invalid_json"),
        (b"\xff\xfe", b"u1", "invalid_json"),
        (b'{"user_id": "u1"', b"u1", "invalid_json"),
        (b"[1, 2]", b"u1", "not_an_object"),
        (b'"text"', b"u1", "not_an_object"),
        (without(EVENT, "user_id"), b"u1", "schema_violation"),
        (without(EVENT, "intent_id"), b"u1", "schema_violation"),
        (raw(EVENT, type="teleport"), b"u1", "schema_violation"),
        (raw(EVENT, event_time_ms=1.5e12 + 0.5), b"u1", "schema_violation"),
        (raw(EVENT, event_time_ms=10**17), b"u1", "schema_violation"),
        (raw(EVENT, tz="Mars/Olympus_Mons"), b"u1", "unknown_time_zone"),
        (raw(EVENT, tz="+15:00"), b"u1", "schema_violation"),
        (raw(EVENT, tz="+14:30"), b"u1", "unknown_time_zone"),
        (raw(EVENT), b"u2", "key_mismatch"),
        (raw(EVENT), None, "key_mismatch"),
        (raw(EVENT, props={"q": "x" * 70_000}), b"u1", "too_large"),
    ],
)
def test_bad_events_give_precise_codes(payload: bytes, key: bytes | None, code: str) -> None:
    with pytest.raises(ContractError) as caught:
        parse_user_event(payload, key)
    assert caught.value.code == code


def test_integral_floats_are_integers() -> None:
    parsed = parse_user_event(raw(EVENT, event_time_ms=1.78e12), b"u1")
    assert parsed.event_time_ms == 1_780_000_000_000 and isinstance(parsed.event_time_ms, int)


def test_candidate_rules_beyond_the_schema() -> None:
    with pytest.raises(ContractError) as caught:
        parse_candidate(raw(CANDIDATE, expires_at_ms=CANDIDATE["created_at_ms"] - 1), b"u1")
    assert caught.value.code == "bad_time"
    parsed = parse_candidate(raw(CANDIDATE, extra_field=[1, 2]), b"u1")
    assert parsed.critical is False and parsed.intent_id == intent_id_for("u1", "c1")


def test_offsets_and_iana_zones_give_local_time() -> None:
    at = 1_780_315_200_000  # 2026-06-01T12:00Z
    assert local_time(at, "+05:30").hour == 17
    assert local_time(at, "America/New_York").hour == 8  # EDT in June
    assert local_time(at - 120 * 86_400_000, "America/New_York").hour == 7  # EST in winter


def test_dead_letter_keeps_the_raw_bytes_and_validates() -> None:
    payload = b"\x00\xffnot json"
    try:
        parse_user_event(payload, b"k")
    except ContractError as error:
        record = dead_letter(raw=payload, key=b"k", source_topic="user-events", partition=3,
                             offset=42, error=error, failed_at_ms=1_780_315_200_000)
    assert base64.b64decode(record["payload_b64"]) == payload
    validator("dead-letter")(record)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=12,
)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bytes_only_ever_raise_contract_errors(payload: bytes) -> None:
    for parse in (parse_user_event, parse_candidate):
        try:
            parse(payload, b"u1")
        except ContractError as error:
            assert error.code and str(error)


def test_activity_may_say_what_it_was_about() -> None:
    """content_id and creator_id are optional on user events; present, they reach the
    UserEvent (a creator feeds the user's affinity), absent they are None."""
    event = parse_user_event(raw(EVENT, type="like", content_id="v-1", creator_id="alice"), b"u1")
    assert (event.content_id, event.creator_id) == ("v-1", "alice")
    plain = parse_user_event(raw(EVENT), b"u1")
    assert (plain.content_id, plain.creator_id) == (None, None)
    for bad in ({"creator_id": ""}, {"content_id": 7}, {"creator_id": "x" * 129}):
        with pytest.raises(ContractError) as info:
            parse_user_event(raw(EVENT, **bad), b"u1")
        assert info.value.code == "schema_violation"
