"""The edge: bytes in, typed frozen messages out, and back to bytes.

Every input is checked against its JSON Schema (``schemas/``, compiled once with
fastjsonschema) and a few rules a schema cannot express (the time zone exists, a candidate
does not expire before it is created, the key is the user id). Anything wrong raises a
:class:`~streams.errors.ContractError` whose ``code`` is the dead-letter error code.

>>> raw = (b'{"event_id":"e1","user_id":"u1","type":"app_open",'
...        b'"event_time_ms":1767225600000,"tz":"Asia/Tokyo"}')
>>> parse_user_event(raw, key=b"u1")
UserEvent(event_id='e1', user_id='u1', type='app_open', event_time_ms=1767225600000,
          tz='Asia/Tokyo', intent_id=None, content_id=None, creator_id=None)
>>> parse_user_event(b'{"user_id": 1', key=None)
Traceback (most recent call last):
...
streams.errors.InvalidJSON: not valid JSON: unexpected end of data: line 1 column 14 (char 13)
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import cache, lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import fastjsonschema
import orjson

from streams.errors import (
    BadTime,
    ContractError,
    InvalidJSON,
    KeyMismatch,
    NotAnObject,
    PayloadTooLarge,
    SchemaViolation,
    UnknownTimeZone,
)

FEEDBACK_TYPES = frozenset(
    {"push_delivered", "push_opened", "push_dismissed", "push_disabled", "uninstall"}
)
INTENT_NAMESPACE = uuid.UUID("6f1d2a8e-3c4b-5d6e-8f90-a1b2c3d4e5f6")
_OFFSET = re.compile(r"^([+-])(\d\d):(\d\d)$")
DEFAULT_MAX_BYTES = 65536


@dataclass(frozen=True, slots=True)
class UserEvent:
    """One activity or push-feedback event of one user."""

    event_id: str
    user_id: str
    type: str
    event_time_ms: int
    tz: str
    intent_id: str | None = None
    # What an activity event was about, when the producer says: a creator named here adds to
    # the user's affinity for that creator (streams.features.bump_affinity).
    content_id: str | None = None
    creator_id: str | None = None

    @property
    def is_feedback(self) -> bool:
        return self.type in FEEDBACK_TYPES


@dataclass(frozen=True, slots=True)
class Candidate:
    """A notification some upstream service would like to send to one user."""

    candidate_id: str
    user_id: str
    kind: str
    content_id: str
    created_at_ms: int
    expires_at_ms: int
    critical: bool = False
    creator_id: str | None = None
    tz: str | None = None
    title: str | None = None

    @property
    def intent_id(self) -> str:
        return intent_id_for(self.user_id, self.candidate_id)


@lru_cache(maxsize=65_536)  # a candidate's id is derived several times while it is decided
def intent_id_for(user_id: str, candidate_id: str) -> str:
    """Deterministic intent id of one user's candidate: a replay re-emits the same id.

    Upstream candidate ids are unique per user only, so the user is part of the name. The name
    is the UTF-8 byte length of ``user_id``, a colon, then both ids (``"2:u1c-1"``): the length
    says where the user id ends, so ``("a:b", "c")`` and ``("a", "b:c")`` cannot collide.

    >>> intent_id_for("u1", "c-1") == intent_id_for("u1", "c-1") != intent_id_for("u2", "c-1")
    True
    >>> intent_id_for("a:b", "c") != intent_id_for("a", "b:c")
    True
    >>> intent_id_for("u1", "c-1")
    '18e078d9-e2a2-5dd7-8336-055dfadaa241'
    """
    name = f"{len(user_id.encode())}:{user_id}{candidate_id}"
    return str(uuid.uuid5(INTENT_NAMESPACE, name))


def schemas_dir() -> Path:
    """The JSON Schemas: inside the installed package, or beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_schemas", here.parent / "schemas"):
        if (candidate / "user-event.schema.json").is_file():
            return candidate
    raise FileNotFoundError(f"no schemas/ beside {here}")


