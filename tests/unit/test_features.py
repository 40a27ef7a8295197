"""Windowed features against a batch oracle on every prefix, in any arrival order."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contracts import Candidate, local_time
from streams.features import (
    MS_DAY,
    MS_HOUR,
    WINDOWS,
    UserState,
    model_features,
    observe_activity,
    record_send,
    sends_in_last_day,
    state_from_bytes,
    state_to_bytes,
    window_counts,
)

T0 = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
# Event times within ~10 days, arriving in any order (late and out-of-order input).
times = st.lists(st.integers(min_value=T0, max_value=T0 + 10 * MS_DAY), min_size=1, max_size=60)


def oracle_counts(seen: list[int], now: int) -> tuple[int, ...]:
    """Recount every window from the raw event times: the definition, not the algorithm."""
    return tuple(
        sum(1 for t in seen if now // width - count < t // width <= now // width)
        for _, width, count in WINDOWS
    )


@settings(max_examples=300, deadline=None)
@given(times)
def test_window_counts_match_the_oracle_on_every_prefix(events: list[int]) -> None:
    state = UserState("u")
    for i, at in enumerate(events):
        observe_activity(state, at, "UTC")
        now = max(events[: i + 1])
        assert window_counts(state, now) == oracle_counts(events[: i + 1], now)


@settings(max_examples=200, deadline=None)
@given(times, st.sampled_from(["UTC", "Asia/Kolkata", "America/New_York", "-03:30"]))
def test_hour_profile_matches_local_hours(events: list[int], tz: str) -> None:
    state = UserState("u")
    for at in events:
        observe_activity(state, at, tz)
    expected = Counter(local_time(at, tz).hour for at in events)
    assert state.activity_by_hour == [float(expected[h]) for h in range(24)]


@settings(max_examples=200, deadline=None)
@given(times)
def test_state_bytes_round_trip(events: list[int]) -> None:
    state = UserState("u", tz="Europe/Berlin")
    for at in events:
        observe_activity(state, at, "Europe/Berlin")
    assert state_from_bytes(state_to_bytes(state)) == state


def test_buckets_stay_bounded_as_time_moves_on() -> None:
    state = UserState("u")
    for minute in range(0, 30 * 24 * 60, 7):
        observe_activity(state, T0 + minute * 60_000, "UTC")
    sizes = [len(state.buckets[name]) for name, _, _ in WINDOWS]
    assert all(0 < size <= count for size, (_, _, count) in zip(sizes, WINDOWS, strict=True))


def test_sends_in_last_day_is_a_rolling_window() -> None:
    state = UserState("u")
    cand = Candidate("c", "u", "trending", "v", T0, T0 + MS_DAY)
    for hours in (0, 5, 20, 26):
        state.advance(T0 + hours * MS_HOUR)
        record_send(state, T0 + hours * MS_HOUR, cand)
    assert sends_in_last_day(state, T0 + 26 * MS_HOUR) == 3  # 5h, 20h, 26h


def test_features_never_look_at_the_future_or_mutate_state() -> None:
    state = UserState("u")
    for minutes in (0, 10, 20):
        observe_activity(state, T0 + minutes * 60_000, "UTC")
    before = state_to_bytes(state)
    cand = Candidate("c", "u", "live_started", "v", T0 + 5 * 60_000, T0 + MS_DAY)
    features = model_features(state, cand, T0 + 5 * 60_000)
    assert state_to_bytes(state) == before
    assert features["act_1h"] == model_features(state, cand, T0 + 5 * 60_000)["act_1h"]
    assert features["kind=live_started"] == 1.0
    assert all(isinstance(v, float) for v in features.values())
