"""Send-time optimisation: the local hours at which a held push could go out.

A slot is an instant at the start of one of the user's local hours (``hh:00`` on the user's
wall clock, DST-aware: the instant is computed, the hour is what the wall clock shows then).
The user's own hour-of-day profiles (activity and opens, kept in local time by
:mod:`streams.features`) rank the slots; the model then scores the best few, with the clock
features moved to the slot and the user's activity there forecast from the profile.

>>> MS_H = 3_600_000
>>> [hour for _, hour in local_hour_starts(0, 3 * MS_H, "+05:30")]  # 05:30 local at t=0
[6, 7, 8]
>>> [at % MS_H for at, _ in local_hour_starts(0, 3 * MS_H, "+05:30")]
[1800000, 1800000, 1800000]
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from streams.contracts import Candidate, local_time
from streams.features import (
    MS_HOUR,
    UserState,
    hour_affinity,
    model_features,
    smoothed_hour,
    window_counts,
)

# Features that describe what the user did up to now; a slot cannot know their future values.
KNOWN_NOW = ("act_1h", "act_24h", "act_7d", "hours_since_active")


def local_hour_starts(after_ms: int, until_ms: int, tz: str) -> list[tuple[int, int]]:
    """``(instant, local hour)`` of every local ``hh:00`` in ``(after_ms, until_ms]``.

    Walks instants, not wall-clock times, so a skipped local hour (spring forward) is simply
    absent and a repeated one (fall back) appears twice, once per instant.
    """
    local = local_time(after_ms, tz)
    at = after_ms - (local.minute * 60_000 + local.second * 1000 + local.microsecond // 1000)
    slots: list[tuple[int, int]] = []
    while at + MS_HOUR <= until_ms:
        at += MS_HOUR
        local = local_time(at, tz)
        if local.minute:  # a zone shifted by a fraction of an hour: realign on its wall clock
            at -= local.minute * 60_000
            local = local_time(at, tz)
        if at > after_ms and (not slots or at > slots[-1][0]):
            slots.append((at, local.hour))
    return slots


def profile_events(state: UserState) -> float:
    """How much the activity profile has seen (decayed event count)."""
    return sum(state.activity_by_hour)


def hour_rank(state: UserState, hour: int) -> float:
    """How good local ``hour`` looks from the profiles alone (higher is better).

    >>> s = UserState("u1")
    >>> s.activity_by_hour[20] = 30.0
    >>> hour_rank(s, 20) > hour_rank(s, 3)
    True
    """
    return hour_affinity(state.activity_by_hour, hour) + hour_affinity(state.opens_by_hour, hour)


def best_hour_slots(
    state: UserState, after_ms: int, until_ms: int, keep: int
) -> list[int]:
    """The ``keep`` slots in ``(after_ms, until_ms]`` whose local hours rank best, in time order."""
    slots = local_hour_starts(after_ms, until_ms, state.tz)
    ranked = sorted(slots, key=lambda slot: (-hour_rank(state, slot[1]), slot[0]))
    return sorted(at for at, _ in ranked[:keep])


def slot_features(
    state: UserState, candidate: Candidate, now_features: Mapping[str, float], at_ms: int
) -> dict[str, float]:
    """The model's input for a send at ``at_ms``, as far as it can be known now.

    Clock features (hour profiles, pushes in 24h, hours since the last push, candidate age)
    are those of ``at_ms``. Activity windows stay as known now, except that for a slot an
    hour or more ahead the last hour's activity and the recency of activity are forecast from
    the user's profile: at their usual active hour a user will most likely have been active.
    """
    features = model_features(state, candidate, at_ms)
    for name in KNOWN_NOW:
        features[name] = now_features[name]
    ahead_h = (at_ms - state.watermark_ms) / MS_HOUR
    if ahead_h >= 1:
        expected = expected_events(state, at_ms - MS_HOUR)
        since_h = math.expm1(now_features["hours_since_active"]) + ahead_h
        if expected > 0:
            since_h = min(since_h, 1 / expected)
        features["act_1h"] = math.log1p(expected)
        features["hours_since_active"] = math.log1p(since_h)
    return features


def expected_events(state: UserState, hour_start_ms: int) -> float:
    """Activity events the user's profile expects in the local hour from ``hour_start_ms``.

    The user's daily rate over the last 7 days, spread by the share of their activity profile
    that falls in that local hour (read with its neighbours,
    :func:`~streams.features.smoothed_hour`).

    >>> s = UserState("u1")
    >>> s.activity_by_hour[20] = 30.0
    >>> for t in range(0, 7 * 86_400_000, 3_600_000):
    ...     s.buckets["7d"][t // 86_400_000] = s.buckets["7d"].get(t // 86_400_000, 0) + 1
    >>> s.watermark_ms = 7 * 86_400_000 - 1
    >>> expected_events(s, 20 * 3_600_000), expected_events(s, 3 * 3_600_000)
    (12.0, 0.0)
    """
    total = sum(state.activity_by_hour)
    if total <= 0:
        return 0.0
    _, _, week = window_counts(state, state.watermark_ms)
    hour = local_time(hour_start_ms, state.tz).hour
    return week / 7 * smoothed_hour(state.activity_by_hour, hour) / total
