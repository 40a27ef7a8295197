"""The bytes of a model snapshot: data that nothing can execute when read, signed with a key.

A snapshot is three parts::

    PUSHFLOW-MODEL\\n
    hmac-sha256=<64 hex digits>\\n    (or "unsigned\\n" when no key is configured)
    <body: one JSON object>

The body holds only numbers, strings, lists and objects (decoded by orjson, never unpickled),
and the signature is an HMAC-SHA256 of the body bytes. Reading checks, in order: the size, the
magic, the signature line, the signature (when a key is set), the JSON, the format number. The
model (:mod:`streams.model`) then checks every value it reads with the ``read_*`` helpers below,
so junk of any kind is a :class:`~streams.errors.SnapshotError` that says what was wrong.

>>> raw = encode({"format": 4, "version": 3}, key=b"k")
>>> raw.split(b"\\n")[1][:12]
b'hmac-sha256='
>>> decode(raw, key=b"k", model_format=4)["version"]
3
>>> decode(raw, key=b"other", model_format=4)
Traceback (most recent call last):
...
streams.errors.BadSignature: snapshot signature does not match the configured snapshot_key
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from typing import Any

import orjson

from streams.errors import (
    BadSignature,
    IncompatibleSnapshot,
    SnapshotError,
    SnapshotTooLarge,
    UnsignedSnapshot,
)

MAGIC = b"PUSHFLOW-MODEL\n"
SIGNED = b"hmac-sha256="
UNSIGNED = b"unsigned"
# The follower fetches up to 64 MiB and the topic accepts as much; a body is parsed only below.
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
# Room for hashed sparse features (a few hundred thousand weights), not for a memory bomb.
MAX_ENTRIES = 2_000_000
MAX_NAME_CHARS = 512
MAX_COUNT = 2**53  # beyond this a float no longer counts by ones
MAX_FLOAT = 1e300  # finite, with room to spare before arithmetic on it overflows


def sign(body: bytes, key: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).hexdigest().encode()


def encode(document: Mapping[str, Any], key: bytes | None) -> bytes:
    """Magic, signature line and body; signed when ``key`` is set."""
    body = orjson.dumps(document)
    signature = SIGNED + sign(body, key) if key else UNSIGNED
    return MAGIC + signature + b"\n" + body


def decode(raw: bytes, key: bytes | None, model_format: int) -> dict[str, Any]:
    """The body of a snapshot as a JSON object, verified; nothing in it is executed."""
    if not isinstance(raw, bytes | bytearray):
        raise SnapshotError(f"snapshot is {type(raw).__name__}, not bytes")
    if len(raw) > MAX_SNAPSHOT_BYTES:
        raise SnapshotTooLarge(f"snapshot of {len(raw)} bytes is over {MAX_SNAPSHOT_BYTES}")
    if not raw.startswith(MAGIC):
        raise SnapshotError("not a pushflow model snapshot (bad magic)")
    signature, newline, body = bytes(raw[len(MAGIC) :]).partition(b"\n")
    if not newline:
        raise SnapshotError("snapshot has no body")
    if signature.startswith(b"{"):
        # formats 1-3: a JSON header line then a pickled body, which is never read
        raise IncompatibleSnapshot("snapshot in a pickled format (3 or older) is not read")
    _verify(signature, body, key)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SnapshotError(f"snapshot body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise SnapshotError("snapshot body is not a JSON object")
    found = document.get("format")
    if found != model_format or isinstance(found, bool):
        raise IncompatibleSnapshot(
            f"snapshot format {str(found)[:20]!r} cannot be loaded by format {model_format}"
        )
    return document


def _verify(signature: bytes, body: bytes, key: bytes | None) -> None:
    if signature == UNSIGNED:
        if key:
            raise UnsignedSnapshot("unsigned snapshot refused: a snapshot_key is configured")
        return
    if not signature.startswith(SIGNED):
        raise SnapshotError(f"unreadable snapshot signature line {signature[:40]!r}")
    if key and not hmac.compare_digest(signature.removeprefix(SIGNED), sign(body, key)):
        raise BadSignature("snapshot signature does not match the configured snapshot_key")


class Fields:
    """Typed, bounded reads from one JSON object of a snapshot; each error names its path.

    >>> Fields({"l2": 0.5, "n": True}).number("l2", 0.0, 1.0)
    0.5
    >>> Fields({"n": True}, "open").count("n")
    Traceback (most recent call last):
    ...
    streams.errors.SnapshotError: open.n is bool, not an integer
    """

    def __init__(self, document: Mapping[str, Any], where: str = "snapshot") -> None:
        self.document = document
        self.where = where

    def number(self, key: str, low: float, high: float) -> float:
        """A finite number within [low, high]; an int is taken as the float it equals."""
        return _number(self._get(key), f"{self.where}.{key}", low, high)

    def count(self, key: str, high: int = MAX_COUNT) -> int:
        """A whole number within [0, high]."""
        return _count(self._get(key), f"{self.where}.{key}", high)

    def object(self, key: str) -> Fields:
        return Fields(_object(self._get(key), f"{self.where}.{key}"), f"{self.where}.{key}")

    def floats(self, key: str) -> dict[str, float]:
        """Names to finite numbers, in their order (weights, means: names are open-ended)."""
        what = f"{self.where}.{key}"
        entries = _object(self._get(key), what)
        # one pass in the common case (hundreds of thousands of weights); NaN fails both bounds
        if all(type(v) is float and -MAX_FLOAT <= v <= MAX_FLOAT for v in entries.values()):
            return entries
        return {n: _number(v, f"{what}[{n!r}]", -MAX_FLOAT, MAX_FLOAT) for n, v in entries.items()}

    def counts(self, key: str) -> dict[str, int]:
        what = f"{self.where}.{key}"
        entries = _object(self._get(key), what)
        if all(type(v) is int and 0 <= v <= MAX_COUNT for v in entries.values()):
            return entries
        return {n: _count(v, f"{what}[{n!r}]", MAX_COUNT) for n, v in entries.items()}

    def _get(self, key: str) -> Any:
        if key not in self.document:
            raise SnapshotError(f"{self.where} has no {key!r}")
        return self.document[key]


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SnapshotError(f"{what} is {_kind(value)}, not a number")
    if not (math.isfinite(value) and low <= value <= high):
        raise SnapshotError(f"{what} = {value!r} is not a finite number in [{low}, {high}]")
    return float(value)


def _count(value: Any, what: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SnapshotError(f"{what} is {_kind(value)}, not an integer")
    if not 0 <= value <= high:
        raise SnapshotError(f"{what} = {value} is outside [0, {high}]")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SnapshotError(f"{what} is {_kind(value)}, not an object")
    if len(value) > MAX_ENTRIES:
        raise SnapshotTooLarge(f"{what} has {len(value)} entries, over {MAX_ENTRIES}")
    longest = max(map(len, value), default=0)
    if longest > MAX_NAME_CHARS:
        raise SnapshotError(f"{what} has a name of {longest} characters")
    return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
