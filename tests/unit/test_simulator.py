"""Unit tests of the closed-loop user simulator (``streams/simulator.py``).

Message validity is checked directly against the tables of ``docs/messages.md``.
"""

from __future__ import annotations

import doctest
import functools
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

try:
    from streams import simulator as sim
except ImportError:  # the project is not installed: import it from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from streams import simulator as sim

START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR, DAY = sim.HOUR_MS, sim.DAY_MS
EPOCH_MIN, EPOCH_MAX = 946_684_800_000, 4_102_444_800_000  # 2000-01-01 .. 2100-01-01
ACTIVITY = {"app_open", "video_view", "like", "comment", "share", "follow", "search"}
FEEDBACK = {"push_delivered", "push_opened", "push_dismissed", "push_disabled", "uninstall"}
EVENT_FIELDS = {"event_id", "user_id", "type", "event_time_ms", "tz", "intent_id", "props"}
CANDIDATE_FIELDS = {"candidate_id", "user_id", "kind", "content_id", "creator_id",
                    "created_at_ms", "expires_at_ms", "critical", "tz", "title"}
OFFSET = re.compile(r"^(Z|[+-](0\d|1[0-4]):[0-5]\d)$")
KIND = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Rates that keep the world quiet, for tests about pushes only.
QUIET = {"sessions_per_hour": 0.01, "candidates_per_day": 0.01, "posts_per_creator_day": 0.01}


def intent(user_id: str, intent_id: str, send_at_ms: int, kind: str = "trending") -> dict:
    """A minimal notification-intent, as the worker would emit it."""
    return {"intent_id": intent_id, "user_id": user_id, "candidate_id": f"c-{intent_id}",
            "content_id": "v1", "kind": kind, "send_at_ms": send_at_ms,
            "decided_at_ms": send_at_ms, "critical": False}


def message_time(message: dict[str, Any]) -> int:
    return int(message["event_time_ms"] if "event_time_ms" in message else message["created_at_ms"])


def run_closed_loop(pop: sim.Population, hours: int, step_ms: int = HOUR // 2,
                    send: Any = lambda candidate: True) -> dict[str, Any]:
    """Advance ``pop`` hour by hour, delivering each candidate that ``send`` accepts."""
    batches, p_open, until = [], {}, START
    while until < START + hours * HOUR:
        prev, until = until, until + step_ms
        batch = pop.advance(until)
        batches.append((prev, until, batch))
        for topic, message in batch:
            if topic == sim.CANDIDATES and send(message):
                intent_id = f"i-{message['candidate_id']}"
                p_open[intent_id] = pop.true_p_open(message["user_id"], message["kind"],
                                                    message["created_at_ms"])
                pop.deliver(intent(message["user_id"], intent_id, message["created_at_ms"],
                                   message["kind"]))
    return {"batches": batches, "p_open": p_open,
            "messages": [m for _, _, batch in batches for m in batch]}


@pytest.fixture(scope="module")
def send_all() -> dict[str, Any]:
    """1500 users for two days, every candidate sent as soon as it is created."""
    pop = sim.Population(seed=11, n_users=1500, start_ms=START)
    run = run_closed_loop(pop, hours=48)
    run["pop"] = pop
    return run


