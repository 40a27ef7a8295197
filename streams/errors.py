"""Every exception pushflow raises on purpose.

::

    PushflowError
    ├── ConfigError            a setting is missing or out of range
    ├── ContractError          input bytes are not a valid message (becomes a dead letter)
    │   ├── PayloadTooLarge
    │   ├── InvalidJSON
    │   ├── SchemaViolation
    │   ├── UnknownTimeZone
    │   ├── BadTime
    │   ├── KeyMismatch
    │   ├── ProcessingError    a bug met while processing one valid message
    │   └── OutputTooLarge     the broker refused a record the worker wrote as too large
    ├── SnapshotError          a model snapshot cannot be used (refused, counted by reason)
    │   ├── IncompatibleSnapshot
    │   ├── SnapshotTooLarge
    │   ├── UnsignedSnapshot
    │   └── BadSignature
    └── BrokerError            the broker cannot be reached or started

Bad input is an expected outcome (a dead letter and a counter), never a crash; anything else
that raises is a bug and surfaces.
"""

from __future__ import annotations


class PushflowError(Exception):
    """Root of every exception pushflow raises on purpose."""


class ConfigError(PushflowError):
    """A setting is missing, malformed or out of range."""


class ContractError(PushflowError):
    """Input bytes are not a valid message; ``code`` names the dead-letter error code."""

    code = "schema_violation"


class PayloadTooLarge(ContractError):
    """The raw message is larger than ``max_message_bytes``."""

    code = "too_large"


class InvalidJSON(ContractError):
    """The bytes are not one UTF-8 JSON value."""

    code = "invalid_json"


class NotAnObject(ContractError):
    """The JSON value is not an object."""

    code = "not_an_object"


class SchemaViolation(ContractError):
    """The JSON object breaks its JSON Schema."""

    code = "schema_violation"


class UnknownTimeZone(ContractError):
    """``tz`` is neither a known IANA zone nor a UTC offset."""

    code = "unknown_time_zone"


class BadTime(ContractError):
    """A timestamp is inconsistent (e.g. a candidate that expires before it was created)."""

    code = "bad_time"


class KeyMismatch(ContractError):
    """The message key is not the user id, so the message sits on the wrong partition."""

    code = "key_mismatch"


class ProcessingError(ContractError):
    """Processing one message raised unexpectedly: a bug, logged with its traceback and
    dead-lettered so the partition keeps moving."""

    code = "processing_error"


class OutputTooLarge(ContractError):
    """A record the worker wrote was refused as too large (a broker or topic limit below
    ``max_output_bytes``): it is dead-lettered in its place, cut to fit, rather than sent
    again for ever."""

    code = "output_too_large"


class SnapshotError(PushflowError):
    """A model snapshot cannot be read; ``reason`` labels the refusal counter."""

    reason = "invalid"


class IncompatibleSnapshot(SnapshotError):
    """A snapshot was written by an incompatible version of the model code."""

    reason = "incompatible"


class SnapshotTooLarge(SnapshotError):
    """A snapshot, or one of its objects, is larger than any model this code writes."""

    reason = "too_large"


class UnsignedSnapshot(SnapshotError):
    """A snapshot without a signature while a ``snapshot_key`` is configured."""

    reason = "unsigned"


class BadSignature(SnapshotError):
    """A snapshot whose signature does not match the configured ``snapshot_key``."""

    reason = "bad_signature"


class BrokerError(PushflowError):
    """The broker cannot be reached or started."""