@cache
def validator(name: str) -> Callable[[Any], Any]:
    """The compiled fastjsonschema validator of ``schemas/<name>.schema.json``.

    A schema whose ``allOf`` holds conditions on one enumerated property (``if`` the ``type``
    is one of these, ``then`` ...) gets one validator per value of that property, with each
    condition already decided: fastjsonschema checks an ``if`` by raising and catching an
    exception when it does not hold, which was most of the cost of validating an activity
    event. A value outside the enumeration, or no value, goes to the whole schema, so every
    message validates, and fails with the same error, exactly as with the whole schema.
    """
    schema = orjson.loads((schemas_dir() / f"{name}.schema.json").read_bytes())
    whole = fastjsonschema.compile(schema)
    routes = _decided_conditions(schema)
    if routes is None:
        accept = _acceptor(schema, whole)
        if accept is None:
            return whole

        def validate_whole(obj: Any) -> Any:
            return obj if accept(obj) else whole(obj)

        return validate_whole
    field, schemas = routes
    by_value = {value: fastjsonschema.compile(decided) for value, decided in schemas.items()}
    accepts = {value: _acceptor(schemas[value], compiled) for value, compiled in by_value.items()}

    def validate(obj: Any) -> Any:
        value = obj.get(field) if isinstance(obj, dict) else None
        if not isinstance(value, str):
            return whole(obj)
        accept = accepts.get(value)
        if accept is not None and accept(obj):
            return obj
        return by_value.get(value, whole)(obj)

    return validate


# The keywords an acceptor (:func:`_acceptor`) knows; a schema using any other has none.
_ACCEPTOR_TOP = {"$schema", "$id", "title", "description", "examples", "type", "properties",
                 "required", "additionalProperties", "allOf"}
_ACCEPTOR_PROPERTY = {"type", "description", "default", "minLength", "maxLength", "pattern",
                      "enum", "minimum", "maximum"}


def _acceptor(
    schema: dict[str, Any], compiled: Callable[[Any], Any]
) -> Callable[[Any], bool] | None:
    """A quick check that says True only of an object ``compiled`` (the fastjsonschema
    validator of ``schema``) accepts, filling in the defaults as it does; False says
    nothing: the message then goes to ``compiled``, which accepts or refuses it with its own
    error. None when ``schema`` uses more than flat properties of type string (lengths,
    pattern, enumeration), integer (bounds), boolean or object and required lists.

    The checks are narrower than the schema's where that is simpler (an integer must be an
    ``int``, not a float such as ``5.0``); such a message still validates, the long way.
    Generated as one function, as fastjsonschema generates its own, but without building an
    exception or a message: the input messages pass it in about a fifth of the time.

    >>> s = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 9},
    ...      "on": {"type": "boolean", "default": False}}, "required": ["n"]}
    >>> accept = _acceptor(s, fastjsonschema.compile(s))
    >>> obj = {"n": 3}
    >>> accept(obj), obj, accept({"n": 10}), accept({"n": 3.0}), accept([])
    (True, {'n': 3, 'on': False}, False, False, False)
    """
    patterns = getattr(compiled, "__globals__", {}).get("REGEX_PATTERNS", {})
    properties = schema.get("properties", {})
    if (set(schema) - _ACCEPTOR_TOP or schema.get("type") != "object"
            or schema.get("additionalProperties", True) is not True
            or not isinstance(properties, dict)):
        return None
    required = set(schema.get("required", ()))
    for part in schema.get("allOf", ()):
        if not isinstance(part, dict) or set(part) - {"required", "description"}:
            return None
        required.update(part.get("required", ()))
    names: dict[str, Any] = {}  # constants the generated code refers to
    # named validate_*, as fastjsonschema's functions are, so profiles count it as validation
    lines = ["def validate_accepts(data):", "    if type(data) is not dict:",
             "        return False", "    get = data.get"]
    defaults = []
    for n, (field, rules) in enumerate(properties.items()):
        if not isinstance(rules, dict) or set(rules) - _ACCEPTOR_PROPERTY:
            return None
        kind, wrong = rules.get("type"), []
        if kind == "string":
            wrong.append("type(v) is not str")
            low, high = rules.get("minLength", 0), rules.get("maxLength")
            if low or high is not None:
                wrong.append(f"not {int(low)} <= len(v)" + ("" if high is None
                                                            else f" <= {int(high)}"))
            if "pattern" in rules:
                if rules["pattern"] not in patterns:
                    return None
                names[f"rx{n}"] = patterns[rules["pattern"]]
                wrong.append(f"not rx{n}.search(v)")
            if "enum" in rules:
                if not all(isinstance(v, str) for v in rules["enum"]):
                    return None
                names[f"enum{n}"] = frozenset(rules["enum"])
                wrong.append(f"v not in enum{n}")
        elif kind == "integer" and not {"minLength", "maxLength", "pattern", "enum"} & set(rules):
            wrong.append("type(v) is not int")
            for bound, test in (("minimum", "v < {}"), ("maximum", "v > {}")):
                if bound in rules:
                    if type(rules[bound]) not in (int, float):
                        return None
                    wrong.append(test.format(repr(rules[bound])))
        elif kind in ("boolean", "object") and set(rules) <= {"type", "description", "default"}:
            wrong.append(f"type(v) is not {'bool' if kind == 'boolean' else 'dict'}")
        else:
            return None
        if "default" in rules:
            if field in required or type(rules["default"]) not in (bool, int, float, str):
                return None
            defaults.append((field, rules["default"]))
        lines += [f"    v = get({field!r}, MISSING)", "    if v is MISSING:",
                  f"        {'return False' if field in required else 'pass'}",
                  f"    elif {' or '.join(wrong)}:", "        return False"]
    lines += [f"    if {field!r} not in data:\n        return False"
              for field in sorted(required - set(properties))]
    lines += [f"    if {field!r} not in data:\n        data[{field!r}] = {value!r}"
              for field, value in defaults]
    lines.append("    return True")
    namespace = {"MISSING": object(), **names}
    exec("\n".join(lines), namespace)  # code made above from the schema alone
    accept: Callable[[Any], bool] = namespace["validate_accepts"]
    return accept


