"""Hostile input through the pure edge and core, exactly as the worker runs it.

Every generated message goes through ``contracts.parse_*`` and then ``Decider.on_event`` /
``on_candidate`` on its user's state, as ``PushflowWorker.handle`` does. It must end in one of
three documented ways: a ContractError with the precise dead-letter code its mutation calls
for, a valid input ignored for a documented reason (``StepOutput.ignored``), or processed.
Anything else that raises is a bug. Alongside, every output validates against its schema,
learned features are finite, and the state restored from its changelog record decides the
next input exactly as the live state does (what a worker restarted after kill -9 relies on).

The message strategies are reused by ``tests/integration/test_faults.py`` to push a sample of
the same inputs through a real worker. See ``docs/reliability.md``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fastjsonschema
import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from streams.app import decider_config, fresh_model
from streams.contracts import (
    FEEDBACK_TYPES,
    dead_letter,
    encode,
    intent_id_for,
    parse_candidate,
    parse_user_event,
    validator,
)
from streams.errors import ContractError
from streams.features import UserState, state_from_bytes, state_to_bytes, was_decided
from streams.pipeline import Decider, StepOutput
from streams.settings import Settings

MAX_BYTES = 4096
SETTINGS = Settings(max_message_bytes=MAX_BYTES)
EVENT, CANDIDATE = "user_events_topic", "candidates_topic"
CONTRACT_CODES = frozenset({
    "too_large", "invalid_json", "not_an_object", "schema_violation", "unknown_time_zone",
    "bad_time", "key_mismatch",
})
IGNORED_REASONS = frozenset({"too_late", "unknown_intent", "late_feedback", "duplicate_candidate"})
T0 = 1_780_315_200_000  # 2026-06-01T12:00Z
HOUR, DAY = 3_600_000, 86_400_000
MIN_TIME, MAX_TIME = 946_684_800_000, 4_102_444_800_000  # the schemas' 2000..2100
ACTIVITY = ("app_open", "video_view", "like", "comment", "share", "follow", "search")
TYPES = ACTIVITY + tuple(sorted(FEEDBACK_TYPES))
USERS = ("u1", "u2", "ü-3")
CANDIDATE_IDS = ("c0", "c1")
ZONES = ("UTC", "Z", "Europe/Berlin", "Asia/Kolkata", "+05:30", "-08:00", "+14:00",
         "America/St_Johns", "Pacific/Chatham", "Australia/Lord_Howe", "Factory")
NOT_ZONES = ("Mars/Olympus_Mons", "Europe/Atlantis", "America", "Etc/GMT+15", "+14:30",
             "-14:01", "Asia/Tokyo/Shibuya", "UTC+1", "Zulu_Time", "posix/Nowhere")
BAD_TZ_FORMATS = ("", "+5:30", "+15:00", "05:30", "-1:00", "Europe//Berlin", "Europe/Berlin/",
                  "/etc/localtime", "../../etc/passwd", "Europe/Berlin\n", "A" * 65,
                  "Europe/Ber lin")
BAD_KINDS = ("Trending", "1st", "", "a" * 65, "new-video", "kind with space", "trending\n", "_x")
BAD_NUMBERS = (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"0x10", b"01", b"+1",
               b".5", b"1.")
BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\\ud800", b"\\udc00x")
# field -> kind, per topic; the kind picks the wrong-type values
FIELDS = {
    EVENT: {"event_id": "str", "user_id": "str", "type": "str", "event_time_ms": "int",
            "tz": "str", "intent_id": "str", "props": "object"},
    CANDIDATE: {"candidate_id": "str", "user_id": "str", "kind": "str", "content_id": "str",
                "creator_id": "str", "created_at_ms": "int", "expires_at_ms": "int",
                "critical": "bool", "tz": "str", "title": "str"},
}
REQUIRED = {
    EVENT: ("event_id", "user_id", "type", "event_time_ms", "tz"),
    CANDIDATE: ("candidate_id", "user_id", "kind", "content_id", "created_at_ms",
                "expires_at_ms"),
}
ID_FIELDS = ("event_id", "user_id", "intent_id", "candidate_id", "content_id", "creator_id")
TIME_FIELDS = {EVENT: ("event_time_ms",), CANDIDATE: ("created_at_ms", "expires_at_ms")}

ints = st.integers(-(2**63), 2**63 - 1)  # what orjson can write
json_scalars = st.none() | st.booleans() | ints | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
fractional = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())
WRONG_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "str": st.none() | st.booleans() | ints | fractional | st.lists(ints, max_size=2),
    "int": st.none() | st.booleans() | st.text(max_size=10) | fractional | st.just({}),
    "bool": st.none() | st.integers(0, 1) | st.text(max_size=5) | st.just([]),
    "object": st.none() | st.booleans() | ints | st.text(max_size=5) | st.just([1]),
}


@dataclass(frozen=True)
class Message:
    """One input as produced to Kafka, and what its mutation says must come of it.

    ``expect`` is a dead-letter code, ``"valid"`` (processed or a documented ignore, checked
    against the state) or ``"any_code"`` (junk: some contract error).
    """

    topic: str
    key: bytes | None
    raw: bytes
    mutation: str
    expect: str


# --- valid messages (strategies are built once: building them per draw is what costs) -------

# within two hours (so feedback meets its push), or days off (late, out of order); years off
# in the far_time mutation
times = st.integers(T0, T0 + 2 * HOUR) | st.integers(T0 - 10 * DAY, T0 + 2 * DAY)
any_time = st.integers(MIN_TIME, MAX_TIME)
ids = st.sampled_from(("a", "b", "x" * 128, "ü")) | st.text(min_size=1, max_size=12)
props = st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=3)
zones = st.sampled_from(ZONES)
intent_ids = (st.builds(intent_id_for, st.sampled_from(USERS), st.sampled_from(CANDIDATE_IDS))
              | st.uuids().map(str) | ids)
candidate_ids = st.sampled_from(CANDIDATE_IDS) | ids
content_ids = st.sampled_from(("v1", "v2", "v3")) | ids
kinds = st.sampled_from(("trending", "live_started", "comment_reply", "a" * 64))
lifetimes = st.integers(0, 2 * DAY)
optional_candidate_fields = st.fixed_dictionaries({}, optional={
    "critical": st.booleans(), "creator_id": ids, "tz": zones,
    "title": st.text(max_size=24) | st.sampled_from(("", "t" * 256, "é" * 256)),
})
event_types = st.sampled_from(TYPES)
feedback_types = st.sampled_from(sorted(FEEDBACK_TYPES))
reaction_delays = st.integers(0, 90 * 60_000)


@st.composite
def valid_event(draw: st.DrawFn, user: str) -> dict[str, Any]:
    kind = draw(event_types)
    event: dict[str, Any] = {
        "event_id": draw(ids), "user_id": user, "type": kind,
        "event_time_ms": draw(times), "tz": draw(zones),
    }
    if kind in FEEDBACK_TYPES:
        event["intent_id"] = draw(intent_ids)
    if (details := draw(props)) is not None:
        event["props"] = details
    return event


@st.composite
def valid_candidate(draw: st.DrawFn, user: str) -> dict[str, Any]:
    created = draw(times)
    return {
        "candidate_id": draw(candidate_ids), "user_id": user, "kind": draw(kinds),
        "content_id": draw(content_ids), "created_at_ms": created,
        "expires_at_ms": min(MAX_TIME, created + draw(lifetimes)),
        **draw(optional_candidate_fields),
    }


# --- mutations: (draw, topic, valid object) -> (raw, key, expected outcome) ---------------

Mutated = tuple[bytes, bytes | None, str]
field_names = {topic: st.sampled_from(sorted(names)) for topic, names in FIELDS.items()}
required_names = {topic: st.sampled_from(names) for topic, names in REQUIRED.items()}
id_names = {topic: st.sampled_from([f for f in ID_FIELDS if f in names])
            for topic, names in FIELDS.items()}
time_names = {topic: st.sampled_from(names) for topic, names in TIME_FIELDS.items()}
# unknown fields, kept apart from the declared ones by their prefix
extra_fields = st.dictionaries(st.text(max_size=10).map("x_".__add__), json_values,
                               min_size=1, max_size=4)
bad_lengths = st.just("") | st.text(min_size=1, max_size=8).map(lambda t: t + "y" * 128)
out_of_range = st.integers(-(2**63), MIN_TIME - 1) | st.integers(MAX_TIME + 1, 2**64 - 1)
unknown_types = st.text(max_size=20).filter(lambda t: t not in TYPES)
bad_kinds = st.sampled_from(BAD_KINDS)
not_zones = st.sampled_from(NOT_ZONES) | st.from_regex(r"Nowhere/[A-Za-z][A-Za-z0-9_]{0,20}",
                                                       fullmatch=True)
bad_zone_formats = st.sampled_from(BAD_TZ_FORMATS) | st.text(max_size=12).map(" ".__add__)
wrong_keys = st.sampled_from(("none", "empty", "space", "upper", "bytes"))
small_bytes = st.binary(max_size=20)
oversize = st.binary(min_size=1, max_size=16).map(lambda b: b * (MAX_BYTES // len(b) + 1))
padding = st.integers(0, 4 * MAX_BYTES)
json_breakage = st.sampled_from(("truncate", "trailing", "number", "utf8", "nesting", "repr"))
trailing = st.sampled_from((b"x", b",", b"}", b"{}", b"\x00"))
bad_numbers, bad_utf8 = st.sampled_from(BAD_NUMBERS), st.sampled_from(BAD_UTF8)
depths = st.integers(1025, 1400)
non_objects = (json_scalars | st.floats(allow_nan=False, allow_infinity=False)
               | st.lists(json_values, max_size=3))
junk = st.binary(max_size=300) | st.dictionaries(st.text(max_size=12), json_values,
                                                 max_size=6).map(orjson.dumps)
junk_keys = st.none() | st.binary(max_size=8)


def _with_sentinel(obj: dict[str, Any], name: str, replacement: bytes) -> bytes:
    return orjson.dumps({**obj, name: "\x00SENTINEL\x00"}).replace(
        b'"\\u0000SENTINEL\\u0000"', replacement)


def m_valid(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    return orjson.dumps(obj), obj["user_id"].encode(), "valid"


def m_extra_fields(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    extra = draw(extra_fields)
    return orjson.dumps({**obj, **extra}), obj["user_id"].encode(), "valid"


def m_integral_float_time(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    name = draw(time_names[topic])
    return orjson.dumps({**obj, name: float(obj[name])}), obj["user_id"].encode(), "valid"


def m_far_time(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    """Valid, but years away: 2000 or 2099 (a client with a broken clock)."""
    changed = {**obj, **{name: draw(any_time) for name in TIME_FIELDS[topic]}}
    if topic == CANDIDATE:
        changed["expires_at_ms"] = max(changed["expires_at_ms"], changed["created_at_ms"])
    return orjson.dumps(changed), obj["user_id"].encode(), "valid"


def m_at_size_limit(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    padded = {**obj, "padding": ""}
    padded["padding"] = "x" * (MAX_BYTES - len(orjson.dumps(padded)))
    return orjson.dumps(padded), obj["user_id"].encode(), "valid"


def m_too_large(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    if draw(st.booleans()):
        raw = draw(oversize)
    else:
        raw = orjson.dumps({**obj, "padding": "x" * (MAX_BYTES + draw(padding))})
    return raw, obj["user_id"].encode(), "too_large"


def m_drop_required(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    name = draw(required_names[topic])
    rest = {k: v for k, v in obj.items() if k != name}
    return orjson.dumps(rest), obj["user_id"].encode(), "schema_violation"


def m_wrong_type(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    name = draw(field_names[topic])
    value = draw(WRONG_TYPE[FIELDS[topic][name]])
    return orjson.dumps({**obj, name: value}), obj["user_id"].encode(), "schema_violation"


def m_bad_length(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    name, value = draw(id_names[topic]), draw(bad_lengths)
    return orjson.dumps({**obj, name: value}), obj["user_id"].encode(), "schema_violation"


def m_time_out_of_range(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    name, value = draw(time_names[topic]), draw(out_of_range)
    return orjson.dumps({**obj, name: value}), obj["user_id"].encode(), "schema_violation"


def m_unknown_type(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    name, value = ("type", draw(unknown_types)) if topic == EVENT else ("kind", draw(bad_kinds))
    return orjson.dumps({**obj, name: value}), obj["user_id"].encode(), "schema_violation"


def m_unknown_zone(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    raw = orjson.dumps({**obj, "tz": draw(not_zones)})
    return raw, obj["user_id"].encode(), "unknown_time_zone"


def m_bad_zone_format(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    raw = orjson.dumps({**obj, "tz": draw(bad_zone_formats)})
    return raw, obj["user_id"].encode(), "schema_violation"


def m_key_mismatch(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    right = obj["user_id"].encode()
    how = draw(wrong_keys)
    key = {"none": None, "empty": b"", "space": right + b" ", "upper": right.upper() + b"X",
           "bytes": draw(small_bytes) if how == "bytes" else b""}[how]
    return orjson.dumps(obj), (right + b"!" if key == right else key), "key_mismatch"


def m_expires_before_created(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    created = obj["created_at_ms"] if obj["created_at_ms"] > MIN_TIME else MIN_TIME + 1
    expires = created - 1 - draw(lifetimes) % (created - MIN_TIME)
    raw = orjson.dumps({**obj, "created_at_ms": created, "expires_at_ms": expires})
    return raw, obj["user_id"].encode(), "bad_time"


def m_invalid_json(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    good, key = orjson.dumps(obj), obj["user_id"].encode()
    how = draw(json_breakage)
    if how == "truncate":
        raw = good[: draw(st.integers(0, len(good) - 1))]
    elif how == "trailing":
        raw = good + draw(trailing)
    elif how == "number":
        raw = _with_sentinel(obj, TIME_FIELDS[topic][0], draw(bad_numbers))
    elif how == "utf8":
        raw = _with_sentinel(obj, "event_id" if topic == EVENT else "content_id",
                             b'"a' + draw(bad_utf8) + b'b"')
    elif how == "nesting":
        depth = draw(depths)
        raw = _with_sentinel(obj, "props", b'{"x":' + b"[" * depth + b"]" * depth + b"}")
    else:
        raw = repr(obj).encode()
    return raw, key, "invalid_json"


def m_not_an_object(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    value = [obj] if draw(st.booleans()) else draw(non_objects)
    return orjson.dumps(value), obj["user_id"].encode(), "not_an_object"


def m_junk(draw: st.DrawFn, topic: str, obj: dict[str, Any]) -> Mutated:
    return draw(junk), draw(junk_keys), "any_code"


MUTATIONS: dict[str, Callable[[st.DrawFn, str, dict[str, Any]], Mutated]] = {
    name.removeprefix("m_"): fn for name, fn in globals().items() if name.startswith("m_")
}
CANDIDATE_ONLY = frozenset({"expires_before_created"})
VALID_MUTATIONS = frozenset({"valid", "extra_fields", "integral_float_time", "at_size_limit",
                             "far_time"})
VALID_WEIGHT = 4  # valid messages build up state (pending labels, outbox, duplicates)
mutation_names = st.sampled_from(["valid"] * VALID_WEIGHT + sorted(MUTATIONS))
topics = st.sampled_from((EVENT, CANDIDATE))
users = st.sampled_from(USERS)


@st.composite
def messages(draw: st.DrawFn, mutation: str | None = None) -> Message:
    """One message to either input topic, valid or mutated in exactly one way."""
    name = mutation or draw(mutation_names)
    topic = CANDIDATE if name in CANDIDATE_ONLY else draw(topics)
    user = draw(users)
    obj = draw(valid_event(user) if topic == EVENT else valid_candidate(user))
    raw, key, expect = MUTATIONS[name](draw, topic, obj)
    return Message(topic, key, raw, name, expect)


@st.composite
def sequences(draw: st.DrawFn) -> list[Message]:
    """A stream of messages for a few users: feedback follows some candidates, and exact
    redeliveries are mixed in."""
    stream = draw(st.lists(messages(), min_size=10, max_size=40))
    for position in sorted(draw(st.sets(st.integers(0, len(stream) - 1), max_size=6)),
                           reverse=True):
        if stream[position].topic == CANDIDATE and stream[position].expect == "valid":
            stream.insert(position + 1, draw(feedback_for(stream[position])))
    for _ in range(draw(st.integers(0, 3))):
        copy = stream[draw(st.integers(0, len(stream) - 1))]
        stream.insert(draw(st.integers(0, len(stream))), copy)
    return stream


@st.composite
def feedback_for(draw: st.DrawFn, sent: Message) -> Message:
    """What the user did with the push of candidate ``sent``, within about its window."""
    candidate = orjson.loads(sent.raw)
    event = {
        "event_id": "fb", "user_id": candidate["user_id"], "type": draw(feedback_types),
        "event_time_ms": min(MAX_TIME, candidate["created_at_ms"] + draw(reaction_delays)),
        "tz": "UTC", "intent_id": intent_id_for(candidate["user_id"], candidate["candidate_id"]),
    }
    return Message(EVENT, sent.key, orjson.dumps(event), "feedback", "valid")


# --- the worker's handle() without Faust ---------------------------------------------------


@dataclass
class Core:
    """Parse, step the user's state, check the outputs; learn labels like the trainer."""

    decider: Decider = field(init=False)
    states: dict[bytes, UserState] = field(default_factory=dict)
    last: StepOutput | None = None  # what the last valid input produced

    def __post_init__(self) -> None:
        self.model = fresh_model(SETTINGS)
        self.decider = Decider(lambda: self.model, decider_config(SETTINGS))

    def feed(self, message: Message) -> str:
        """The outcome label the worker would count: ``dead_letter:<code>``,
        ``ignored:<reason>`` or ``processed``."""
        parse = parse_candidate if message.topic == CANDIDATE else parse_user_event
        self.last = None
        try:
            parsed = parse(message.raw, message.key, MAX_BYTES)
        except ContractError as exc:
            check_dead_letter(message, exc)
            return f"dead_letter:{exc.code}"
        assert message.expect in ("valid", "any_code"), f"{message.mutation} was accepted"
        assert message.key is not None
        state = self.states.get(message.key) or UserState(parsed.user_id)
        expected = expected_ignore(self.decider, state, parsed)
        restored = state_from_bytes(state_to_bytes(state))  # what a restart would hold
        out = self.step(state, parsed)
        replayed = self.step(restored, parsed)
        assert outputs(replayed) == outputs(out), "restored state decides differently"
        assert state_to_bytes(restored) == state_to_bytes(state)
        self.states[message.key], self.last = state, out
        check_outputs(parsed, out)
        self.learn(out)
        if out.ignored is not None:
            assert out.ignored in IGNORED_REASONS, out.ignored
        assert out.ignored in expected, (out.ignored, expected)
        return "processed" if out.ignored is None else f"ignored:{out.ignored}"

    def step(self, state: UserState, parsed: Any) -> StepOutput:
        if hasattr(parsed, "candidate_id"):
            return self.decider.on_candidate(state, parsed)
        return self.decider.on_event(state, parsed)

    def learn(self, out: StepOutput) -> None:
        for example in out.examples:
            assert all(math.isfinite(v) for v in example.features.values()), example.features
            self.model.learn(example.features, opened=bool(example.label),
                             disabled=bool(example.disabled))


