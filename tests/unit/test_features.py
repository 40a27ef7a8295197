"""Windowed features against a batch oracle on every prefix, in any arrival order."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contracts import Candidate, local_time
from streams.features import (
    AFFINITY_HALF_LIFE_MS,
    HASH_BUCKETS,
    MS_DAY,
    MS_HOUR,
    WINDOWS,
    PendingLabel,
    UserState,
    affinity,
    bump_affinity,
    hashed,
    model_features,
    observe_activity,
    record_open,
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
    assert features[hashed("kind:live_started")] == 1.0
    assert all(isinstance(v, float) for v in features.values())


# --- candidate-side features ----------------------------------------------------------


def _candidate_features() -> list[str]:
    state = UserState("u-7", tz="Asia/Tokyo")
    cand = Candidate("c1", "u-7", "live_started", "v-9", T0, T0 + MS_DAY, creator_id="alice")
    return sorted(model_features(state, cand, T0))


def test_hashed_names_are_the_same_in_another_process() -> None:
    """Features stored with a label, or weights in a snapshot, must mean the same bucket in
    every worker: a new interpreter (another hash seed) computes the same names."""
    code = ("import sys; sys.path.insert(0, '.'); from tests.unit.test_features import "
            "_candidate_features; print(_candidate_features())")
    for seed in ("0", "12345"):
        env = {"PYTHONHASHSEED": seed, "PATH": ""}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout
        assert out.strip() == str(_candidate_features())


def test_candidate_indicators_name_what_is_pushed() -> None:
    names = set(_candidate_features())
    for name in ("kind:live_started", "content:v-9", "creator:alice", "user_kind:u-7:live_started",
                 "user_creator:u-7:alice", "user:u-7"):
        assert hashed(name) in names
    hashed_names = [n for n in names if n.startswith("h=")]
    assert all(0 <= int(n[2:]) < HASH_BUCKETS for n in hashed_names)
    assert len(hashed_names) >= 6  # a shared bucket of two names is possible, not likely


def test_affinity_decays_on_event_time_and_keeps_the_strongest() -> None:
    state = UserState("u1")
    bump_affinity(state, "c:a", 8.0, T0)
    assert affinity(state, "c:a", T0 + 2 * AFFINITY_HALF_LIFE_MS) == 2.0
    for n in range(100):
        bump_affinity(state, f"c:{n}", 1.0 + n / 100, T0, limit=32)
    assert len(state.affinity) == 32
    assert "c:a" in state.affinity and "c:0" not in state.affinity and "c:99" in state.affinity
    # an event older than the entry is decayed back to it: the order of events does not matter
    one, two = UserState("u1"), UserState("u1")
    bump_affinity(one, "k:x", 1.0, T0)
    bump_affinity(one, "k:x", 1.0, T0 + MS_DAY)
    bump_affinity(two, "k:x", 1.0, T0 + MS_DAY)
    bump_affinity(two, "k:x", 1.0, T0)
    assert abs(affinity(one, "k:x", T0 + 3 * MS_DAY) - affinity(two, "k:x", T0 + 3 * MS_DAY)) < 1e-9


def test_activity_and_opens_build_affinity_features() -> None:
    state = UserState("u1")
    observe_activity(state, T0, "UTC", "like", "alice")
    observe_activity(state, T0, "UTC", "search", "bob")  # a search is not about a creator
    label = PendingLabel("i1", "c0", "live_started", T0, T0 + MS_HOUR, 0.1, 0.0, 1, {},
                         creator_id="alice")
    record_open(state, label, T0)
    assert sorted(state.affinity) == ["c:alice", "k:live_started"]
    cand = Candidate("c1", "u1", "live_started", "v", T0, T0 + MS_DAY, creator_id="alice")
    features = model_features(state, cand, T0)
    assert abs(features["creator_affinity"] - math.log1p(5.0)) < 1e-12
    assert abs(features["kind_affinity"] - math.log1p(3.0)) < 1e-12
    assert state_from_bytes(state_to_bytes(state)) == state


def test_rates_are_centred_on_the_base_rate() -> None:
    state = UserState("u1")
    cand = Candidate("c1", "u1", "trending", "v", T0, T0 + MS_DAY)
    for base in (0.004, 0.1, 0.5):
        features = model_features(state, cand, T0, base)
        assert abs(features["open_rate"]) < 1e-12 and abs(features["kind_open_rate"]) < 1e-12
    state.sent, state.opened = 10, 0
    assert model_features(state, cand, T0, 0.004)["open_rate"] < 0


def test_state_records_written_before_affinity_still_load() -> None:
    """A changelog record of the previous format: no affinity, pending labels without a
    creator."""
    state = UserState("u1")
    observe_activity(state, T0, "UTC")
    state.pending["i1"] = PendingLabel("i1", "c1", "trending", T0, T0 + MS_HOUR, 0.1, 0.0, 3,
                                       {"act_1h": 0.5})
    old = orjson.loads(state_to_bytes(state))
    del old["affinity"]
    del old["pending"]["i1"]["creator_id"]
    loaded = state_from_bytes(orjson.dumps(old))
    assert loaded == state and loaded.affinity == {} and loaded.pending["i1"].creator_id is None


def test_recent_sends_round_trip_and_records_written_before_them_still_load() -> None:
    """``recent_sent`` (kind and creator of the last sends, for the similarity demotion) goes
    through the changelog codec; a record of the previous format loads with none, and an
    outbox entry written before ``Decision.demoted`` loads as not demoted."""
    from streams.contracts import Candidate
    from streams.features import record_send
    from streams.outbox import held_decision

    state = UserState("u1")
    observe_activity(state, T0, "UTC")
    record_send(state, T0, Candidate("c1", "u1", "live", "v1", T0, T0 + MS_HOUR,
                                     creator_id="ann"))
    assert state.recent_sent == [[T0, "live", "ann"]]
    assert state_from_bytes(state_to_bytes(state)) == state
    old = orjson.loads(state_to_bytes(state))
    del old["recent_sent"]
    loaded = state_from_bytes(orjson.dumps(old))
    assert loaded.recent_sent == [] and loaded.recent_content == state.recent_content
    entry = {"candidate": {}, "decision": {
        "action": "hold", "reason": "quiet_hours", "score": 0.2, "threshold": 0.1,
        "explore": False, "propensity": 1.0, "holdout": False, "send_at_ms": T0}}
    assert held_decision(entry).demoted is None
