"""Guardrails: the rules no model score overrides (caps, gaps, quiet hours, duplicates).

Times are event times in epoch ms; local hours are the user's wall clock (DST-aware for IANA
zones, see :func:`streams.contracts.local_time`). Held pushes (``UserState.outbox``) count as
planned sends: a new send within the minimum gap of a held one must be worth more than it.

>>> from streams.features import UserState
>>> from streams.policy import PolicyConfig
>>> s = UserState("u1", tz="Asia/Tokyo")
>>> guardrail(s, 1_767_225_600_000, PolicyConfig())  # 09:00 in Tokyo
>>> s.recent_sends_ms, s.last_send_ms = [1_767_225_000_000], 1_767_225_000_000
>>> guardrail(s, 1_767_225_600_000, PolicyConfig())
'min_gap'
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from streams.contracts import Candidate, local_hour, local_time
from streams.features import MS_DAY, UserState, sends_in_last_day

if TYPE_CHECKING:  # policy.py imports this module; the config is only an annotation here
    from streams.policy import PolicyConfig


def in_quiet_hours(at_ms: int, tz: str, start_hour: int, end_hour: int) -> bool:
    """Whether the user's local hour falls in [start, end), wrapping midnight.

    >>> in_quiet_hours(0, "UTC", 22, 8), in_quiet_hours(12 * 3_600_000, "UTC", 22, 8)
    (True, False)
    """
    hour = local_hour(at_ms, tz)  # local_time(at_ms, tz).hour, from the zone's cached offset
    if start_hour == end_hour:
        return False
    if start_hour < end_hour:
        return start_hour <= hour < end_hour
    return hour >= start_hour or hour < end_hour


def quiet_hours_end(at_ms: int, tz: str, end_hour: int) -> int:
    """Event time of the next local ``end_hour``:00 after ``at_ms`` (DST-aware).

    A wall-clock time that does not exist that day (spring forward) maps to the instant just
    after the gap; one that occurs twice (fall back) to its first occurrence.

    >>> quiet_hours_end(0, "UTC", 8)  # 1970-01-01T08:00Z
    28800000
    """
    local = local_time(at_ms, tz)
    day = local.replace(tzinfo=None, hour=end_hour, minute=0, second=0, microsecond=0)
    for naive in (day, day + timedelta(days=1), day + timedelta(days=2)):
        target = _epoch_ms(naive.replace(tzinfo=local.tzinfo, fold=0))
        if target > at_ms:
            return target
    raise AssertionError("unreachable: a local hour recurs within two days")


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def guardrail(state: UserState, now_ms: int, config: PolicyConfig) -> str | None:
    """The first of capped / min_gap / new_user_cap / new_user_gap / quiet_hours that stops a
    send at ``now_ms``, or None."""
    sent = sends_in_last_day(state, now_ms)
    if sent >= config.daily_cap:
        return "capped"
    if state.last_send_ms is not None and now_ms - state.last_send_ms < config.min_gap_ms:
        return "min_gap"
    gentler = new_user_limit(state, sent, now_ms, config)
    if gentler is not None:
        return gentler
    if in_quiet_hours(now_ms, state.tz, config.quiet_start_hour, config.quiet_end_hour):
        return "quiet_hours"
    return None


def new_or_returning(state: UserState, now_ms: int, config: PolicyConfig) -> bool:
    """A user with fewer than ``new_user_pushes`` pushes so far, or whose last activity is
    more than ``new_user_inactive_ms`` before ``now_ms`` (0 turns either test off; a user
    with no activity at all is judged by pushes only).

    >>> from streams.policy import PolicyConfig
    >>> s = UserState("u1", last_active_ms=0)
    >>> s.sent = 5
    >>> cfg = PolicyConfig(new_user_pushes=3, new_user_inactive_ms=MS_DAY)
    >>> new_or_returning(s, MS_DAY, cfg), new_or_returning(s, MS_DAY + 1, cfg)
    (False, True)
    """
    if state.sent < config.new_user_pushes:
        return True
    inactive = config.new_user_inactive_ms
    return inactive > 0 and state.last_active_ms is not None and (
        now_ms - state.last_active_ms > inactive)


def new_user_limit(
    state: UserState, sent_24h: int, now_ms: int, config: PolicyConfig
) -> str | None:
    """The gentler cap and gap of a new or returning user, when one of them stops a send:
    ``new_user_daily_cap`` pushes in 24h (0 = only ``daily_cap``) and ``new_user_min_gap_ms``
    between pushes (0 = only ``min_gap_ms``)."""
    cap, gap = config.new_user_daily_cap, config.new_user_min_gap_ms
    if (cap <= 0 and gap <= 0) or not new_or_returning(state, now_ms, config):
        return None
    if 0 < cap <= sent_24h:
        return "new_user_cap"
    if gap > 0 and state.last_send_ms is not None and now_ms - state.last_send_ms < gap:
        return "new_user_gap"
    return None


def active_until(state: UserState, now_ms: int, config: PolicyConfig) -> int | None:
    """When the user's activity window ends, if they were active in the app within
    ``active_now_ms`` of ``now_ms``; None otherwise (or with ``active_now_ms`` 0).

    Activity is the user's own activity events (``UserState.last_active_ms``, event time of
    their device), never push feedback. An activity stamped more than ``active_now_ms``
    *after* ``now_ms`` is a device clock running ahead, not a session now: it is ignored, so
    a skewed clock cannot hold a user's pushes for long (and it is that user's own state only).

    >>> from streams.policy import PolicyConfig
    >>> s, cfg = UserState("u1", last_active_ms=100_000), PolicyConfig(active_now_ms=120_000)
    >>> active_until(s, 150_000, cfg), active_until(s, 220_000, cfg), active_until(s, 0, cfg)
    (220000, None, 220000)
    >>> active_until(UserState("u1", last_active_ms=10**9), 0, cfg) is None
    True
    """
    window, last = config.active_now_ms, state.last_active_ms
    if window <= 0 or last is None:
        return None
    if now_ms - window < last <= now_ms + window:
        return last + window
    return None


def held_priority(entry: dict[str, Any]) -> float:
    """How much a held push is worth keeping: critical first, then its send score."""
    if entry["candidate"].get("critical"):
        return math.inf
    score = entry["decision"].get("score")
    return -math.inf if score is None else float(score)


def conflicts(
    state: UserState, at_ms: int, value: float, config: PolicyConfig
) -> tuple[str, ...] | None:
    """Held pushes within the minimum gap of ``at_ms``; None if one of them is worth more."""
    if not state.outbox:
        return ()
    near = [
        (intent_id, entry) for intent_id, entry in sorted(state.outbox.items())
        if abs(entry["send_at_ms"] - at_ms) < config.min_gap_ms
    ]
    if any(held_priority(entry) >= value for _, entry in near):
        return None
    return tuple(intent_id for intent_id, _ in near)


def blocked_at(
    state: UserState, at_ms: int, value: float, config: PolicyConfig
) -> str | None:
    """Why a send worth ``value`` cannot go out at ``at_ms`` (guardrails and held pushes)."""
    stop = guardrail(state, at_ms, config)
    if stop is None and conflicts(state, at_ms, value, config) is None:
        return "min_gap"
    return stop


def duplicate_content(state: UserState, candidate: Candidate, now_ms: int) -> bool:
    """The same content went to this user in the last 24h, or is already held for them."""
    sent_at = state.recent_content.get(candidate.content_id)
    if sent_at is not None and now_ms - sent_at < MS_DAY:
        return True
    return any(
        entry["candidate"]["content_id"] == candidate.content_id
        and entry["candidate"]["candidate_id"] != candidate.candidate_id
        for entry in state.outbox.values()
    )