def expected_ignore(decider: Decider, state: UserState, parsed: Any) -> set[str | None]:
    """The documented outcome of a valid input, from the state before it (docs/reliability.md)."""
    if hasattr(parsed, "candidate_id"):
        # every valid candidate is decided once; one decided before emits nothing
        now = max(parsed.created_at_ms, state.watermark_ms)
        return {"duplicate_candidate"} if was_decided(state, parsed.candidate_id, now) else {None}
    if parsed.event_time_ms < state.watermark_ms - decider.config.late_tolerance_ms:
        return {"too_late"}
    if parsed.type not in ("push_opened", "push_dismissed"):
        return {None}
    label = state.pending.get(parsed.intent_id)
    if label is None:
        return {"unknown_intent", "late_feedback"}  # see test_late_feedback_is_counted_as_late
    if parsed.event_time_ms > label.deadline_ms:
        return {"late_feedback", "unknown_intent"}
    return {None}


def outputs(out: StepOutput) -> tuple[Any, ...]:
    return (out.ignored, [encode(d) for d in out.decisions], [encode(i) for i in out.intents],
            [encode(e) for e in out.examples])


def check_dead_letter(message: Message, exc: ContractError) -> None:
    assert exc.code in CONTRACT_CODES, exc.code
    if message.expect not in ("valid", "any_code"):
        assert exc.code == message.expect, (message.mutation, str(exc))
    assert message.expect != "valid", (message.mutation, str(exc))
    record = dead_letter(raw=message.raw, key=message.key, source_topic=message.topic,
                         partition=0, offset=0, error=exc, failed_at_ms=T0)
    validator("dead-letter")(orjson.loads(encode(record)))


