"""The per-user outbox: pushes decided now and sent later.

A push held for the end of quiet hours or for the user's best local hour waits in
``UserState.outbox`` (so it lives in the user's state record and its changelog, and survives
a restart or rebalance), keyed by intent id, with the candidate and the original decision.
When event time reaches its send time it is released, unless in the meantime it expired, the
user disabled pushes, the same content went out, a guardrail now stops it, or a held push worth
more is due within the minimum gap (then the better one takes the slot); a user active in the
app then has it wait for the end of their activity window (or lose it, past its expiry).

>>> from streams.contracts import Candidate
>>> from streams.features import UserState
>>> from streams.policy import PolicyConfig, decide, Scores
>>> s = UserState("u1", tz="Europe/Berlin")
>>> c = Candidate("c1", "u1", "trending", "v1", 1_767_222_000_000, 1_767_265_200_000)
>>> d = decide(Scores(0.3, 0.0, 1), s, c, 1_767_222_000_000, PolicyConfig(holdout_share=0))
>>> d.action, d.reason, d.send_at_ms  # 00:00 in Berlin: held until 08:00
('hold', 'quiet_hours', 1767250800000)
>>> s.outbox[c.intent_id] = hold_entry(c, d, 1_767_222_000_000)
>>> due(s, 1_767_250_799_999), due(s, 1_767_250_800_000) == [c.intent_id]
([], True)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from streams.contracts import Candidate
from streams.features import MS_DAY, UserState
from streams.guardrails import (
    active_until,
    guardrail,
    held_priority,
    in_quiet_hours,
    quiet_hours_end,
)
from streams.policy import HOLD, Decision, PolicyConfig, Scores


def hold_entry(candidate: Candidate, decision: Decision, decided_at_ms: int) -> dict[str, Any]:
    """The outbox record of a held push (plain JSON types: it goes to the changelog)."""
    return {
        "candidate": dataclasses.asdict(candidate),
        "decision": _decision_fields(decision),
        "decided_at_ms": decided_at_ms,
        "send_at_ms": decision.send_at_ms,
    }


def _decision_fields(decision: Decision) -> dict[str, Any]:
    fields = dataclasses.asdict(decision)
    del fields["displaces"]  # what it displaced is done; a tuple would come back as a list
    return fields


ZONE_UNKNOWN = "zone_unknown"  # outbox entry flag: held until the user's zone is known


def until_zone_known(decision: Decision, candidate: Candidate) -> Decision:
    """No zone is known for the user: quiet hours are assumed, so a push that would go out
    (now or later) is held instead, at the latest until it expires, for the user's device to
    name its zone (:func:`zone_reported`); it is then released or held by that zone's rules."""
    return dataclasses.replace(
        decision, action=HOLD, reason="quiet_hours", send_at_ms=candidate.expires_at_ms,
        displaces=(),
    )


def wait_for_zone(entry: dict[str, Any]) -> None:
    """Due only once it has expired (then dropped as expired), unless a zone is reported."""
    entry[ZONE_UNKNOWN] = True
    entry["send_at_ms"] = entry["candidate"]["expires_at_ms"] + 1


def zone_reported(state: UserState) -> bool:
    """The user's device named its zone: pushes held for it are due from their decision
    time on (the release checks apply in the zone now known). Whether any were waiting."""
    waiting = [entry for entry in state.outbox.values() if entry.pop(ZONE_UNKNOWN, False)]
    for entry in waiting:
        entry["send_at_ms"] = entry["decided_at_ms"]
    return bool(waiting)


def held_candidate(entry: dict[str, Any]) -> Candidate:
    return Candidate(**entry["candidate"])


def held_decision(entry: dict[str, Any]) -> Decision:
    """The original decision; records written before ``Decision.scores`` existed still load."""
    stored = dict(entry["decision"])
    scores = stored.pop("scores", None) or entry.get("scores")
    stored["displaces"] = tuple(stored.get("displaces", ()))
    return Decision(**stored, scores=None if scores is None else Scores(**scores))


def due(state: UserState, now_ms: int) -> list[str]:
    """Intent ids whose send time has come, the most valuable first (ties: earliest, id)."""
    ready = [(i, e) for i, e in state.outbox.items() if e["send_at_ms"] <= now_ms]
    ready.sort(key=lambda item: (-held_priority(item[1]), item[1]["send_at_ms"], item[0]))
    return [intent_id for intent_id, _ in ready]


def release_stop(
    state: UserState, intent_id: str, now_ms: int, config: PolicyConfig
) -> str | None:
    """Why the held push cannot go out now, or None: first of the release checks."""
    entry = state.outbox[intent_id]
    candidate = held_candidate(entry)
    if now_ms > candidate.expires_at_ms:
        return "expired"
    if state.disabled and not candidate.critical:
        return "user_disabled"
    sent_at = state.recent_content.get(candidate.content_id)
    if sent_at is not None and now_ms - sent_at < MS_DAY:
        return "duplicate"
    if candidate.critical:  # quiet hours only if a setting asks, and never past expiry
        if config.critical_in_quiet_hours:
            return None
        return _quiet_critical(state, candidate, now_ms, config)
    return (guardrail(state, now_ms, config) or _better_nearby(state, intent_id, now_ms, config)
            or ("active_now" if active_until(state, now_ms, config) is not None else None))


def _quiet_critical(
    state: UserState, candidate: Candidate, now_ms: int, config: PolicyConfig
) -> str | None:
    """A critical push waits out quiet hours only if they end before it expires (it is then
    rescheduled); otherwise it goes now rather than be lost."""
    if not in_quiet_hours(now_ms, state.tz, config.quiet_start_hour, config.quiet_end_hour):
        return None
    later = quiet_hours_end(now_ms, state.tz, config.quiet_end_hour)
    return "quiet_hours" if later <= candidate.expires_at_ms else None


def _better_nearby(
    state: UserState, intent_id: str, now_ms: int, config: PolicyConfig
) -> str | None:
    """A held push worth more is due within the minimum gap: it takes the slot."""
    mine = held_priority(state.outbox[intent_id])
    for other_id, other in state.outbox.items():
        near = abs(other["send_at_ms"] - now_ms) < config.min_gap_ms
        if other_id != intent_id and near and held_priority(other) > mine:
            return "min_gap"
    return None


def reschedule_after_quiet_hours(
    state: UserState, intent_id: str, now_ms: int, config: PolicyConfig
) -> bool:
    """Event time jumped into quiet hours past a send time: wait for their end if it can."""
    entry = state.outbox[intent_id]
    later = quiet_hours_end(now_ms, state.tz, config.quiet_end_hour)
    if later > entry["candidate"]["expires_at_ms"]:
        return False
    entry["send_at_ms"] = later
    return True


def reschedule_after_activity(
    state: UserState, intent_id: str, now_ms: int, config: PolicyConfig
) -> bool:
    """The user is active in the app at a held push's send time: wait for their activity
    window to end if it can (before it expires)."""
    entry = state.outbox[intent_id]
    later = active_until(state, now_ms, config)
    if later is None or later > entry["candidate"]["expires_at_ms"]:
        return False
    entry["send_at_ms"] = later
    return True