def _decided_conditions(schema: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(field, value -> the schema with its conditions on ``field`` decided for that value),
    or None unless every ``if`` of the top-level ``allOf`` tests ``field`` against an enum
    and ``field`` itself is an enum of strings.

    >>> s = {"properties": {"t": {"enum": ["a", "b"]}}, "allOf": [{"if": {"properties":
    ...      {"t": {"enum": ["a"]}}, "required": ["t"]}, "then": {"required": ["x"]}}]}
    >>> _decided_conditions(s)[1]
    {'a': {'properties': {'t': {'enum': ['a', 'b']}}, 'allOf': [{'required': ['x']}]}, \
'b': {'properties': {'t': {'enum': ['a', 'b']}}, 'allOf': []}}
    """
    conditions = [c for c in schema.get("allOf", ()) if isinstance(c, dict) and "if" in c]
    fields = {_enum_test(c["if"]) for c in conditions}
    if not conditions or len(fields) != 1 or None in fields:
        return None
    field = fields.pop()
    assert field is not None
    values = schema.get("properties", {}).get(field, {}).get("enum")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        return None
    decided = {}
    for value in values:
        parts = []
        for part in schema["allOf"]:
            if part in conditions:
                holds = value in part["if"]["properties"][field]["enum"]
                part = part.get("then" if holds else "else")
            if part is not None:
                parts.append(part)
        decided[value] = {**schema, "allOf": parts}
    return field, decided


def _enum_test(condition: Any) -> str | None:
    """The field of an ``{"properties": {field: {"enum": [...]}}, "required": [field]}``."""
    if not isinstance(condition, dict) or set(condition) != {"properties", "required"}:
        return None
    properties = condition["properties"]
    if not isinstance(properties, dict) or len(properties) != 1:
        return None
    (field, test), = properties.items()
    enum_only = isinstance(test, dict) and set(test) == {"enum"} and isinstance(test["enum"], list)
    return field if enum_only and condition["required"] == [field] else None


def check_size(raw: bytes, max_bytes: int) -> None:
    """A message over ``max_bytes`` is refused before it is decoded (PayloadTooLarge)."""
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"message of {len(raw)} bytes exceeds the limit of {max_bytes}")


def _load_object(raw: bytes, max_bytes: int) -> dict[str, Any]:
    check_size(raw, max_bytes)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise NotAnObject(f"expected a JSON object, got {type(value).__name__}")
    return value


def _validate(name: str, obj: dict[str, Any]) -> None:
    try:
        validator(name)(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise SchemaViolation(f"{name}: {exc.message}") from None


def _check_key(key: bytes | None, user_id: str) -> None:
    if key != user_id.encode():
        shown = None if key is None else key[:64].decode("utf-8", "replace")
        raise KeyMismatch(f"message key {shown!r} is not the user_id {user_id!r}")


def _check_not_future(obj: dict[str, Any], field: str, latest_ms: int | None) -> None:
    if latest_ms is not None and obj[field] > latest_ms:
        ahead_h = (obj[field] - latest_ms) / 3_600_000
        raise BadTime(f"{field} is {ahead_h:.1f} h beyond the latest accepted time")


def parse_tick(raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Bytes from ``event-time-ticks`` -> the partition's event time, or a ContractError.

    >>> parse_tick(b'{"now_ms": 1780315200000}')
    1780315200000
    """
    obj = _load_object(raw, max_bytes)
    _validate("event-time-tick", obj)
    return int(obj["now_ms"])


def parse_training_example(raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Bytes from ``training-examples`` -> the example as a dict, or a ContractError.

    The worker writes this topic itself, but anyone who can write to it would otherwise
    teach the model: it is checked like an input (schema, size; feature values bounded).

    >>> parse_training_example(b'[{"label": 1}]')
    Traceback (most recent call last):
    ...
    streams.errors.NotAnObject: expected a JSON object, got list
    """
    obj = _load_object(raw, max_bytes)
    _validate("training-example", obj)
    return obj


def parse_user_event(
    raw: bytes, key: bytes | None, max_bytes: int = DEFAULT_MAX_BYTES, latest_ms: int | None = None
) -> UserEvent:
    """Bytes from ``user-events`` -> :class:`UserEvent`, or a ContractError.

    ``latest_ms`` bounds event time from above (the worker passes its wall clock plus
    ``max_future_s``): one device with its clock in 2099 must not move a partition's event time.
    """
    return user_event_from(_load_object(raw, max_bytes), key, latest_ms)


def user_event_from(
    obj: dict[str, Any], key: bytes | None, latest_ms: int | None = None
) -> UserEvent:
    """A decoded ``user-events`` message whose size was checked (:func:`check_size`) ->
    :class:`UserEvent`: :func:`parse_user_event` for a reader that decoded it already."""
    _validate("user-event", obj)
    _check_not_future(obj, "event_time_ms", latest_ms)
    check_time_zone(obj["tz"])
    _check_key(key, obj["user_id"])
    get = obj.get
    # by position: a frozen dataclass takes keywords at about twice the cost
    return UserEvent(obj["event_id"], obj["user_id"], obj["type"], int(obj["event_time_ms"]),
                     obj["tz"], get("intent_id"), get("content_id"), get("creator_id"))


def parse_candidate(
    raw: bytes, key: bytes | None, max_bytes: int = DEFAULT_MAX_BYTES, latest_ms: int | None = None
) -> Candidate:
    """Bytes from ``notification-candidates`` -> :class:`Candidate`, or a ContractError."""
    return candidate_from(_load_object(raw, max_bytes), key, latest_ms)


def candidate_from(
    obj: dict[str, Any], key: bytes | None, latest_ms: int | None = None
) -> Candidate:
    """A decoded ``notification-candidates`` message whose size was checked -> Candidate."""
    _validate("notification-candidate", obj)
    _check_not_future(obj, "created_at_ms", latest_ms)
    if obj["expires_at_ms"] < obj["created_at_ms"]:
        raise BadTime("expires_at_ms is before created_at_ms")
    if obj.get("tz") is not None:
        check_time_zone(obj["tz"])
    _check_key(key, obj["user_id"])
    get = obj.get
    return Candidate(obj["candidate_id"], obj["user_id"], obj["kind"], obj["content_id"],
                     int(obj["created_at_ms"]), int(obj["expires_at_ms"]),
                     bool(get("critical", False)), get("creator_id"), get("tz"), get("title"))


# --- time zones -------------------------------------------------------------------------


@cache
def zone(tz: str) -> tzinfo:
    """The tzinfo of an IANA name or a ``+HH:MM`` offset; UnknownTimeZone otherwise.

    >>> zone("+05:30").utcoffset(None)
    datetime.timedelta(seconds=19800)
    """
    if tz in ("Z", "UTC"):
        return UTC
    match = _OFFSET.match(tz)
    if match:
        sign, hours, minutes = match.groups()
        offset = timedelta(hours=int(hours), minutes=int(minutes))
        if offset > timedelta(hours=14) or int(minutes) >= 60:
            raise UnknownTimeZone(f"UTC offset {tz!r} is out of range")
        return timezone(-offset if sign == "-" else offset)
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise UnknownTimeZone(f"unknown time zone {tz!r}") from None


def check_time_zone(tz: str) -> None:
    zone(tz)


def local_time(at_ms: int, tz: str) -> datetime:
    """The user's wall-clock time at ``at_ms`` (DST-aware for IANA zones).

    >>> local_time(1767225600000, "Asia/Tokyo").hour  # 2026-01-01T00:00Z
    9
    """
    return datetime.fromtimestamp(at_ms / 1000, tz=zone(tz))


def local_hour(at_ms: int, tz: str) -> int:
    """``local_time(at_ms, tz).hour``, from the zone's UTC offset during that minute, which
    is looked up once per zone and minute (features ask for it on every activity event).

    A minute in which the zone changes its offset is computed directly, so the result is
    always that of :func:`local_time`.

    >>> local_hour(1767225600000, "Asia/Tokyo"), local_hour(1774746000000, "Europe/Berlin")
    (9, 3)
    """
    offset_s = _minute_offset_s(tz, at_ms // 60_000)
    if offset_s is None:
        return local_time(at_ms, tz).hour
    return (at_ms // 1000 + offset_s) // 3600 % 24


@lru_cache(maxsize=65_536)
def _minute_offset_s(tz: str, minute: int) -> int | None:
    """The zone's UTC offset in seconds throughout this minute since the epoch, or None if
    it differs between the minute's first and last millisecond (a transition inside it)."""
    first = datetime.fromtimestamp(minute * 60, tz=zone(tz)).utcoffset()
    last = datetime.fromtimestamp(minute * 60 + 59.999, tz=zone(tz)).utcoffset()
    if first is None or first != last or first % timedelta(seconds=1):
        return None
    return first // timedelta(seconds=1)


# --- outputs ----------------------------------------------------------------------------


def encode(message: Any) -> bytes:
    """A frozen output dataclass (or a dict) -> JSON bytes."""
    if dataclasses.is_dataclass(message) and not isinstance(message, type):
        message = dataclasses.asdict(message)
    return orjson.dumps(message)


# A dead letter's fields other than the raw bytes take at most this much: error (1000
# characters, 6 bytes each when JSON-escaped), preview (256 such), topic name, two hashes,
# sizes and field names come to under 9 KiB; the rest is headroom.
DEAD_LETTER_RESERVE = 16_384
DEAD_LETTER_KEY_BYTES = 1024  # a longer source key is cut to this for the record's own key
ORDINARY_KEY_BYTES = 1024  # keys up to this size are kept whole in a whole dead letter


def _b64_len(n: int) -> int:
    return 4 * ((n + 2) // 3)


def whole_dead_letter_bytes(payload_bytes: int) -> int:
    """The most a dead letter (its key and value) takes when it keeps a payload of
    ``payload_bytes`` and a key of up to ``ORDINARY_KEY_BYTES`` whole.

    >>> whole_dead_letter_bytes(65536)
    106164
    """
    raw = payload_bytes + ORDINARY_KEY_BYTES
    return DEAD_LETTER_RESERVE + ORDINARY_KEY_BYTES + 8 + _b64_len(raw)


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The dead letter's own Kafka key: the source key, cut when it is oversized (its
    record carries its size and hash)."""
    return None if key is None else key[:DEAD_LETTER_KEY_BYTES]


def _kept(payload: int, key: int, budget: int) -> tuple[int, int]:
    """Bytes of payload and key kept within ``budget`` raw bytes: each gets half, and what
    one does not need goes to the other."""
    keep_key = min(key, max(budget // 2, budget - payload))
    return min(payload, budget - keep_key), keep_key


def dead_letter(
    *,
    raw: bytes | None,
    key: bytes | None,
    source_topic: str,
    partition: int | None,
    offset: int | None,
    error: ContractError,
    failed_at_ms: int,
    max_bytes: int | None = None,
) -> dict[str, Any]:
    """The dead-letter record for bytes that could not be used; nothing is dropped silently.

    With ``max_bytes``, the record and its key (:func:`dead_letter_key`) together take at
    most that many bytes once encoded: a payload or key that would not fit is cut, and the
    record keeps its size and sha256 so it can still be told apart and matched.

    >>> record = dead_letter(raw=b"x" * 100_000, key=b"u1", source_topic="user-events",
    ...                      partition=0, offset=7, error=PayloadTooLarge("too big"),
    ...                      failed_at_ms=1767225600000, max_bytes=50_000)
    >>> record["payload_truncated"], record["payload_size"], len(encode(record)) <= 50_000
    (True, 100000, True)
    """
    raw = raw or b""
    budget = len(raw) + (len(key) if key else 0)
    if max_bytes is not None:
        own_key = len(dead_letter_key(key) or b"")
        room = max(0, max_bytes - DEAD_LETTER_RESERVE - own_key - 8)  # 8: two b64 paddings
        budget = room // 4 * 3
    keep_raw, keep_key = _kept(len(raw), len(key) if key else 0, budget)
    return {
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "key_b64": None if key is None else base64.b64encode(key[:keep_key]).decode(),
        "key_size": None if key is None else len(key),
        "key_sha256": None if key is None else hashlib.sha256(key).hexdigest(),
        "key_truncated": key is not None and keep_key < len(key),
        "payload_b64": base64.b64encode(raw[:keep_raw]).decode(),
        "payload_size": len(raw),
        "payload_sha256": hashlib.sha256(raw).hexdigest(),
        "payload_truncated": keep_raw < len(raw),
        "payload_preview": raw[:1024].decode("utf-8", "replace")[:256],
        "error_code": error.code,
        "error": str(error)[:1000],
        "failed_at_ms": failed_at_ms,
    }