def check_outputs(parsed: Any, out: StepOutput) -> None:
    for name, records in (("notification-decision", out.decisions),
                          ("notification-intent", out.intents)):
        for record in records:
            try:
                validator(name)(orjson.loads(encode(record)))
            except fastjsonschema.JsonSchemaValueException as exc:
                raise AssertionError(f"{name} breaks its schema: {exc.message}: {record}") from None
    for example in out.examples:
        validator("training-example")(orjson.loads(encode(example)))
    if hasattr(parsed, "candidate_id") and out.ignored != "duplicate_candidate":
        # decided now, last (a tick first may release or drop held pushes, this one included);
        # a candidate decided before emits nothing: its first decision stands
        assert out.decisions and out.decisions[-1]["candidate_id"] == parsed.candidate_id


# --- tests ----------------------------------------------------------------------------------

FUZZ = settings(max_examples=700, derandomize=True, database=None, deadline=None,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck))


def test_every_hostile_input_ends_in_a_documented_outcome() -> None:
    seen: Counter[str] = Counter()
    mutations: Counter[str] = Counter()

    produced: Counter[str] = Counter()

    @FUZZ
    @given(sequences())
    def run(stream: list[Message]) -> None:
        core = Core()
        for message in stream:
            seen[core.feed(message)] += 1
            mutations[message.mutation] += 1
            if core.last is not None:
                produced.update(f"{d['action']}:{d['reason']}" for d in core.last.decisions)
                produced.update(f"label:{e.outcome}" for e in core.last.examples)

    run()
    total = sum(seen.values())
    print(f"fuzzed {total} inputs: {dict(sorted(seen.items()))}; produced {dict(produced)}")
    assert total >= 10_000
    assert {f"dead_letter:{code}" for code in CONTRACT_CODES} <= set(seen)
    assert {"processed", "ignored:too_late", "ignored:unknown_intent"} <= set(seen)
    assert set(mutations) >= set(MUTATIONS) and min(mutations.values()) >= 100, mutations
    # the stateful paths were reached, not only the edge
    assert {"send:critical", "hold:quiet_hours", "suppress:duplicate", "suppress:expired",
            "label:opened", "label:expired"} <= set(produced), produced


