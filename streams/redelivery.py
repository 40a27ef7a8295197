"""Re-reading an input after a crash re-emits exactly what it emitted the first time.

The worker writes a batch's user-state records before the outputs they caused, and commits the
input offsets after both. A crash in between leaves inputs that are read again although the
user's state already holds them. Deciding again could differ (a newer model, another clock),
so each user's state keeps, per input topic, the offset of the last input applied to it
(``UserState.applied``) and the outputs of recent inputs (``UserState.unconfirmed``) until
their offsets are committed. An input at or below ``applied`` is not applied again: its stored
outputs, if any, are emitted again byte for byte, so downstream sees a duplicate with the same
id and the same content, or nothing new.

>>> from streams.features import UserState
>>> s = UserState("u1")
>>> remember(s, "candidates", 7, [("decisions_topic", {"decision_id": "d1"})])
>>> already_applied(s, "candidates", 7), already_applied(s, "candidates", 8)
(True, False)
>>> stored(s, "candidates", 7)
[('decisions_topic', {'decision_id': 'd1'})]
>>> forget_committed(s, {"candidates": 8}); s.unconfirmed
[]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.features import UserState

Output = tuple[str, dict[str, Any]]  # (logical topic field, record)


def already_applied(state: UserState, kind: str, offset: int) -> bool:
    """Whether this user's state already holds the input at ``offset`` of topic ``kind``."""
    return state.applied.get(kind, -1) >= offset


def remember(state: UserState, kind: str, offset: int, outputs: list[Output]) -> None:
    """Mark the input applied; keep its outputs until its offset is committed."""
    state.applied[kind] = offset
    if outputs:
        state.unconfirmed.append([kind, offset, [list(o) for o in outputs]])


def stored(state: UserState, kind: str, offset: int) -> list[Output]:
    """The outputs the input at ``offset`` of ``kind`` emitted when it was applied."""
    for entry_kind, entry_offset, outputs in state.unconfirmed:
        if entry_kind == kind and entry_offset == offset:
            return [(topic_field, record) for topic_field, record in outputs]
    return []


def forget_committed(state: UserState, committed: Mapping[str, int]) -> None:
    """Drop stored outputs of inputs below the committed offset of their topic."""
    if state.unconfirmed:
        state.unconfirmed = [
            entry for entry in state.unconfirmed if entry[1] >= committed.get(entry[0], 0)
        ]


def applied_beyond(live: UserState, record: UserState) -> bool:
    """Whether ``live`` is a later state of the same user than ``record``: it has applied
    every input ``record`` had, and more. One user's inputs sit in one partition of each input
    topic, so the offsets of ``applied`` only grow as the state moves on; a state record that
    lags the live one on every topic is an older version of it (a changelog that lost the
    newer records), one that is ahead on any topic was written later (by another worker).

    >>> old, new = UserState("u1"), UserState("u1")
    >>> old.applied, new.applied = {"events": 4}, {"events": 6, "ticks": 2}
    >>> applied_beyond(new, old), applied_beyond(old, new), applied_beyond(new, new)
    (True, False, False)
    """
    if live.applied == record.applied:
        return False
    return all(live.applied.get(kind, -1) >= offset for kind, offset in record.applied.items())
