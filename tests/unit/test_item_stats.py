"""Item statistics against a batch recount on every prefix, in any arrival order."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.item_stats import DISMISS, HOUR, OPEN, SEND, ItemStats, ItemStatsTable

HALF_LIFE = 2 * HOUR
events = st.lists(
    st.tuples(st.sampled_from(["content:a", "content:b", "creator:x"]),
              st.sampled_from([SEND, OPEN, DISMISS]),
              st.integers(min_value=0, max_value=48 * HOUR)),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(events)
def test_counts_match_a_batch_recount_on_every_prefix(stream: list[tuple[str, int, int]]) -> None:
    table = ItemStatsTable(half_life_ms=HALF_LIFE, ttl_ms=10_000 * HOUR, max_items=100)
    for n, (key, outcome, at) in enumerate(stream, 1):
        table.add(key, outcome, at)
        prefix = stream[:n]
        now = max(t for _, _, t in prefix) + HOUR
        for k in {k for k, _, _ in prefix}:
            stats = table.get(k)
            assert stats is not None
            for o in (SEND, OPEN, DISMISS):
                expected = sum(2.0 ** (-(now - t) / HALF_LIFE)
                               for kk, oo, t in prefix if kk == k and oo == o)
                assert math.isclose(stats.count(o, now, HALF_LIFE), expected,
                                    rel_tol=1e-9, abs_tol=1e-12)
        for o in (SEND, OPEN):
            content = sum(2.0 ** (-(now - t) / HALF_LIFE)
                          for kk, oo, t in prefix if kk.startswith("content:") and oo == o)
            assert math.isclose(table.total(o, now), content, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=100, deadline=None)
@given(events, st.randoms())
def test_arrival_order_does_not_matter(
    stream: list[tuple[str, int, int]], rnd: random.Random
) -> None:
    shuffled = list(stream)
    rnd.shuffle(shuffled)
    tables = []
    for order in (stream, shuffled):
        table = ItemStatsTable(half_life_ms=HALF_LIFE, ttl_ms=10_000 * HOUR)
        for key, outcome, at in order:
            table.add(key, outcome, at)
        tables.append(table)
    now = 49 * HOUR
    for key in tables[0]:
        a, b = tables[0].get(key), tables[1].get(key)
        assert a is not None and b is not None
        for o in (SEND, OPEN, DISMISS):
            assert math.isclose(a.count(o, now, HALF_LIFE), b.count(o, now, HALF_LIFE),
                                rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=100, deadline=None)
@given(events, events)
def test_merging_two_workers_shares_equals_counting_all(
    mine: list[tuple[str, int, int]], theirs: list[tuple[str, int, int]]
) -> None:
    now = 49 * HOUR
    parts = [ItemStats(), ItemStats()]
    whole = ItemStats()
    for part, stream in zip(parts, (mine, theirs), strict=True):
        for _, outcome, at in stream:
            part.add(outcome, at, HALF_LIFE)
            whole.add(outcome, at, HALF_LIFE)
    parts[0].merge(parts[1], HALF_LIFE)
    for o in (SEND, OPEN, DISMISS):
        assert math.isclose(parts[0].count(o, now, HALF_LIFE), whole.count(o, now, HALF_LIFE),
                            rel_tol=1e-9, abs_tol=1e-12)


def test_memory_is_bounded_by_the_cap_and_the_ttl() -> None:
    table = ItemStatsTable(half_life_ms=HALF_LIFE, ttl_ms=24 * HOUR, max_items=1000)
    for i in range(5000):
        table.add(f"content:{i}", SEND, i * 1000)
    assert len(table) == 1000 and table.get("content:4999") is not None
    table.add("content:new", SEND, 5000 * 1000 + 25 * HOUR)
    assert list(table.keys()) == ["content:new"]
    assert math.isclose(table.total(SEND, 5000 * 1000 + 25 * HOUR), 1.0, rel_tol=1e-9)


def test_a_follower_replacing_records_keeps_the_total_of_what_it_holds() -> None:
    table = ItemStatsTable(half_life_ms=HALF_LIFE)
    table.put("content:a", ItemStats(HOUR, [4.0, 1.0, 0.0]))
    table.put("content:a", ItemStats(2 * HOUR, [3.0, 2.0, 0.0]))  # newer publication
    table.put("creator:x", ItemStats(2 * HOUR, [9.0, 9.0, 0.0]))  # not content: not summed
    assert math.isclose(table.total(SEND, 2 * HOUR), 3.0)
    assert math.isclose(table.total(OPEN, 2 * HOUR), 2.0)
    table.remove("content:a")
    assert table.total(SEND, 2 * HOUR) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"v": 2}', b'{"v": 1, "at": -1, "c": [0,0,0]}',
                                 b'{"v": 1, "at": 0, "c": [0, 0]}',
                                 b'{"v": 1, "at": 0, "c": [1e999, 0, 0]}'])
def test_bad_records_are_refused_with_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError, match="item statistics"):
        ItemStats.from_bytes(raw)


def test_the_decider_reports_sends_and_outcomes_by_content_and_creator() -> None:
    from streams.contracts import Candidate, UserEvent
    from streams.features import UserState, state_from_bytes, state_to_bytes
    from streams.model import PushModel
    from streams.pipeline import Decider, DeciderConfig
    from streams.policy import PolicyConfig

    step = Decider(PushModel(), DeciderConfig(policy=PolicyConfig(
        quiet_start_hour=0, quiet_end_hour=0, holdout_share=0, threshold=0.0)))
    state = UserState("u1")
    candidate = Candidate("c1", "u1", "trending", "v1", 0, 3_600_000, creator_id="cr-1")
    sent = step.on_candidate(state, candidate)
    assert [(r["item"], r["outcome"]) for r in sent.feedback] == [
        ("content:v1", "send"), ("creator:cr-1", "send")]
    state = state_from_bytes(state_to_bytes(state))  # through the changelog
    opened = step.on_event(state, UserEvent(
        event_id="e1", user_id="u1", type="push_opened", event_time_ms=60_000, tz="UTC",
        intent_id=candidate.intent_id))
    assert [(r["item"], r["outcome"], r["at_ms"]) for r in opened.feedback] == [
        ("content:v1", "open", 60_000), ("creator:cr-1", "open", 60_000)]


def test_a_pending_label_written_before_items_were_kept_still_loads() -> None:
    import orjson

    from streams.features import PendingLabel, UserState, state_from_bytes, state_to_bytes

    state = UserState("u1")
    state.pending["i1"] = PendingLabel("i1", "c1", "trending", 0, 10, 0.1, 0.0, 1, {})
    obj = orjson.loads(state_to_bytes(state))
    for key in ("content_id", "creator_id"):
        del obj["pending"]["i1"][key]
    loaded = state_from_bytes(orjson.dumps(obj))
    assert loaded.pending["i1"].content_id is None


def test_what_one_user_did_with_an_item_is_in_the_next_users_features() -> None:
    from streams.contracts import Candidate, UserEvent
    from streams.features import UserState
    from streams.model import PushModel
    from streams.pipeline import Decider, DeciderConfig
    from streams.policy import PolicyConfig

    step = Decider(PushModel(), DeciderConfig(policy=PolicyConfig(
        quiet_start_hour=0, quiet_end_hour=0, holdout_share=0, threshold=0.0),
        item_features=True), ItemStatsTable(half_life_ms=HALF_LIFE))
    fresh = step.features(UserState("b"), Candidate("c2", "b", "trending", "v1", 0, HOUR), 0)
    assert (fresh["item_open_rate"], fresh["item_sends"]) == (0.0, 0.0)
    alice = UserState("a")
    candidate = Candidate("c1", "a", "trending", "v1", 0, HOUR, creator_id="cr-1")
    step.fold(step.on_candidate(alice, candidate))
    step.fold(step.on_event(alice, UserEvent("e1", "a", "push_opened", 1_000, "UTC",
                                             intent_id=candidate.intent_id)))
    seen = step.features(UserState("b"), Candidate("c2", "b", "trending", "v1", 2_000, HOUR,
                                                   creator_id="cr-1"), 2_000)
    assert seen["item_sends"] > 0 and seen["item_open_rate"] > 0
    assert seen["creator_sends"] > 0 and seen["creator_open_rate"] > 0
