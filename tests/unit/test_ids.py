"""Ids that cannot collide: one intent id per (user, candidate id), and one final decision
record per (user, candidate id) for as long as the candidate id is remembered, through the
Decider and through the offline replay alike."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.config import decider_config
from streams.contracts import Candidate, intent_id_for
from streams.errors import ConfigError
from streams.features import (
    MS_DAY,
    MS_HOUR,
    UserState,
    state_from_bytes,
    state_to_bytes,
    was_decided,
)
from streams.model import PushModel
from streams.pipeline import DECIDED_HORIZON_MS, Decider, DeciderConfig, StepOutput
from streams.policy import PolicyConfig
from streams.replay import Replayer, ReplayOptions
from streams.settings import Settings
from tests.unit.test_pipeline import valid

NOON = 1_781_438_400_000  # 2026-06-14T12:00Z
# no quiet hours, no holdout, no send-time holds: every candidate is decided at once
NOW_CONFIG = DeciderConfig(policy=PolicyConfig(quiet_start_hour=0, quiet_end_hour=0,
                                               holdout_share=0.0, send_time=False))
QUIET_CONFIG = DeciderConfig(policy=PolicyConfig(holdout_share=0.0, send_time=False))


def candidate(user: str, cid: str, created: int, ttl_h: float = 2, **kw: Any) -> Candidate:
    return Candidate(cid, user, "trending", kw.pop("content_id", f"v-{cid}"), created,
                     created + int(ttl_h * MS_HOUR), **kw)


def stages(out: StepOutput) -> list[tuple[str, str, bool]]:
    return [(d["action"], d["reason"], d["final"]) for d in out.decisions]


# --- one intent id per (user, candidate id) -----------------------------------------------


def test_one_candidate_id_for_two_users_gives_two_intent_ids() -> None:
    decider = Decider(PushModel(), NOW_CONFIG)
    ids = []
    for user in ("alice", "bob"):
        out = valid(decider.on_candidate(UserState(user), candidate(user, "c-1", NOON)))
        [intent] = out.intents
        assert out.decisions[0]["decision_id"] == intent["intent_id"]
        ids.append(intent["intent_id"])
    assert ids[0] != ids[1]
    assert ids == [intent_id_for("alice", "c-1"), intent_id_for("bob", "c-1")]


def test_the_id_encoding_tells_where_the_user_id_ends() -> None:
    assert intent_id_for("a:b", "c") != intent_id_for("a", "b:c")
    assert intent_id_for("1:a", "b") != intent_id_for("1", ":ab")
    assert intent_id_for("ü", "x") != intent_id_for("", "üx")


# --- one final decision per (user, candidate id) ------------------------------------------


def test_a_resend_after_expiry_and_after_the_first_left_the_state_is_not_decided_again() -> None:
    decider, state = Decider(PushModel(), NOW_CONFIG), UserState("u1")
    first = valid(decider.on_candidate(state, candidate("u1", "c1", NOON)))
    assert stages(first) == [("send", "above_threshold", True)] and len(first.intents) == 1
    decider.on_tick(state, NOON + 2 * MS_DAY)  # long after expiry; the label has resolved too
    assert state.pending == {}
    same = decider.on_candidate(state, candidate("u1", "c1", NOON))  # the very same message
    fresh = decider.on_candidate(state, candidate("u1", "c1", NOON + 2 * MS_DAY))  # new times
    for again in (same, fresh):
        assert again.ignored == "duplicate_candidate"
        assert again.decisions == [] and again.intents == []


def test_a_resend_is_remembered_for_the_whole_horizon_and_through_the_changelog() -> None:
    decider, state = Decider(PushModel(), NOW_CONFIG), UserState("u1")
    decider.on_candidate(state, candidate("u1", "c1", NOON))
    late = NOON + DECIDED_HORIZON_MS
    decider.on_tick(state, late - 60_000)
    state = state_from_bytes(state_to_bytes(state))
    assert decider.on_candidate(state, candidate("u1", "c1", late)).ignored == \
        "duplicate_candidate"
    # past the horizon the id is forgotten: it is a new candidate (documented)
    assert not was_decided(state, "c1", late + 1_000)


def test_a_long_lived_candidate_is_remembered_until_its_expiry() -> None:
    decider, state = Decider(PushModel(), NOW_CONFIG), UserState("u1")
    long_lived = candidate("u1", "c1", NOON, ttl_h=20 * 24)  # beyond the 7-day horizon
    decider.on_candidate(state, long_lived)
    assert was_decided(state, "c1", long_lived.expires_at_ms)


def test_held_then_released_is_one_interim_and_one_final_record() -> None:
    decider, state = Decider(PushModel(), QUIET_CONFIG), UserState("u1", tz="UTC")
    night = NOON + 11 * MS_HOUR  # 23:00 UTC: quiet hours
    held = valid(decider.on_candidate(state, candidate("u1", "c1", night, ttl_h=12)))
    assert stages(held) == [("hold", "quiet_hours", False)] and held.intents == []
    assert decider.on_candidate(state, candidate("u1", "c1", night + MS_HOUR)).decisions == []
    released = valid(decider.on_tick(state, NOON + 20 * MS_HOUR))  # 08:00 the next day
    assert stages(released) == [("send", "released", True)] and len(released.intents) == 1
    assert held.decisions[0]["decision_id"] == released.decisions[0]["decision_id"]


def test_held_then_expired_is_one_interim_and_one_final_record() -> None:
    decider, state = Decider(PushModel(), QUIET_CONFIG), UserState("u1", tz="UTC")
    night = NOON + 11 * MS_HOUR
    held = decider.on_candidate(state, candidate("u1", "c1", night, ttl_h=2))
    assert stages(held) == [("suppress", "quiet_hours", True)]  # expires before 08:00
    held = decider.on_candidate(state, candidate("u1", "c2", night, ttl_h=10))
    assert stages(held) == [("hold", "quiet_hours", False)]
    dropped = valid(decider.on_tick(state, night + 11 * MS_HOUR))  # ticked after expiry
    assert stages(dropped) == [("suppress", "expired", True)]


def test_past_the_cap_the_first_decided_is_forgotten_first() -> None:
    config = DeciderConfig(policy=NOW_CONFIG.policy, decided_limit=3)
    decider, state = Decider(PushModel(), config), UserState("u1")
    for n in range(4):
        decider.on_candidate(state, candidate("u1", f"c{n}", NOON + n * MS_HOUR))
    assert len(state.decided_ids) == 3
    assert [was_decided(state, f"c{n}", NOON + 4 * MS_HOUR) for n in range(4)] == [
        False, True, True, True]


def test_the_horizon_and_the_cap_are_settings_and_the_horizon_fits_in_the_user_ttl() -> None:
    config = decider_config(Settings.from_env({"PUSHFLOW_DECIDED_HORIZON_S": "86400",
                                               "PUSHFLOW_DECIDED_LIMIT": "10"}))
    assert (config.decided_horizon_ms, config.decided_limit) == (MS_DAY, 10)
    assert decider_config(Settings()).decided_horizon_ms == DECIDED_HORIZON_MS
    # an idle user's state is deleted after user_ttl_s, and what it remembered with it
    with pytest.raises(ConfigError, match="decided_horizon_s"):
        Settings(user_ttl_s=3600)
    with pytest.raises(ConfigError, match="decided_horizon_s"):
        Settings(decided_horizon_s=0)
    with pytest.raises(ConfigError, match="decided_limit"):
        Settings(decided_limit=0)


def test_state_written_before_ids_were_hashed_still_knows_its_candidates() -> None:
    state = UserState("u1", watermark_ms=NOON)
    old = orjson.loads(state_to_bytes(state))
    del old["decided_ids"]
    old["decided"] = {"c1": NOON + MS_HOUR}
    restored = state_from_bytes(orjson.dumps(old))
    assert was_decided(restored, "c1", NOON + MS_HOUR) and not was_decided(restored, "c2", NOON)
    out = Decider(PushModel(), NOW_CONFIG).on_candidate(restored, candidate("u1", "c1", NOON))
    assert out.ignored == "duplicate_candidate"


def test_a_remembered_id_costs_about_25_bytes_of_state() -> None:
    decider, state = Decider(PushModel(), NOW_CONFIG), UserState("u1")
    empty = len(orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS))
    for n in range(100):
        decider.on_candidate(state, candidate("u1", f"candidate-{n:04d}-" + "x" * 100,
                                              NOON + n * 60_000))
    state.pending.clear()
    state.recent_content.clear()
    state.recent_sends_ms.clear()
    state.recent_sent.clear()
    grown = len(orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS)) - empty
    assert grown / 100 <= 26  # the 114-character ids are not stored


# --- any sequence: Decider and replay -----------------------------------------------------

USERS = ("u1", "u2", "a:b")
inputs = st.lists(st.tuples(
    st.sampled_from(["candidate", "candidate", "critical", "tick"]),
    st.sampled_from(USERS),
    st.integers(0, 5),  # candidate id: repeats happen, for one user and across users
    st.sampled_from([1, 30, 4 * 60, 20 * 60, 2 * 24 * 60]),  # minutes since the previous input
    st.sampled_from([0.5, 3, 14]),  # ttl hours
), min_size=1, max_size=40)


def candidate_message(user: str, n: int, created: int, ttl_h: float, critical: bool) -> Candidate:
    # users whose ids are made to collide when joined with a colon: "a:b" + "c1" vs "a" + "b:c1"
    return candidate(user, f"c{n}", created, ttl_h, critical=critical, tz="Europe/Berlin")


def assert_one_final_and_one_intent(decisions: list[dict[str, Any]],
                                    intents: list[dict[str, Any]]) -> None:
    finals = Counter((d["user_id"], d["candidate_id"]) for d in decisions if d["final"])
    holds = Counter((d["user_id"], d["candidate_id"]) for d in decisions if not d["final"])
    sent = Counter((i["user_id"], i["candidate_id"]) for i in intents)
    assert max(finals.values(), default=0) <= 1, finals
    assert max(holds.values(), default=0) <= 1, holds
    assert max(sent.values(), default=0) <= 1, sent
    assert set(holds) <= set(finals)  # every hold ended (the run ends well past every expiry)
    by_id = {i["intent_id"]: (i["user_id"], i["candidate_id"]) for i in intents}
    assert len(by_id) == len(intents)  # no two (user, candidate id) share an intent id
    for d in decisions:
        assert d["decision_id"] == intent_id_for(d["user_id"], d["candidate_id"])


# Remembered longer than the longest generated sequence (40 steps of at most 2 days), so the
# invariant holds over all of it; the default horizon is checked above.
LONG = DeciderConfig(policy=PolicyConfig(holdout_share=0.0), decided_horizon_ms=90 * MS_DAY)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=inputs)
def test_any_sequence_through_the_decider_has_one_final_and_one_intent(
    steps: list[tuple[str, str, int, int, float]],
) -> None:
    decider = Decider(PushModel(), LONG)
    states = {u: UserState(u, tz="Europe/Berlin") for u in USERS}
    outputs, now = [], NOON
    for kind, user, n, minutes, ttl in steps:
        now += minutes * 60_000
        if kind == "tick":
            outputs.append(decider.on_tick(states[user], now))
        else:
            message = candidate_message(user, n, now, ttl, kind == "critical")
            outputs.append(decider.on_candidate(states[user], message))
    outputs += [decider.on_tick(s, now + MS_DAY) for s in states.values()]
    decisions = [d for out in outputs for d in valid(out).decisions]
    assert_one_final_and_one_intent(decisions, [i for out in outputs for i in out.intents])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=inputs)
def test_any_sequence_through_the_replay_has_one_final_and_one_intent(
    steps: list[tuple[str, str, int, int, float]],
) -> None:
    outputs: list[StepOutput] = []
    options = ReplayOptions(tick_interval_ms=60_000, user_ttl_ms=90 * MS_DAY)
    replayer = Replayer(LONG, PushModel(), options, outputs.append)
    now = NOON
    for kind, user, n, minutes, ttl in steps:
        now += minutes * 60_000
        if kind == "tick":  # activity moves event time; the replay ticks on its own
            value: dict[str, Any] = {"event_id": f"e{now}", "user_id": user, "type": "app_open",
                                     "event_time_ms": now, "tz": "Europe/Berlin"}
            topic = "user-events"
        else:
            c = candidate_message(user, n, now, ttl, kind == "critical")
            value = {"candidate_id": c.candidate_id, "user_id": user, "kind": c.kind,
                     "content_id": c.content_id, "created_at_ms": c.created_at_ms,
                     "expires_at_ms": c.expires_at_ms, "critical": c.critical, "tz": c.tz}
            topic = "notification-candidates"
        replayer.feed(orjson.dumps({"topic": topic, "key": user, "value": value}))
    end = {"event_id": "end", "user_id": "u1", "type": "app_open", "event_time_ms": now + MS_DAY,
           "tz": "Europe/Berlin"}
    replayer.feed(orjson.dumps({"topic": "user-events", "key": "u1", "value": end}))
    report = replayer.finish()
    assert report.dead_letters == {} and report.held_at_end == 0
    decisions = [d for out in outputs for d in valid(out).decisions]
    assert_one_final_and_one_intent(decisions, [i for out in outputs for i in out.intents])