# ------------------------------------------------------------------ message validity
def is_id(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 128


def is_time(value: Any) -> bool:
    return type(value) is int and EPOCH_MIN <= value <= EPOCH_MAX


@functools.cache
def is_tz(value: Any) -> bool:
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        return False
    if OFFSET.match(value):
        return True
    try:
        ZoneInfo(value)
    except (KeyError, ValueError):
        return False
    return True


def assert_valid_user_event(event: dict[str, Any]) -> None:
    assert set(event) <= EVENT_FIELDS, event
    assert is_id(event["event_id"]) and is_id(event["user_id"]), event
    assert event["type"] in ACTIVITY | FEEDBACK, event
    assert is_time(event["event_time_ms"]) and is_tz(event["tz"]), event
    if event["type"].startswith("push_"):
        assert is_id(event["intent_id"]), event
    assert isinstance(event.get("props", {}), dict), event


def assert_valid_candidate(candidate: dict[str, Any]) -> None:
    assert set(candidate) <= CANDIDATE_FIELDS, candidate
    for name in ("candidate_id", "user_id", "content_id"):
        assert is_id(candidate[name]), candidate
    assert isinstance(candidate["kind"], str) and KIND.match(candidate["kind"]), candidate
    assert is_time(candidate["created_at_ms"]) and is_time(candidate["expires_at_ms"])
    assert candidate["expires_at_ms"] >= candidate["created_at_ms"], candidate
    assert isinstance(candidate.get("critical", False), bool), candidate
    assert "creator_id" not in candidate or is_id(candidate["creator_id"]), candidate
    assert "tz" not in candidate or is_tz(candidate["tz"]), candidate
    assert isinstance(candidate.get("title", ""), str) and len(candidate.get("title", "")) <= 256


def test_every_message_is_valid_per_docs(send_all: dict[str, Any]) -> None:
    topics = Counter(topic for topic, _ in send_all["messages"])
    assert set(topics) == {sim.USER_EVENTS, sim.CANDIDATES}
    for topic, message in send_all["messages"]:
        if topic == sim.USER_EVENTS:
            assert_valid_user_event(message)
        else:
            assert_valid_candidate(message)
    types = Counter(m["type"] for t, m in send_all["messages"] if t == sim.USER_EVENTS)
    assert ACTIVITY | FEEDBACK - {"uninstall"} <= set(types)


def test_ids_are_unique(send_all: dict[str, Any]) -> None:
    events = [m["event_id"] for t, m in send_all["messages"] if t == sim.USER_EVENTS]
    candidates = [m["candidate_id"] for t, m in send_all["messages"] if t == sim.CANDIDATES]
    assert len(events) == len(set(events)) and len(candidates) == len(set(candidates))


def test_candidate_mix(send_all: dict[str, Any]) -> None:
    candidates = [m for t, m in send_all["messages"] if t == sim.CANDIDATES]
    per_user_day = len(candidates) / 1500 / 2
    assert 5 <= per_user_day <= 12  # about one per 3 simulated hours
    critical = [c for c in candidates if c["critical"]]
    assert 0.01 <= len(critical) / len(candidates) <= 0.04
    assert {c["kind"] for c in critical} == {"security_alert"}
    assert set(sim.KINDS) <= {c["kind"] for c in candidates}
    for c in candidates:
        ttl = HOUR if c["kind"] == "live_started" else 6 * HOUR
        assert c["expires_at_ms"] - c["created_at_ms"] == ttl


def test_time_zone_field_is_consistent_per_user(send_all: dict[str, Any]) -> None:
    pop, tz_by_user = send_all["pop"], defaultdict(set)
    for _, message in send_all["messages"]:
        tz_by_user[message["user_id"]].add(message["tz"])
    assert all(tzs == {pop.user(uid).tz} for uid, tzs in tz_by_user.items())
    offsets = sum(1 for uid in pop.user_ids if OFFSET.match(pop.user(uid).tz))
    assert 0.05 <= offsets / len(pop.user_ids) <= 0.15
    assert len({pop.user(uid).zone for uid in pop.user_ids}) >= 10


# ------------------------------------------------------------------ time and determinism
def test_event_times_are_ordered_and_within_the_advanced_window(send_all: dict) -> None:
    for prev, until, batch in send_all["batches"]:
        times = [message_time(m) for _, m in batch]
        assert times == sorted(times)
        assert all(prev < t <= until for t in times)


def test_advance_refuses_to_go_back() -> None:
    pop = sim.Population(seed=1, n_users=5, start_ms=START)
    assert pop.now_ms == START
    pop.advance(START + HOUR)
    assert pop.now_ms == START + HOUR
    with pytest.raises(ValueError):
        pop.advance(START)


def test_same_seed_and_calls_give_identical_output() -> None:
    def run(seed: int) -> tuple[list, dict]:
        pop = sim.Population(seed=seed, n_users=300, start_ms=START)
        every_third = lambda c: int(c["candidate_id"].rsplit("c", 1)[1]) % 3 == 0  # noqa: E731
        return run_closed_loop(pop, hours=24, send=every_third)["messages"], pop.stats

    first, again, other = run(5), run(5), run(6)
    assert first == again
    assert first[0] != other[0]


def test_world_does_not_depend_on_deliveries() -> None:
    """Same seed: candidates are identical whatever the policy (common random numbers)."""
    quiet = run_closed_loop(sim.Population(seed=8, n_users=200, start_ms=START), 24,
                            send=lambda c: False)
    loud_pop = sim.Population(seed=8, n_users=200, start_ms=START)
    loud = run_closed_loop(loud_pop, 24)
    gone = {m["user_id"] for t, m in loud["messages"] if m.get("type") == "uninstall"}
    ids = [{m["candidate_id"] for t, m in run["messages"]
            if t == sim.CANDIDATES and m["user_id"] not in gone} for run in (quiet, loud)]
    assert ids[0] == ids[1] and ids[0]


# ------------------------------------------------------------------ hidden truth
def test_activity_follows_the_local_rhythm_in_every_region() -> None:
    pop = sim.Population(seed=3, n_users=2000, start_ms=START, candidates_per_day=0.01,
                         posts_per_creator_day=0.01)
    region_hours: dict[str, Counter] = defaultdict(Counter)
    for topic, event in pop.advance(START + 2 * DAY):
        if topic == sim.USER_EVENTS and event["type"] == "app_open":
            zone = pop.user(event["user_id"]).zone
            hour = int(sim.local_hour(zone, event["event_time_ms"]))
            region_hours[zone.split("/")[0]][hour] += 1
    assert {"America", "Europe", "Asia", "Africa", "Australia"} <= set(region_hours)
    for region, hours in region_hours.items():
        peak_hour, peak = hours.most_common(1)[0]
        assert 17 <= peak_hour <= 23, region
        assert hours[3] < 0.1 * peak, (region, hours[3], peak)


def test_open_rate_when_sending_everything(send_all: dict[str, Any]) -> None:
    stats = send_all["pop"].stats
    assert stats["delivered"] > 10_000
    assert 0.03 <= stats["opens"] / stats["delivered"] <= 0.15


def test_best_fifth_by_true_p_open_opens_at_least_twice_as_often(send_all: dict) -> None:
    opened = {m["intent_id"] for t, m in send_all["messages"] if m.get("type") == "push_opened"}
    delivered = {m["intent_id"] for t, m in send_all["messages"]
                 if m.get("type") == "push_delivered"}
    ranked = sorted(delivered, key=lambda i: send_all["p_open"][i], reverse=True)
    best = ranked[: len(ranked) // 5]
    mean_rate = len(opened & delivered) / len(delivered)
    assert len(opened & set(best)) / len(best) >= 2 * mean_rate


def test_fatigue_lowers_p_open_and_raises_disable_risk() -> None:
    light = sim.Population(seed=9, n_users=20, start_ms=START, **QUIET)
    heavy = sim.Population(seed=9, n_users=20, start_ms=START, **QUIET)
    uid, at = light.user_ids[0], START + DAY
    light.deliver(intent(uid, "i-0", START + 12 * HOUR))
    for k in range(10):
        heavy.deliver(intent(uid, f"i-{k}", START + (2 + 2 * k) * HOUR))
    for kind in sim.KINDS:
        assert heavy.true_p_open(uid, kind, at) < light.true_p_open(uid, kind, at)
        assert heavy.true_p_disable(uid, kind, at) > light.true_p_disable(uid, kind, at)


def test_users_pushed_ten_times_a_day_disable_more() -> None:
    def disabled_share(pushes_per_day: int) -> tuple[float, float]:
        pop = sim.Population(seed=21, n_users=2000, start_ms=START, **QUIET)
        for uid in pop.user_ids:
            for k in range(pushes_per_day):
                send_at = START + (2 + k * 20 // pushes_per_day) * HOUR
                pop.deliver(intent(uid, f"{uid}-{k}", send_at))
        pop.advance(START + DAY + 2 * HOUR)
        stats = pop.stats
        return stats["disables"] / 2000, stats["disables"] / stats["delivered"]

    (light_users, light_per_push), (heavy_users, heavy_per_push) = map(disabled_share, (1, 10))
    assert heavy_users > 5 * light_users
    assert heavy_per_push > light_per_push


def test_disabled_users_ignore_later_intents_and_never_open() -> None:
    pop = sim.Population(seed=4, n_users=10, start_ms=START, **QUIET)
    uid, feedback, now = pop.user_ids[0], [], START
    for k in range(2000):
        now += 5 * 60_000
        pop.deliver(intent(uid, f"i-{k}", now))
        feedback += [m for _, m in pop.advance(now) if m.get("intent_id")]
        if any(m["type"] == "push_disabled" for m in feedback):
            break
    disabled_at = next(m["event_time_ms"] for m in feedback if m["type"] == "push_disabled")
    before = pop.stats["ignored_intents"]
    for k in range(50):
        pop.deliver(intent(uid, f"late-{k}", now + k * 60_000))
    feedback += [m for _, m in pop.advance(now + 2 * DAY) if m.get("intent_id")]
    assert pop.stats["ignored_intents"] == before + 50
    later = [m for m in feedback if m["event_time_ms"] > disabled_at]
    assert not [m for m in later if m["type"] != "uninstall"]


def test_no_feedback_after_disabling_in_the_closed_loop(send_all: dict[str, Any]) -> None:
    disabled_at = {m["user_id"]: m["event_time_ms"] for _, m in send_all["messages"]
                   if m.get("type") == "push_disabled"}
    assert len(disabled_at) >= 10
    for _, m in send_all["messages"]:
        if m.get("type") in {"push_delivered", "push_opened", "push_dismissed"}:
            assert m["event_time_ms"] <= disabled_at.get(m["user_id"], EPOCH_MAX)
    assert send_all["pop"].stats["ignored_intents"] > 0


def test_duplicate_and_unknown_intents_are_counted_not_delivered() -> None:
    pop = sim.Population(seed=2, n_users=5, start_ms=START, **QUIET)
    uid = pop.user_ids[0]
    pop.deliver(intent(uid, "i-1", START + HOUR))
    pop.deliver(intent(uid, "i-1", START + HOUR))
    pop.deliver(intent("nobody", "i-2", START + HOUR))
    delivered = [m for _, m in pop.advance(START + DAY) if m.get("type") == "push_delivered"]
    assert [m["intent_id"] for m in delivered] == ["i-1"]
    stats = pop.stats
    assert (stats["delivered"], stats["duplicate_intents"], stats["ignored_intents"]) == (1, 1, 1)


def test_stats_is_a_plain_dict_with_daily_rates(send_all: dict[str, Any]) -> None:
    stats = send_all["pop"].stats
    expected = {"delivered", "opens", "dismissals", "disables", "uninstalls", "ignored_intents",
                "duplicate_intents", "active_users", "opens_per_user_day",
                "pushes_per_user_day"}
    assert expected <= set(stats) and type(stats) is dict
    assert stats["pushes_per_user_day"] == pytest.approx(stats["delivered"] / 1500 / 2)
    assert stats["active_users"] == 1500 - stats["uninstalls"]


def test_a_day_of_two_thousand_users_is_busy() -> None:
    pop = sim.Population(seed=12, n_users=2000, start_ms=START)
    assert len(pop.advance(START + DAY)) > 2000 * 20


def test_docstring_examples_run() -> None:
    assert doctest.testmod(sim).failed == 0