def test_late_feedback_is_counted_as_late() -> None:
    """An open after the attribution window is ``late_feedback`` (docs/metrics.md), not an
    ``unknown_intent``: the intent was sent; its label already resolved as expired."""
    core = Core()
    user = b"u1"
    sent = orjson.dumps({"candidate_id": "c-late", "user_id": "u1", "kind": "trending",
                         "content_id": "v1", "created_at_ms": T0, "expires_at_ms": T0 + DAY,
                         "critical": True})
    assert core.feed(Message(CANDIDATE, user, sent, "valid", "valid")) == "processed"
    [pending] = core.states[user].pending.values()
    late = pending.deadline_ms + 60_000
    opened = orjson.dumps({"event_id": "e-late", "user_id": "u1", "type": "push_opened",
                           "event_time_ms": late, "tz": "UTC", "intent_id": pending.intent_id})
    assert core.feed(Message(EVENT, user, opened, "valid", "valid")) == "ignored:late_feedback"


def sample(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """``count`` deterministic draws of ``strategy`` (for the broker-level fuzz)."""
    found: list[Any] = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


def bad_messages(count: int) -> Iterator[Message]:
    """Mutated messages only (no valid ones), deterministic, for a real worker."""
    bad = sorted(set(MUTATIONS) - VALID_MUTATIONS)
    per = max(1, count // len(bad))
    for name in bad:
        yield from sample(messages(mutation=name), per)
