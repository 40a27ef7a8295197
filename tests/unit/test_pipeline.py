"""The Decider's outbox: held pushes are released at the user's best local hour, or dropped
with the reason that stopped them; every record it writes is valid against the schemas."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.contracts import Candidate, UserEvent, local_time, validator
from streams.features import (
    COMPRESS_OVER,
    MS_DAY,
    MS_HOUR,
    UserState,
    state_from_bytes,
    state_to_bytes,
)
from streams.model import PushModel
from streams.outbox import hold_entry
from streams.pipeline import Decider, DeciderConfig, StepOutput
from streams.policy import (
    Decision,
    PolicyConfig,
    Scores,
    in_holdout,
    in_quiet_hours,
    quiet_hours_end,
)
from streams.redelivery import remember

POLICY = PolicyConfig(holdout_share=0.0)
CONFIG = DeciderConfig(policy=POLICY)
KIND_BASE = {"comment_reply": 0.2, "trending": 0.1, "new_video_from_followed": 0.09,
             "friend_joined": 0.03}


class HourScored(Decider):
    """Scores a send by its kind and how much the user is active at that local hour."""

    def score(self, candidate: Candidate, features: dict[str, float], at_ms: int,
              model: PushModel) -> Scores:
        base = KIND_BASE.get(candidate.kind, 0.1)
        return Scores(min(0.9, base + 0.1 * max(0.0, features["hour_activity"])), 0.0, 1)


def at(tz: str, *wall: int) -> int:
    return int(datetime(*wall, tzinfo=ZoneInfo(tz)).timestamp() * 1000)  # type: ignore[arg-type, misc]


def utc(*wall: int) -> int:
    return int(datetime(*wall, tzinfo=UTC).timestamp() * 1000)  # type: ignore[arg-type, misc]


def profiled(tz: str, peak: int = 20, events: float = 100.0) -> UserState:
    """A user whose activity profile (local hours) peaks at ``peak``."""
    state = UserState("u1", tz=tz)
    state.activity_by_hour = [1.0] * 24
    state.activity_by_hour[peak] = events
    return state


def candidate(n: str, created: int, ttl_h: float = 8, kind: str = "trending",
              **kw: Any) -> Candidate:
    return Candidate(n, "u1", kind, kw.pop("content_id", f"v-{n}"), created,
                     created + int(ttl_h * MS_HOUR), **kw)


def valid(out: StepOutput) -> StepOutput:
    for record in out.decisions:
        validator("notification-decision")(record)
    for intent in out.intents:
        validator("notification-intent")(intent)
    return out


def actions(out: StepOutput) -> list[tuple[str, str]]:
    return [(d["action"], d["reason"]) for d in out.decisions]


# --- held -> released at the right local hour ---------------------------------------------

RELEASES = [
    # zone, arrival, best local hour, expected release (UTC)
    ("Asia/Tokyo", at("Asia/Tokyo", 2026, 6, 10, 14), 20, utc(2026, 6, 10, 11)),
    # spring forward overnight: 09:00 the next morning is EDT already
    ("America/New_York", at("America/New_York", 2026, 3, 7, 23), 9, utc(2026, 3, 8, 13)),
    # fall back overnight: 09:00 the next morning is CET again
    ("Europe/Berlin", at("Europe/Berlin", 2026, 10, 24, 23), 9, utc(2026, 10, 25, 8)),
    ("+05:30", utc(2026, 6, 10, 8), 20, utc(2026, 6, 10, 14, 30)),
]


@pytest.mark.parametrize(("tz", "arrival", "peak", "expected"), RELEASES,
                         ids=[r[0] for r in RELEASES])
def test_held_then_released_at_the_users_best_local_hour(tz: str, arrival: int, peak: int,
                                                         expected: int) -> None:
    decider, state = HourScored(PushModel(), CONFIG), profiled(tz, peak)
    held = valid(decider.on_candidate(state, candidate("c1", arrival, ttl_h=12)))
    assert actions(held) == [("hold", "held_for_send_time")] and not held.intents
    [record] = held.decisions
    assert record["send_at_ms"] == expected and local_time(expected, tz).hour == peak
    assert valid(decider.on_tick(state, expected - 1)).decisions == []
    released = valid(decider.on_tick(state, expected))
    assert actions(released) == [("send", "released")]
    [intent] = released.intents
    assert (intent["send_at_ms"], intent["decided_at_ms"], intent["reason"]) == (
        expected, arrival, "released")
    for name in ("score", "threshold", "propensity", "explore", "p_open", "model_version"):
        assert intent[name] == record[name]
    assert state.outbox == {} and state.pending[intent["intent_id"]].decided_at_ms == expected


def test_without_enough_profile_the_push_goes_now() -> None:
    state = profiled("Asia/Tokyo")
    state.activity_by_hour = [0.0] * 24  # one event short of send_time_min_events
    state.activity_by_hour[20] = float(POLICY.send_time_min_events - 1)
    out = HourScored(PushModel(), CONFIG).on_candidate(
        state, candidate("c1", at("Asia/Tokyo", 2026, 6, 10, 14)))
    assert actions(out) == [("send", "above_threshold")] and len(out.intents) == 1


def test_send_time_optimisation_can_be_turned_off() -> None:
    config = DeciderConfig(policy=dataclasses.replace(POLICY, send_time=False))
    out = HourScored(PushModel(), config).on_candidate(
        profiled("Asia/Tokyo"), candidate("c1", at("Asia/Tokyo", 2026, 6, 10, 14)))
    assert actions(out) == [("send", "above_threshold")]


def test_a_push_is_not_held_past_its_expiry() -> None:
    state = profiled("Asia/Tokyo")
    out = HourScored(PushModel(), CONFIG).on_candidate(
        state, candidate("c1", at("Asia/Tokyo", 2026, 6, 10, 14), ttl_h=4.5))
    # the peak at 20:00 and the hour before it (read with its neighbours) are after 18:30
    assert actions(out) == [("send", "above_threshold")]


# --- held, then stopped at release --------------------------------------------------------

TOKYO_2PM = at("Asia/Tokyo", 2026, 6, 10, 14)
TOKYO_8PM = at("Asia/Tokyo", 2026, 6, 10, 20)


def held_state() -> tuple[Decider, UserState]:
    decider, state = HourScored(PushModel(), CONFIG), profiled("Asia/Tokyo")
    assert actions(decider.on_candidate(state, candidate("c1", TOKYO_2PM, ttl_h=7))) == [
        ("hold", "held_for_send_time")]
    return decider, state


def test_expired_while_held_is_suppressed_as_expired() -> None:
    decider, state = held_state()
    out = valid(decider.on_tick(state, TOKYO_2PM + 7 * MS_HOUR + 1))  # first tick after expiry
    assert actions(out) == [("suppress", "expired")] and not out.intents
    assert out.decisions[0]["propensity"] == 1.0 and state.outbox == {}


def test_capped_at_release_is_suppressed_as_capped() -> None:
    decider, state = held_state()
    for n in range(5):  # critical pushes bypass the cap, and count toward it
        sent = decider.on_candidate(state, candidate(f"k{n}", TOKYO_2PM + (n + 1) * 60_000,
                                                     critical=True))
        assert actions(sent) == [("send", "critical")]
    out = valid(decider.on_tick(state, TOKYO_8PM))
    assert actions(out) == [("suppress", "capped")] and not out.intents


def test_min_gap_at_release_is_suppressed_as_min_gap() -> None:
    decider, state = held_state()
    decider.on_candidate(state, candidate("k1", TOKYO_8PM - MS_HOUR, critical=True))
    assert actions(valid(decider.on_tick(state, TOKYO_8PM))) == [("suppress", "min_gap")]


def test_disabled_while_held_is_suppressed() -> None:
    decider, state = held_state()
    decider.on_event(state, UserEvent("e1", "u1", "push_disabled", TOKYO_2PM + MS_HOUR,
                                      "Asia/Tokyo", "unknown"))
    assert actions(decider.on_tick(state, TOKYO_8PM)) == [("suppress", "user_disabled")]


def test_a_held_critical_push_still_bypasses_caps_at_release() -> None:
    config = DeciderConfig(policy=dataclasses.replace(POLICY, critical_in_quiet_hours=False))
    decider, state = HourScored(PushModel(), config), UserState("u1", tz="Europe/Berlin")
    night = at("Europe/Berlin", 2026, 6, 10, 23)
    out = decider.on_candidate(state, candidate("k0", night, ttl_h=12, critical=True))
    assert actions(out) == [("hold", "quiet_hours")]
    morning = at("Europe/Berlin", 2026, 6, 11, 8)
    state.recent_sends_ms = [morning - n * MS_HOUR for n in range(1, 6)]
    state.last_send_ms = morning - MS_HOUR
    out = valid(decider.on_tick(state, morning))
    assert actions(out) == [("send", "released")] and out.intents[0]["critical"] is True


def test_event_time_jumping_into_quiet_hours_waits_for_their_end() -> None:
    decider, state = HourScored(PushModel(), CONFIG), profiled("Asia/Tokyo", peak=21)
    decider.on_candidate(state, candidate("c1", TOKYO_2PM, ttl_h=20))
    late = at("Asia/Tokyo", 2026, 6, 10, 23)  # the 21:00 send time was never ticked
    assert valid(decider.on_tick(state, late)).decisions == []
    morning = at("Asia/Tokyo", 2026, 6, 11, 8)
    assert [e["send_at_ms"] for e in state.outbox.values()] == [morning]
    assert actions(decider.on_tick(state, morning)) == [("send", "released")]


def test_event_time_jumping_past_quiet_hours_and_expiry() -> None:
    decider, state = HourScored(PushModel(), CONFIG), profiled("Asia/Tokyo", peak=21)
    decider.on_candidate(state, candidate("c1", TOKYO_2PM, ttl_h=10))
    out = decider.on_tick(state, at("Asia/Tokyo", 2026, 6, 10, 23))
    assert actions(out) == [("suppress", "quiet_hours")]


# --- competition for a slot ---------------------------------------------------------------


def test_a_better_candidate_takes_the_slot_of_a_held_one() -> None:
    decider, state = held_state()  # c1, trending, held for 20:00; c2 arrives at 19:00
    out = valid(decider.on_candidate(state, candidate("c2", TOKYO_2PM + 5 * MS_HOUR,
                                                      kind="comment_reply")))
    assert actions(out) == [("suppress", "min_gap"), ("hold", "held_for_send_time")]
    assert out.decisions[0]["candidate_id"] == "c1" and out.decisions[0]["propensity"] == 1.0
    assert [e["candidate"]["candidate_id"] for e in state.outbox.values()] == ["c2"]
    assert [i["candidate_id"] for i in decider.on_tick(state, TOKYO_8PM).intents] == ["c2"]


def test_a_worse_candidate_does_not_take_the_slot() -> None:
    decider, state = held_state()
    out = decider.on_candidate(state, candidate("c2", TOKYO_2PM + MS_HOUR, kind="friend_joined"))
    assert [d["reason"] for d in out.decisions] in (["below_threshold"], ["explore"])
    assert [e["candidate"]["candidate_id"] for e in state.outbox.values()] == ["c1"]


def test_at_release_a_better_push_due_within_the_gap_wins() -> None:
    decider, state = HourScored(PushModel(), CONFIG), UserState("u1", tz="UTC")
    noon = utc(2026, 6, 10, 12)
    for n, (send_at, score) in enumerate([(noon, 0.2), (noon + 2 * MS_HOUR, 0.3)]):
        cand = candidate(f"c{n}", noon - MS_HOUR, ttl_h=6)
        decision = Decision("hold", "held_for_send_time", score, 0.08, False, 1.0, False, send_at,
                            Scores(score, 0.0, 1))
        state.outbox[cand.intent_id] = hold_entry(cand, decision, noon - MS_HOUR)
    assert actions(decider.on_tick(state, noon)) == [("suppress", "min_gap")]
    assert actions(decider.on_tick(state, noon + 2 * MS_HOUR)) == [("send", "released")]


def test_the_outbox_is_bounded() -> None:
    config = DeciderConfig(policy=dataclasses.replace(POLICY, min_gap_ms=0), outbox_limit=3)
    decider, state = Decider(PushModel(), config), UserState("u1", tz="UTC")
    night = utc(2026, 6, 10, 23)
    reasons = [decider.on_candidate(state, candidate(f"c{n}", night, ttl_h=12))
               .decisions[0]["reason"] for n in range(4)]
    assert reasons == ["quiet_hours"] * 3 + ["capped"] and len(state.outbox) == 3


# --- duplicates, state, determinism -------------------------------------------------------


def test_duplicates_while_held() -> None:
    decider, state = held_state()
    again = decider.on_candidate(state, candidate("c1", TOKYO_2PM + 60_000, ttl_h=7))
    same_content = decider.on_candidate(
        state, candidate("c9", TOKYO_2PM + 60_000, content_id="v-c1", kind="comment_reply"))
    assert again.ignored == "duplicate_candidate" and actions(again) == []
    assert actions(same_content) == [("suppress", "duplicate")]


def test_the_outbox_survives_the_changelog() -> None:
    decider, state = held_state()
    restored = state_from_bytes(state_to_bytes(state))
    assert restored == state
    direct, replayed = decider.on_tick(state, TOKYO_8PM), decider.on_tick(restored, TOKYO_8PM)
    assert direct == replayed and actions(direct) == [("send", "released")]


def test_records_written_before_decision_scores_existed_still_release() -> None:
    decider, state = held_state()
    [entry] = state.outbox.values()
    entry["scores"] = entry["decision"].pop("scores")
    assert actions(decider.on_tick(state, TOKYO_8PM)) == [("send", "released")]


# --- any sequence of inputs ---------------------------------------------------------------

START = at("America/New_York", 2026, 3, 6, 12)  # three days across the change to DST
steps = st.lists(st.tuples(
    st.sampled_from(["candidate", "critical", "activity", "open", "dismiss", "tick"]),
    st.integers(1, 6 * 60),  # minutes since the previous input
    st.sampled_from(sorted(KIND_BASE)),
    st.integers(0, 8),  # content id: repeats happen
    st.sampled_from([0.5, 3, 8, 14]),  # ttl hours
), min_size=1, max_size=60)


def drive(decider: Decider, inputs: list[tuple[str, int, str, int, float]],
          tz: str) -> tuple[UserState, list[StepOutput], list[Candidate]]:
    state, outputs, candidates, now = profiled(tz, peak=20, events=60.0), [], [], START
    for n, (kind, minutes, push_kind, content, ttl) in enumerate(inputs):
        now += minutes * 60_000
        if kind in ("candidate", "critical"):
            cand = candidate(f"c{n}", now, ttl, push_kind, content_id=f"v{content}",
                             critical=kind == "critical")
            candidates.append(cand)
            outputs.append(decider.on_candidate(state, cand))
        elif kind == "tick":
            outputs.append(decider.on_tick(state, now))
        else:
            intent = next(iter(state.pending), None)
            event_type = {"activity": "app_open", "open": "push_opened",
                          "dismiss": "push_dismissed"}[kind]
            outputs.append(decider.on_event(state, UserEvent(
                f"e{n}", "u1", event_type, now, tz, None if kind == "activity" else intent)))
    outputs.append(decider.on_tick(state, now + 2 * MS_DAY))
    return state, outputs, candidates


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=steps, tz=st.sampled_from(["America/New_York", "Europe/Berlin", "Asia/Kolkata"]),
       allow=st.booleans())
def test_no_sequence_of_inputs_breaks_a_guardrail(
    inputs: list[tuple[str, int, str, int, float]], tz: str, allow: bool
) -> None:
    policy = dataclasses.replace(POLICY, critical_in_quiet_hours=allow)
    decider = HourScored(PushModel(), DeciderConfig(policy=policy))
    state, outputs, candidates = drive(decider, inputs, tz)
    by_id = {c.intent_id: c for c in candidates}
    intents = [valid(out).intents for out in outputs]
    sent = [i for batch in intents for i in batch]
    assert len({i["intent_id"] for i in sent}) == len(sent)  # never the same candidate twice
    assert state.outbox == {}  # every held push ended, one way or the other
    for n, intent in enumerate(sent):
        cand, t = by_id[intent["intent_id"]], intent["send_at_ms"]
        assert t <= cand.expires_at_ms
        before = [i["send_at_ms"] for i in sent[:n]]
        same_content = [i["send_at_ms"] for i in sent[:n] if i["content_id"] == cand.content_id]
        assert all(t - b >= MS_DAY for b in same_content)
        quiet = in_quiet_hours(t, tz, policy.quiet_start_hour, policy.quiet_end_hour)
        outlasted = quiet_hours_end(t, tz, policy.quiet_end_hour) > cand.expires_at_ms
        assert not quiet or (cand.critical and (allow or outlasted))
        if not cand.critical:
            assert sum(1 for b in before if t - b < MS_DAY) < policy.daily_cap
            assert all(t - b >= policy.min_gap_ms for b in before)
        assert intent["propensity"] in (1.0, policy.explore_share)
        assert intent["explore"] == (intent["propensity"] == policy.explore_share < 1.0)
    first = [out.decisions for out in outputs]
    decided = {d["candidate_id"] for batch in first for d in batch}
    assert decided == {c.candidate_id for c in candidates}


@settings(max_examples=30, deadline=None)
@given(inputs=steps)
def test_replay_gives_the_same_outputs(inputs: list[tuple[str, int, str, int, float]]) -> None:
    runs = [drive(HourScored(PushModel(), CONFIG), inputs, "Europe/Berlin") for _ in range(2)]
    assert runs[0][1] == runs[1][1] and runs[0][0] == runs[1][0]


# --- long-term objective through the whole loop -------------------------------------------


def test_a_user_who_keeps_dismissing_gets_fewer_pushes_than_one_who_ignores_them() -> None:
    """Same candidates, same (untrained) model: only the dismissals differ."""
    decider = Decider(PushModel(), CONFIG)
    sent = {}
    for dismisses in (True, False):
        state, count = UserState("u1", tz="UTC"), 0
        for n in range(30):
            now = utc(2026, 6, 1, 9) + n * MS_DAY // 2
            out = decider.on_candidate(state, candidate(f"c{n}", now, ttl_h=1))
            for intent in out.intents:
                count += 1
                if dismisses:
                    decider.on_event(state, UserEvent(f"e{n}", "u1", "push_dismissed",
                                                      now + 60_000, "UTC", intent["intent_id"]))
            decider.on_tick(state, now + 2 * MS_HOUR)
        sent[dismisses] = count
    assert sent[False] == 30 and sent[True] < 10


def test_holdout_pushes_log_the_model_scores_they_did_not_use() -> None:
    user_id = next(f"u{i}" for i in range(10_000)
                   if in_holdout(f"u{i}", 0.05))
    decider = Decider(PushModel(), DeciderConfig(policy=PolicyConfig()))
    state = UserState(user_id, tz="Europe/Berlin")
    night = at("Europe/Berlin", 2026, 6, 10, 23)
    cand = dataclasses.replace(candidate("c1", night, ttl_h=12), user_id=user_id)
    held = valid(decider.on_candidate(state, cand))
    assert actions(held) == [("hold", "quiet_hours")] and held.decisions[0]["holdout"]
    released = valid(decider.on_tick(state, at("Europe/Berlin", 2026, 6, 11, 8)))
    assert actions(released) == [("send", "released")]
    assert released.intents[0]["p_open"] == held.decisions[0]["p_open"] == pytest.approx(0.1)


def test_a_user_holding_stored_outputs_fits_in_2_kib() -> None:
    """The largest records: pending labels with their features plus the stored outputs of
    an uncommitted input. They are deflated; a small record stays plain JSON."""
    anytime = dataclasses.replace(CONFIG, policy=dataclasses.replace(
        CONFIG.policy, active_now_ms=0, new_user_daily_cap=0, new_user_min_gap_ms=0))
    decider, state = HourScored(PushModel(), anytime), profiled("Asia/Tokyo", peak=14)
    quiet = state_to_bytes(state)
    assert quiet[:1] == b"{" and state_from_bytes(quiet) == state
    for n, kind in enumerate(("comment_reply", "trending", "friend_joined")):
        at_ms = TOKYO_2PM + n * 2 * MS_HOUR
        out = valid(decider.on_candidate(state, candidate(f"c{n}", at_ms, kind=kind)))
        outputs = [("decisions_topic", d) for d in out.decisions]
        remember(state, "candidates", n, outputs + [("intents_topic", i) for i in out.intents])
    assert state.pending and len(state.unconfirmed) == 3
    plain = orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS)
    packed = state_to_bytes(state)
    assert len(plain) > COMPRESS_OVER and len(packed) < min(2048, len(plain) // 2)
    assert state_from_bytes(packed) == state


def test_a_held_critical_push_is_sent_rather_than_lost_to_quiet_hours() -> None:
    """Event time jumps past its send time into the next night, and quiet hours would outlast
    it: a critical push goes out then rather than expire in the outbox."""
    config = DeciderConfig(policy=dataclasses.replace(POLICY, critical_in_quiet_hours=False))
    decider, state = HourScored(PushModel(), config), UserState("u1", tz="Europe/Berlin")
    night = at("Europe/Berlin", 2026, 6, 10, 23)
    out = decider.on_candidate(state, candidate("k0", night, ttl_h=24.5, critical=True))
    assert actions(out) == [("hold", "quiet_hours")]
    out = valid(decider.on_tick(state, at("Europe/Berlin", 2026, 6, 11, 23)))
    assert actions(out) == [("send", "released")] and state.outbox == {}


def test_a_critical_push_at_night_goes_out_at_once_by_default() -> None:
    decider, state = HourScored(PushModel(), CONFIG), UserState("u1", tz="Europe/Berlin")
    night = at("Europe/Berlin", 2026, 6, 10, 23)
    out = valid(decider.on_candidate(state, candidate("login", night, ttl_h=0.1, critical=True)))
    assert actions(out) == [("send", "critical")]
    assert out.intents[0]["send_at_ms"] == night and state.outbox == {}


# --- decided when it arrived ----------------------------------------------------------------


def test_a_late_candidate_is_decided_when_it_arrived_not_at_the_users_last_event() -> None:
    decider, state = HourScored(PushModel(), CONFIG), UserState("u1", tz="UTC")
    noon = utc(2026, 6, 10, 12)
    decider.on_event(state, UserEvent("e1", "u1", "app_open", noon, "UTC"))
    arrived = noon + int(2.5 * MS_HOUR)  # created at noon, reached the worker 2.5 h later
    out = valid(decider.on_candidate(state, candidate("c1", noon, ttl_h=8), arrived))
    assert actions(out) == [("send", "above_threshold")]
    assert out.decisions[0]["decided_at_ms"] == arrived
    assert out.intents[0]["send_at_ms"] == arrived == out.intents[0]["decided_at_ms"]


def test_a_candidate_expired_on_arrival_is_suppressed_even_for_a_user_with_no_state() -> None:
    decider = HourScored(PushModel(), CONFIG)
    now = utc(2026, 6, 10, 12)
    stale = candidate("c1", now - 3 * MS_DAY, ttl_h=6)
    out = valid(decider.on_candidate(UserState("u1"), stale, now))
    assert actions(out) == [("suppress", "expired")] and not out.intents


def test_a_late_held_push_is_planned_from_its_arrival() -> None:
    """Arriving at 23:30 local (created at 21:00), it is held until 08:00, not sent at 21:00."""
    decider, state = HourScored(PushModel(), CONFIG), UserState("u1", tz="Europe/Berlin")
    created = at("Europe/Berlin", 2026, 6, 10, 21)
    arrived = at("Europe/Berlin", 2026, 6, 10, 23, 30)
    out = valid(decider.on_candidate(state, candidate("c1", created, ttl_h=14), arrived))
    assert actions(out) == [("hold", "quiet_hours")]
    assert out.decisions[0]["send_at_ms"] == at("Europe/Berlin", 2026, 6, 11, 8)
    assert out.decisions[0]["decided_at_ms"] == arrived


# --- whose zone ------------------------------------------------------------------------------


def test_the_zone_the_device_reported_wins_over_the_candidates_older_one() -> None:
    """A traveller's phone says Tokyo; upstream still has New York on the candidate. At
    02:00 in Tokyo the push waits for 08:00 Tokyo, it does not go out as 13:00 in New York."""
    decider, state = HourScored(PushModel(), CONFIG), UserState("u1")
    night = at("Asia/Tokyo", 2026, 6, 11, 2)
    decider.on_event(state, UserEvent("e1", "u1", "app_open", night - MS_HOUR, "Asia/Tokyo"))
    out = valid(decider.on_candidate(state, candidate("c1", night, ttl_h=12,
                                                      tz="America/New_York")))
    assert actions(out) == [("hold", "quiet_hours")] and state.tz == "Asia/Tokyo"
    assert out.decisions[0]["send_at_ms"] == at("Asia/Tokyo", 2026, 6, 11, 8)


def test_an_older_event_read_late_does_not_move_the_zone_back() -> None:
    decider, state = HourScored(PushModel(), CONFIG), UserState("u1")
    noon = utc(2026, 6, 10, 12)
    decider.on_event(state, UserEvent("e2", "u1", "app_open", noon, "Asia/Tokyo"))
    decider.on_event(state, UserEvent("e1", "u1", "push_dismissed", noon - MS_HOUR,
                                      "America/New_York", "unknown"))
    decider.on_event(state, UserEvent("e0", "u1", "like", noon - 2 * MS_HOUR, "America/New_York"))
    assert state.tz == "Asia/Tokyo"


def test_a_candidates_zone_stands_in_until_the_device_reports_one() -> None:
    decider, state = HourScored(PushModel(), CONFIG), UserState("u1")
    night = at("Asia/Tokyo", 2026, 6, 11, 2)
    out = decider.on_candidate(state, candidate("c1", night, ttl_h=12, tz="Asia/Tokyo"))
    assert actions(out) == [("hold", "quiet_hours")] and state.tz == "Asia/Tokyo"


def stranger() -> UserState:
    """A user the worker knows nothing about yet (as it creates one for a new key)."""
    return UserState("u1", tz_known=False)


def test_a_zoneless_candidate_for_a_user_of_unknown_zone_waits_for_the_devices_zone() -> None:
    """Noon in UTC is midnight in Auckland: not knowing the zone, the push is held (quiet
    hours assumed) instead of sent in UTC; the user's event names Auckland, so it waits for
    08:00 there, and goes out then."""
    decider, state = HourScored(PushModel(), CONFIG), stranger()
    noon = utc(2026, 6, 10, 12)
    held = valid(decider.on_candidate(state, candidate("c1", noon, ttl_h=12)))
    assert actions(held) == [("hold", "quiet_hours")] and not held.intents
    named = valid(decider.on_event(state, UserEvent("e1", "u1", "app_open", noon + 60_000,
                                                    "Pacific/Auckland")))
    assert named.decisions == [] and named.intents == []
    morning = at("Pacific/Auckland", 2026, 6, 11, 8)
    assert [e["send_at_ms"] for e in state.outbox.values()] == [morning]
    out = valid(decider.on_tick(state, morning))
    assert actions(out) == [("send", "released")] and out.intents[0]["send_at_ms"] == morning


def test_a_push_held_for_the_zone_goes_out_when_the_zone_named_is_in_daytime() -> None:
    """The event naming the zone is the user in the app: the push waits for the end of their
    activity window (``active_now_ms``), then goes out."""
    decider, state = HourScored(PushModel(), CONFIG), stranger()
    noon = utc(2026, 6, 10, 12)
    decider.on_candidate(state, candidate("c1", noon, ttl_h=12))
    out = valid(decider.on_event(state, UserEvent("e1", "u1", "app_open", noon + 60_000, "UTC")))
    after = noon + 60_000 + CONFIG.policy.active_now_ms
    assert actions(out) == [] and [e["send_at_ms"] for e in state.outbox.values()] == [after]
    out = valid(decider.on_tick(state, after))
    assert actions(out) == [("send", "released")] and out.intents[0]["send_at_ms"] == after


def test_a_push_held_for_a_zone_never_named_expires_unsent() -> None:
    decider, state = HourScored(PushModel(), CONFIG), stranger()
    noon = utc(2026, 6, 10, 12)
    decider.on_candidate(state, candidate("c1", noon, ttl_h=2))
    assert valid(decider.on_tick(state, noon + 2 * MS_HOUR)).decisions == []
    out = valid(decider.on_tick(state, noon + 2 * MS_HOUR + 1))
    assert actions(out) == [("suppress", "expired")] and state.outbox == {}


def test_a_critical_push_or_a_candidates_zone_needs_no_device_report() -> None:
    decider, noon = HourScored(PushModel(), CONFIG), utc(2026, 6, 10, 12)
    out = decider.on_candidate(stranger(), candidate("k1", noon, critical=True))
    assert actions(out) == [("send", "critical")]
    out = decider.on_candidate(stranger(), candidate("c1", noon, tz="Europe/Berlin"))
    assert actions(out) == [("send", "above_threshold")]


def test_a_held_push_due_while_the_user_is_in_the_app_waits_for_the_window_to_end() -> None:
    """Released only once the user's activity window has passed; one whose window outlasts
    it is dropped as active_now."""
    decider, state = Decider(PushModel(), CONFIG), UserState("u1", tz="Europe/Berlin", sent=100)
    night = at("Europe/Berlin", 2026, 6, 10, 23)
    held = valid(decider.on_candidate(state, candidate("c1", night, ttl_h=10, kind="trending")))
    assert actions(held) == [("hold", "quiet_hours")]
    morning = at("Europe/Berlin", 2026, 6, 11, 8)
    opened = valid(decider.on_event(state, UserEvent("e1", "u1", "app_open", morning - 30_000,
                                                     "Europe/Berlin")))
    assert actions(opened) == []
    assert actions(valid(decider.on_tick(state, morning))) == []  # in the app: it waits
    after = morning - 30_000 + POLICY.active_now_ms
    out = valid(decider.on_tick(state, after))
    assert actions(out) == [("send", "released")] and out.intents[0]["send_at_ms"] == after
    # a push that expires before the window ends is dropped with the reason
    held = valid(decider.on_candidate(state, candidate("c2", night + MS_DAY,
                                                       ttl_h=9 + 1 / 60)))
    valid(decider.on_event(state, UserEvent("e2", "u1", "app_open", morning + MS_DAY - 1_000,
                                            "Europe/Berlin")))
    out = valid(decider.on_tick(state, morning + MS_DAY))
    assert actions(out) == [("suppress", "active_now")]


def test_decision_records_say_how_much_a_score_was_demoted() -> None:
    decider = Decider(PushModel(), DeciderConfig(policy=dataclasses.replace(
        POLICY, quiet_start_hour=0, quiet_end_hour=0, threshold=0.0, min_gap_ms=0,
        send_time=False)))
    state = UserState("u1", sent=100)
    noon = utc(2026, 6, 10, 12)
    first = valid(decider.on_candidate(state, candidate("c1", noon, creator_id="ann")))
    second = valid(decider.on_candidate(state, candidate("c2", noon + MS_HOUR,
                                                         creator_id="ann")))
    assert first.decisions[0]["demoted"] is None
    factor = POLICY.similar_creator_factor * POLICY.similar_kind_factor
    assert second.decisions[0]["demoted"] == pytest.approx(factor)


# --- the best of several: a short pool per user ---------------------------------------------

POOLED = dataclasses.replace(POLICY, quiet_start_hour=0, quiet_end_hour=0, send_time=False,
                             pool_ms=10 * 60_000, similar_window_ms=0)


def pooled() -> tuple[Decider, UserState, int]:
    return HourScored(PushModel(), DeciderConfig(policy=POOLED)), UserState("u1", sent=100), \
        utc(2026, 6, 10, 12)


def test_a_send_due_now_waits_out_the_pool_then_goes() -> None:
    decider, state, noon = pooled()
    held = valid(decider.on_candidate(state, candidate("c1", noon)))
    assert actions(held) == [("hold", "pooled")] and not held.intents
    assert held.decisions[0]["send_at_ms"] == noon + POOLED.pool_ms
    assert valid(decider.on_tick(state, noon + POOLED.pool_ms - 1)).intents == []
    out = valid(decider.on_tick(state, noon + POOLED.pool_ms))
    assert actions(out) == [("send", "released")]
    assert out.intents[0]["send_at_ms"] == noon + POOLED.pool_ms


def test_a_better_candidate_arriving_in_the_pool_goes_out_instead() -> None:
    decider, state, noon = pooled()
    valid(decider.on_candidate(state, candidate("c1", noon, kind="trending")))
    better = valid(decider.on_candidate(state, candidate("c2", noon + 5 * 60_000,
                                                         kind="comment_reply")))
    assert actions(better) == [("suppress", "min_gap"), ("hold", "pooled")]
    assert better.decisions[0]["candidate_id"] == "c1"
    out = valid(decider.on_tick(state, noon + 15 * 60_000))
    assert [i["candidate_id"] for i in out.intents] == ["c2"]


def test_a_worse_candidate_arriving_in_the_pool_does_not() -> None:
    decider, state, noon = pooled()
    valid(decider.on_candidate(state, candidate("c1", noon, kind="comment_reply")))
    worse = valid(decider.on_candidate(state, candidate("c2", noon + 5 * 60_000,
                                                        kind="trending")))
    assert [d["candidate_id"] for d in worse.decisions] == ["c2"]
    assert worse.decisions[0]["action"] == "suppress"
    out = valid(decider.on_tick(state, noon + POOLED.pool_ms))
    assert [i["candidate_id"] for i in out.intents] == ["c1"]


def test_each_pooled_candidate_gets_exactly_one_final_record() -> None:
    decider, state, noon = pooled()
    records: list[dict[str, Any]] = []
    for n, kind in enumerate(["trending", "comment_reply", "friend_joined", "comment_reply"]):
        records += valid(decider.on_candidate(
            state, candidate(f"c{n}", noon + n * 60_000, kind=kind))).decisions
    records += valid(decider.on_tick(state, noon + MS_HOUR)).decisions
    finals = [r["candidate_id"] for r in records if r["action"] != "hold"]
    assert sorted(finals) == ["c0", "c1", "c2", "c3"]


def test_critical_pushes_explorations_and_short_lived_ones_are_not_pooled() -> None:
    decider, state, noon = pooled()
    out = valid(decider.on_candidate(state, candidate("c1", noon, kind="login_code",
                                                      critical=True)))
    assert actions(out) == [("send", "critical")]
    decider, state, noon = pooled()
    out = valid(decider.on_candidate(state, candidate("c2", noon, ttl_h=1 / 12)))  # 5 min
    assert actions(out) == [("send", "above_threshold")]
    off = HourScored(PushModel(), DeciderConfig(policy=dataclasses.replace(POOLED, pool_ms=0)))
    out = valid(off.on_candidate(UserState("u1", sent=100), candidate("c3", noon)))
    assert actions(out) == [("send", "above_threshold")]
