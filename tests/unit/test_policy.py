"""The decision policy: every guardrail, exploration propensities, dismissals, volume control.

Table-driven cases pin each reason code; Hypothesis checks the rules hold for any history,
any time zone (IANA with DST, and fixed offsets) and any instant, DST changes included.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contracts import Candidate, local_time
from streams.features import (
    MS_DAY,
    MS_HOUR,
    UserState,
    decided_key,
    sends_in_last_day,
    state_to_bytes,
)
from streams.policy import (
    Decision,
    PolicyConfig,
    Scores,
    decide,
    effective_threshold,
    in_holdout,
    in_quiet_hours,
    quiet_hours_end,
    send_score,
    unit_hash,
)

# The disable-risk cap off: GOOD's p_disable (0.01) would lower the cap to 4 in every case
CFG = PolicyConfig(holdout_share=0.0, p_disable_cap_at=0.0)
QUIET_CRITICAL = PolicyConfig(holdout_share=0.0, critical_in_quiet_hours=False)
GOOD, POOR = Scores(0.5, 0.01, 3), Scores(0.01, 0.0, 3)
ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Sydney",
         "America/Sao_Paulo", "Asia/Kathmandu", "Pacific/Chatham", "+05:30", "-08:00", "Z"]
T2026, T2027 = 1_767_225_600_000, 1_798_761_600_000


def at(tz: str, *wall: int) -> int:
    """Epoch ms of a wall-clock time in ``tz`` (first occurrence if ambiguous)."""
    return int(datetime(*wall, tzinfo=ZoneInfo(tz)).timestamp() * 1000)  # type: ignore[arg-type, misc]


def utc(*wall: int) -> int:
    return int(datetime(*wall, tzinfo=UTC).timestamp() * 1000)  # type: ignore[arg-type, misc]


NOON = at("Europe/Berlin", 2026, 6, 10, 12)


def candidate(n: str = "c1", created: int = NOON, ttl: int = 6 * MS_HOUR,
              **kw: Any) -> Candidate:
    fields = {"kind": "trending", "content_id": f"v-{n}", **kw}
    return Candidate(n, "u1", created_at_ms=created, expires_at_ms=created + ttl, **fields)


def user(tz: str = "Europe/Berlin", sends: tuple[int, ...] = (), **kw: Any) -> UserState:
    """A user with push history (100 sends so far: not a new user) unless ``sent`` says."""
    kw.setdefault("sent", 100)
    state = UserState("u1", tz=tz, **kw)
    state.recent_sends_ms = list(sends)
    state.last_send_ms = max(sends) if sends else None
    return state


def draw_id(below: bool, share: float = CFG.explore_share) -> str:
    """A candidate id whose deterministic exploration draw is below (or above) the share."""
    return next(f"c{i}" for i in range(10_000)
                if (unit_hash("explore", str(CFG.seed), f"c{i}") < share) == below)


def holdout_user(inside: bool, share: float = 0.05) -> str:
    return next(f"u{i}" for i in range(10_000) if in_holdout(f"u{i}", share) == inside)


# --- one case per reason ------------------------------------------------------------------

Case = tuple[str, Callable[[], tuple[Scores | None, UserState, Candidate, int, PolicyConfig]],
             str, str, float]

CASES: list[Case] = [
    ("above threshold", lambda: (GOOD, user(), candidate(), NOON, CFG), "send",
     "above_threshold", 1.0),
    ("expired", lambda: (GOOD, user(), candidate(), NOON + 6 * MS_HOUR + 1, CFG), "suppress",
     "expired", 1.0),
    ("sent at expiry is fine", lambda: (GOOD, user(), candidate(ttl=0), NOON, CFG), "send",
     "above_threshold", 1.0),
    ("same candidate again", lambda: (GOOD, user(decided_ids={decided_key("c1"): NOON // 1000}),
                                      candidate(), NOON, CFG), "suppress", "duplicate", 1.0),
    ("same content within 24h", lambda: (GOOD, user(recent_content={"v-c1": NOON - 23 * MS_HOUR}),
                                         candidate(), NOON, CFG), "suppress", "duplicate", 1.0),
    ("same content after 24h", lambda: (GOOD, user(recent_content={"v-c1": NOON - MS_DAY}),
                                        candidate(), NOON, CFG), "send", "above_threshold", 1.0),
    ("user disabled", lambda: (GOOD, user(disabled=True), candidate(), NOON, CFG), "suppress",
     "user_disabled", 1.0),
    ("capped at 5 in 24h", lambda: (GOOD, user(sends=tuple(NOON - h * MS_HOUR for h in
                                                          (5, 10, 15, 20, 23))),
                                    candidate(), NOON, CFG), "suppress", "capped", 1.0),
    ("cap window rolls", lambda: (GOOD, user(sends=tuple(NOON - h * MS_HOUR for h in
                                                        (5, 10, 15, 20, 24))),
                                  candidate(), NOON, CFG), "send", "above_threshold", 1.0),
    ("min gap", lambda: (GOOD, user(sends=(NOON - 4 * MS_HOUR + 1,)), candidate(), NOON, CFG),
     "suppress", "min_gap", 1.0),
    ("gap passed", lambda: (GOOD, user(sends=(NOON - 4 * MS_HOUR,)), candidate(), NOON, CFG),
     "send", "above_threshold", 1.0),
    ("critical bypasses caps and gap", lambda: (None, user(sends=tuple(
        NOON - h * MS_HOUR for h in (1, 2, 3, 4, 5))), candidate(critical=True), NOON, CFG),
     "send", "critical", 1.0),
    ("critical to a disabled user", lambda: (None, user(disabled=True), candidate(critical=True),
                                             NOON, CFG), "send", "critical", 1.0),
    ("critical in quiet hours goes now", lambda: (None, user(), candidate(
        critical=True, created=at("Europe/Berlin", 2026, 6, 10, 23), ttl=12 * MS_HOUR),
        at("Europe/Berlin", 2026, 6, 10, 23), CFG), "send", "critical", 1.0),
    ("critical waits for quiet hours' end if a setting says so", lambda: (None, user(), candidate(
        critical=True, created=at("Europe/Berlin", 2026, 6, 10, 23), ttl=12 * MS_HOUR),
        at("Europe/Berlin", 2026, 6, 10, 23), QUIET_CRITICAL), "hold", "quiet_hours", 1.0),
    ("critical never waits past its expiry", lambda: (None, user(), candidate(
        critical=True, created=at("Europe/Berlin", 2026, 6, 10, 23)),
        at("Europe/Berlin", 2026, 6, 10, 23), QUIET_CRITICAL), "send", "critical", 1.0),
    ("quiet hours hold", lambda: (GOOD, user(), candidate(
        created=at("Europe/Berlin", 2026, 6, 10, 23), ttl=12 * MS_HOUR),
        at("Europe/Berlin", 2026, 6, 10, 23), CFG), "hold", "quiet_hours", 1.0),
    ("quiet hours outlast the candidate", lambda: (GOOD, user(), candidate(
        created=at("Europe/Berlin", 2026, 6, 10, 23)), at("Europe/Berlin", 2026, 6, 10, 23), CFG),
     "suppress", "quiet_hours", 1.0),
    ("below threshold", lambda: (POOR, user(), candidate(draw_id(False)), NOON, CFG),
     "suppress", "below_threshold", 1 - CFG.explore_share),
    ("explore", lambda: (POOR, user(), candidate(draw_id(True)), NOON, CFG), "send", "explore",
     CFG.explore_share),
    ("explore waits for quiet hours to end", lambda: (POOR, user(), candidate(
        draw_id(True), created=at("Europe/Berlin", 2026, 6, 11, 6)),
        at("Europe/Berlin", 2026, 6, 11, 6), CFG), "hold", "quiet_hours", CFG.explore_share),
    ("no exploration past a guardrail", lambda: (POOR, user(sends=(NOON - MS_HOUR,)),
                                                candidate(draw_id(True)), NOON, CFG),
     "suppress", "min_gap", 1.0),
    ("exploration off", lambda: (POOR, user(), candidate(draw_id(True)), NOON,
                                 dataclasses.replace(CFG, explore_share=0.0)),
     "suppress", "below_threshold", 1.0),
]


@pytest.mark.parametrize(("name", "build", "action", "reason", "propensity"), CASES,
                         ids=[c[0] for c in CASES])
def test_reason_codes(name: str, build: Callable[..., tuple], action: str, reason: str,
                      propensity: float) -> None:
    scores, state, cand, now, config = build()
    decision = decide(scores, state, cand, now, config)
    assert (decision.action, decision.reason) == (action, reason)
    assert decision.propensity == pytest.approx(propensity)
    assert decision.explore == (reason == "explore" or (action == "hold" and propensity < 1))
    if action == "suppress":
        assert decision.send_at_ms is None
    else:
        assert decision.send_at_ms is not None
        assert now <= decision.send_at_ms <= cand.expires_at_ms


def test_critical_says_so_and_skips_the_model() -> None:
    decision = decide(None, user(), candidate(critical=True), NOON, CFG)
    assert (decision.reason, decision.score, decision.scores) == ("critical", None, None)


def test_a_scored_decision_needs_scores() -> None:
    with pytest.raises(ValueError, match="needs model scores"):
        decide(None, user(), candidate(), NOON, CFG)


# --- holdout ------------------------------------------------------------------------------


def test_holdout_users_get_the_baseline_without_the_model() -> None:
    config = PolicyConfig(holdout_share=0.05)
    inside = dataclasses.replace(candidate(), user_id=holdout_user(True))
    sent = decide(POOR, user(), inside, NOON, config)
    assert (sent.action, sent.reason, sent.holdout, sent.score) == ("send", "holdout_send",
                                                                     True, None)
    capped = decide(POOR, user(sends=(NOON - MS_HOUR,)), inside, NOON, config)
    assert (capped.action, capped.reason, capped.holdout) == ("suppress", "min_gap", True)
    outside = dataclasses.replace(candidate(), user_id=holdout_user(False))
    assert decide(POOR, user(), outside, NOON, config).holdout is False


def test_holdout_assignment_is_deterministic_and_about_the_share() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    share = sum(in_holdout(u, 0.05) for u in users) / len(users)
    assert 0.045 < share < 0.055
    assert [in_holdout(u, 0.05) for u in users[:50]] == [in_holdout(u, 0.05) for u in users[:50]]
    assert not any(in_holdout(u, 0.0) for u in users[:500])


# --- long-term objective ------------------------------------------------------------------


def test_send_score_weighs_p_open_against_p_disable() -> None:
    risky, safe = Scores(0.3, 0.25, 1), Scores(0.2, 0.0, 1)
    state = user()
    assert send_score(risky, state, CFG) < send_score(safe, state, CFG)
    assert decide(risky, state, candidate(draw_id(False)), NOON, CFG).reason == "below_threshold"
    no_weight = dataclasses.replace(CFG, disable_weight=0.0)
    assert decide(risky, state, candidate(), NOON, no_weight).reason == "above_threshold"


@pytest.mark.parametrize(("sent", "dismissed", "reason"), [
    (0, 0, "above_threshold"),      # new user: no penalty
    (20, 4, "above_threshold"),     # dismisses at the prior rate
    (20, 10, "above_threshold"),    # some dismissals: lower score, still above
    (20, 20, "below_threshold"),    # keeps dismissing: no longer sent
])
def test_a_user_who_keeps_dismissing_gets_fewer_pushes(sent: int, dismissed: int,
                                                       reason: str) -> None:
    state = user(sent=sent, dismissed=dismissed)
    decision = decide(Scores(0.13, 0.0, 1), state, candidate(draw_id(False)), NOON, CFG)
    assert decision.reason == reason


@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50))
def test_dismiss_penalty_grows_with_dismissals(sent: int, dismissed: int, more: int) -> None:
    few, many = user(sent=sent + more, dismissed=dismissed), user(sent=sent + more,
                                                                  dismissed=dismissed + more)
    assert send_score(GOOD, many, CFG) <= send_score(GOOD, few, CFG)


# --- volume control -----------------------------------------------------------------------


def test_volume_controller_moves_the_threshold_with_the_users_last_24h() -> None:
    config = dataclasses.replace(CFG, threshold=0.1, volume_target=2.0, volume_gain=0.05)
    assert effective_threshold(user(), NOON, config) == pytest.approx(0.05)
    assert effective_threshold(user(sends=(NOON - 1,)), NOON, config) == pytest.approx(0.1)
    three = user(sends=(NOON - 1, NOON - 2, NOON - 3))
    assert effective_threshold(three, NOON, config) == pytest.approx(0.2)
    assert effective_threshold(three, NOON + MS_DAY, config) == pytest.approx(0.05)
    assert effective_threshold(three, NOON, CFG) == CFG.threshold  # off by default


def test_volume_controller_holds_a_target_per_user() -> None:
    """Candidates every 2h with uniform scores: a steep controller keeps the target, a soft
    one moves the volume toward it."""
    def run(config: PolicyConfig) -> float:
        state, sends = user(tz="UTC"), 0
        start = utc(2026, 5, 1)
        for n in range(12 * 20):
            now = start + n * 2 * MS_HOUR
            cand = candidate(f"v{n}", created=now)
            p = unit_hash("score", str(n))
            decision = decide(Scores(p, 0.0, 1), state, cand, now, config)
            state.advance(now)
            if decision.action == "send" and now >= start + 10 * MS_DAY:
                sends += 1
            if decision.action == "send":
                state.recent_sends_ms.append(now)
                state.last_send_ms = now
        return sends / 10

    loose = dataclasses.replace(CFG, threshold=0.0, min_gap_ms=0, quiet_start_hour=0,
                                quiet_end_hour=0, daily_cap=100, explore_share=0.0)
    assert run(loose) > 10
    for target in (1.0, 2.0, 3.0, 5.0):
        assert run(dataclasses.replace(loose, volume_target=target, volume_gain=1.0)) == target
        soft = run(dataclasses.replace(loose, volume_target=target, volume_gain=0.2))
        assert target < soft < run(loose)


# --- exploration and propensity -----------------------------------------------------------


def test_exploration_share_matches_the_logged_propensity() -> None:
    decisions = [decide(POOR, user(), candidate(f"c{i}"), NOON, CFG) for i in range(4000)]
    explored = sum(d.explore for d in decisions) / len(decisions)
    assert abs(explored - CFG.explore_share) < 0.01
    assert {d.propensity for d in decisions if d.explore} == {CFG.explore_share}
    assert {d.propensity for d in decisions if not d.explore} == {1 - CFG.explore_share}


def check_propensity(decision: Decision, config: PolicyConfig) -> None:
    eps = config.explore_share
    assert 0.0 <= decision.propensity <= 1.0
    if decision.explore:
        assert decision.action in ("send", "hold") and decision.propensity == eps
    elif decision.action in ("send", "hold"):
        assert decision.propensity == 1.0
    else:
        expected = {1.0, 1 - eps} if decision.reason == "below_threshold" else {1.0}
        assert decision.propensity in expected


# --- properties over histories, zones and instants ----------------------------------------

instants = st.integers(T2026, T2027)
histories = st.lists(st.integers(-30 * MS_HOUR, 0), max_size=8)


@settings(max_examples=300, deadline=None)
@given(tz=st.sampled_from(ZONES), now=instants, ago=histories,
       p_open=st.floats(0, 1), ttl_h=st.integers(0, 30), critical=st.booleans(),
       n=st.integers(0, 10**6), allow=st.booleans())
def test_guardrails_hold_for_any_history_zone_and_instant(
    tz: str, now: int, ago: list[int], p_open: float, ttl_h: int, critical: bool, n: int,
    allow: bool,
) -> None:
    config = dataclasses.replace(CFG, critical_in_quiet_hours=allow)
    state = user(tz=tz, sends=tuple(now + a for a in ago))
    before = state_to_bytes(state)
    cand = candidate(f"c{n}", created=now, ttl=ttl_h * MS_HOUR, critical=critical)
    decision = decide(None if critical else Scores(p_open, 0.0, 1), state, cand, now, config)
    assert state_to_bytes(state) == before  # pure: reads the state, never writes it
    assert decision == decide(None if critical else Scores(p_open, 0.0, 1), state, cand, now,
                              config)
    check_propensity(decision, config)
    if decision.action == "suppress":
        return
    send_at = decision.send_at_ms
    assert send_at is not None and now <= send_at <= cand.expires_at_ms
    quiet = in_quiet_hours(send_at, tz, config.quiet_start_hour, config.quiet_end_hour)
    # a critical push goes out in quiet hours if allowed, or if it would expire before their end
    outlasted = quiet_hours_end(send_at, tz, config.quiet_end_hour) > cand.expires_at_ms
    assert not quiet or (critical and (allow or outlasted))
    if not critical:
        assert sends_in_last_day(state, send_at) < config.daily_cap
        assert state.last_send_ms is None or send_at - state.last_send_ms >= config.min_gap_ms


@settings(max_examples=400, deadline=None)
@given(tz=st.sampled_from(ZONES), now=instants, end_hour=st.integers(0, 23))
def test_quiet_hours_end_is_the_next_local_end_hour(tz: str, now: int, end_hour: int) -> None:
    end = quiet_hours_end(now, tz, end_hour)
    assert now < end <= now + 25 * MS_HOUR
    local = local_time(end, tz)
    assert local.minute == 0
    # The local hour is the end hour, or the first hour after a gap that swallowed it.
    assert local.hour == end_hour or local_time(end - 1, tz).hour != (local.hour - 1) % 24
    assert not in_quiet_hours(end, tz, (end_hour - 2) % 24, end_hour)


# --- daylight saving time -----------------------------------------------------------------

DST = [
    # zone, a quiet-hours instant the night before the change, the expected end (UTC)
    ("America/New_York", at("America/New_York", 2026, 3, 7, 23, 30), utc(2026, 3, 8, 12)),
    ("America/New_York", at("America/New_York", 2026, 11, 1, 0, 30), utc(2026, 11, 1, 13)),
    ("Europe/Berlin", at("Europe/Berlin", 2026, 10, 24, 23, 30), utc(2026, 10, 25, 7)),
    ("Europe/Berlin", at("Europe/Berlin", 2026, 3, 29, 1, 30), utc(2026, 3, 29, 6)),
    ("Australia/Sydney", at("Australia/Sydney", 2026, 4, 4, 23), utc(2026, 4, 4, 22)),
]


@pytest.mark.parametrize(("tz", "night", "expected"), DST, ids=[f"{z}-{n}" for z, n, _ in DST])
def test_quiet_hours_end_across_a_dst_change(tz: str, night: int, expected: int) -> None:
    assert in_quiet_hours(night, tz, 22, 8)
    assert quiet_hours_end(night, tz, 8) == expected
    assert local_time(expected, tz).hour == 8
    decision = decide(GOOD, user(tz=tz), candidate(created=night, ttl=14 * MS_HOUR), night, CFG)
    assert (decision.action, decision.reason, decision.send_at_ms) == ("hold", "quiet_hours",
                                                                        expected)


@pytest.mark.parametrize(("tz", "night", "end_hour", "expected"), [
    # 02:00 does not exist on 2026-03-08 in New York: the end is the instant after the gap.
    ("America/New_York", at("America/New_York", 2026, 3, 8, 1), 2, utc(2026, 3, 8, 7)),
    # 01:00 happens twice on 2026-11-01 in New York: the first one.
    ("America/New_York", at("America/New_York", 2026, 11, 1, 0, 15), 1, utc(2026, 11, 1, 5)),
    # 02:00 does not exist on 2026-03-29 in Berlin; 02:00 happens twice on 2026-10-25.
    ("Europe/Berlin", at("Europe/Berlin", 2026, 3, 29, 1), 2, utc(2026, 3, 29, 1)),
    ("Europe/Berlin", at("Europe/Berlin", 2026, 10, 25, 1), 2, utc(2026, 10, 25, 0)),
])
def test_a_nonexistent_or_repeated_end_hour_does_not_break(tz: str, night: int, end_hour: int,
                                                           expected: int) -> None:
    end = quiet_hours_end(night, tz, end_hour)
    assert end == expected
    config = dataclasses.replace(CFG, quiet_start_hour=0, quiet_end_hour=end_hour)
    decision = decide(GOOD, user(tz=tz), candidate(created=night, ttl=6 * MS_HOUR), night, config)
    assert decision.send_at_ms == expected and decision.action == "hold"


def test_quiet_hours_are_local_not_utc() -> None:
    instant = utc(2026, 6, 10, 21)  # 21:00 UTC
    expected = {"UTC": False, "Europe/Berlin": True, "Asia/Kolkata": True,
                "America/New_York": False, "Asia/Tokyo": True, "+05:30": True, "-08:00": False}
    assert {tz: in_quiet_hours(instant, tz, 22, 8) for tz in expected} == expected


def test_a_quiet_window_inside_one_day_and_an_empty_one() -> None:
    assert in_quiet_hours(utc(2026, 6, 10, 13), "UTC", 12, 14)
    assert not in_quiet_hours(utc(2026, 6, 10, 14), "UTC", 12, 14)
    assert not any(in_quiet_hours(utc(2026, 6, 10, h), "UTC", 5, 5) for h in range(24))


def test_nothing_here_is_nan() -> None:
    decision = decide(GOOD, user(), candidate(), NOON, CFG)
    assert decision.score is not None and not math.isnan(decision.score)


# --- recent-send similarity, active now, new users, disable risk ---------------------------

GUARDS = PolicyConfig(holdout_share=0.0)  # the defaults of all four rules


def sent_before(state: UserState, *sends: tuple[int, str, str | None]) -> UserState:
    """``state`` after pushes ``(at_ms, kind, creator)``, through the real bookkeeping."""
    from streams.features import record_send

    for n, (at_ms, kind, creator) in enumerate(sends):
        record_send(state, at_ms, Candidate(f"old{n}", "u1", kind, f"old-v{n}", at_ms,
                                            at_ms + MS_HOUR, creator_id=creator))
    return state


def established(**kw: Any) -> UserState:
    return user(last_active_ms=NOON - MS_DAY, **kw)


def test_a_candidate_like_a_recent_send_is_demoted_and_says_so() -> None:
    state = sent_before(established(), (NOON - 5 * MS_HOUR, "trending", "ann"))
    fresh = decide(Scores(0.5, 0.0, 3), state, candidate("c1", creator_id="bob"), NOON, GUARDS)
    like = decide(Scores(0.5, 0.0, 3), state, candidate("c2", creator_id="ann"), NOON, GUARDS)
    assert fresh.score == pytest.approx(0.5 * GUARDS.similar_kind_factor)  # same kind only
    assert fresh.demoted == pytest.approx(GUARDS.similar_kind_factor)
    factor = GUARDS.similar_creator_factor * GUARDS.similar_kind_factor
    assert (like.action, like.reason) == ("send", "above_threshold")
    assert like.demoted == pytest.approx(factor) and like.score == pytest.approx(0.5 * factor)
    # just above the threshold: the demotion alone turns the send into a suppression
    marginal = Scores(GUARDS.threshold / factor * 0.99, 0.0, 3)
    cid = draw_id(False)
    stopped = decide(marginal, state, candidate(cid, creator_id="ann"), NOON, GUARDS)
    assert (stopped.action, stopped.reason) == ("suppress", "similar_recent")
    assert stopped.propensity == pytest.approx(1 - GUARDS.explore_share)
    clear = dataclasses.replace(GUARDS, similar_window_ms=0)
    assert decide(marginal, state, candidate(cid, creator_id="ann"), NOON, clear).action == "send"
    # outside the window, or with the factors at 1, nothing is demoted
    assert decide(marginal, state, candidate(cid, creator_id="ann"), NOON + MS_HOUR,
                  GUARDS).demoted is None
    ones = dataclasses.replace(GUARDS, similar_creator_factor=1.0, similar_kind_factor=1.0)
    assert decide(marginal, state, candidate(cid, creator_id="ann"), NOON, ones).demoted is None


def test_each_recent_send_alike_multiplies_the_factor_again() -> None:
    state = sent_before(established(), (NOON - 5 * MS_HOUR, "live", "ann"),
                        (NOON - 2 * MS_HOUR, "live", "ann"))
    d = decide(Scores(0.5, 0.0, 3), state, candidate("c1", kind="live", creator_id="ann"),
               NOON, dataclasses.replace(GUARDS, min_gap_ms=0))
    assert d.demoted == pytest.approx((GUARDS.similar_creator_factor
                                       * GUARDS.similar_kind_factor) ** 2)


def test_a_user_in_the_app_gets_the_push_when_their_activity_window_ends() -> None:
    state = established()
    state.last_active_ms = NOON - 30_000
    d = decide(GOOD, state, candidate(), NOON, GUARDS)
    assert (d.action, d.reason, d.send_at_ms) == ("hold", "active_now",
                                                  NOON - 30_000 + GUARDS.active_now_ms)
    assert d.propensity == 1.0 and not d.explore
    short = decide(GOOD, state, candidate(ttl=60_000), NOON, GUARDS)  # expires first
    assert (short.action, short.reason, short.propensity) == ("suppress", "active_now", 1.0)
    off = dataclasses.replace(GUARDS, active_now_ms=0)
    assert decide(GOOD, state, candidate(), NOON, off).reason == "above_threshold"
    state.last_active_ms = NOON - GUARDS.active_now_ms  # the window has passed
    assert decide(GOOD, state, candidate(), NOON, GUARDS).reason == "above_threshold"


def test_activity_stamped_far_ahead_is_a_skewed_clock_not_a_session() -> None:
    state = established()
    state.last_active_ms = NOON + 3 * MS_HOUR  # the device's clock runs hours ahead
    assert decide(GOOD, state, candidate(), NOON, GUARDS).reason == "above_threshold"
    state.last_active_ms = NOON + 60_000  # a minute ahead: in the app now
    assert decide(GOOD, state, candidate(), NOON, GUARDS).reason == "active_now"


def test_an_exploration_waits_for_the_activity_window_too() -> None:
    state = established()
    state.last_active_ms = NOON
    d = decide(POOR, state, candidate(draw_id(True)), NOON, GUARDS)
    assert (d.action, d.reason, d.explore) == ("hold", "active_now", True)
    assert d.propensity == pytest.approx(GUARDS.explore_share)


def test_a_holdout_user_in_the_app_waits_as_well() -> None:
    uid = holdout_user(True)
    state = UserState(uid, tz="Europe/Berlin", sent=100, last_active_ms=NOON)
    cand = dataclasses.replace(candidate(), user_id=uid)
    d = decide(None, state, cand, NOON, dataclasses.replace(GUARDS, holdout_share=0.05))
    assert (d.action, d.reason, d.holdout) == ("hold", "active_now", True)


def test_new_and_returning_users_get_a_gentler_cap_and_gap() -> None:
    new = user(sent=1, sends=(NOON - 5 * MS_HOUR,), last_active_ms=NOON - MS_DAY)
    assert decide(GOOD, new, candidate(), NOON, GUARDS).reason == "new_user_gap"
    capped = user(sent=2, sends=(NOON - 20 * MS_HOUR, NOON - 10 * MS_HOUR),
                  last_active_ms=NOON - MS_DAY)
    assert decide(GOOD, capped, candidate(), NOON, GUARDS).reason == "new_user_cap"
    back = user(sends=(NOON - 5 * MS_HOUR,), last_active_ms=NOON - 8 * MS_DAY)
    assert decide(GOOD, back, candidate(), NOON, GUARDS).reason == "new_user_gap"
    staying = user(sends=(NOON - 5 * MS_HOUR,), last_active_ms=NOON - 6 * MS_DAY)
    assert decide(GOOD, staying, candidate(), NOON, GUARDS).reason == "above_threshold"
    off = dataclasses.replace(GUARDS, new_user_daily_cap=0, new_user_min_gap_ms=0)
    assert decide(GOOD, new, candidate(), NOON, off).reason == "above_threshold"
    assert decide(GOOD, capped, candidate(), NOON, off).reason == "above_threshold"
    nobody = dataclasses.replace(GUARDS, new_user_pushes=0, new_user_inactive_ms=0)
    assert decide(GOOD, back, candidate(), NOON, nobody).reason == "above_threshold"
    # the ordinary gap speaks first when it is what blocks
    assert decide(GOOD, user(sent=1, sends=(NOON - MS_HOUR,)), candidate(), NOON,
                  GUARDS).reason == "min_gap"


def test_the_cap_falls_as_p_disable_rises() -> None:
    from streams.policy import disable_risk_cap

    guards = dataclasses.replace(GUARDS, p_disable_cap_at=0.1)  # off by default
    three = established(sends=tuple(NOON - h * MS_HOUR for h in (5, 10, 15)))
    risky = Scores(0.5, 0.05, 3)  # cap floor(5 * (1 - 0.05 / 0.1)) = 2
    assert disable_risk_cap(0.05, guards) == 2
    d = decide(risky, three, candidate(), NOON, guards)
    assert (d.action, d.reason, d.propensity) == ("suppress", "disable_risk_cap", 1.0)
    assert d.score == pytest.approx(0.45) and d.scores == risky
    assert decide(Scores(0.5, 0.001, 3), three, candidate(), NOON, guards).action == "send"
    off = dataclasses.replace(guards, p_disable_cap_at=0.0)
    assert decide(risky, three, candidate(), NOON, off).reason == "above_threshold"
    assert disable_risk_cap(0.5, guards) == 1  # never below one push a day
    one = established(sends=(NOON - 5 * MS_HOUR,))
    assert decide(Scores(0.9, 0.5, 3), one, candidate(), NOON, guards).reason == "disable_risk_cap"


def test_critical_pushes_bypass_all_four_rules() -> None:
    state = sent_before(user(sent=1, last_active_ms=NOON), (NOON - MS_HOUR, "trending", "ann"))
    every = dataclasses.replace(GUARDS, p_disable_cap_at=0.1)
    d = decide(None, state, candidate(critical=True, creator_id="ann"), NOON, every)
    assert (d.action, d.reason, d.demoted) == ("send", "critical", None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * MS_DAY), st.sampled_from(["a", "b", "c"]),
                          st.sampled_from(["x", "y", None])), max_size=60))
def test_the_record_of_recent_sends_stays_bounded(sends: list[tuple[int, str, Any]]) -> None:
    from streams.features import RECENT_SENT_LIMIT, state_from_bytes

    state = UserState("u1")
    for at_ms, kind, creator in sorted(sends, key=lambda send: send[0]):
        state.advance(at_ms)
        sent_before(state, (at_ms, kind, creator))
        assert len(state.recent_sent) <= RECENT_SENT_LIMIT
    assert all(t > state.watermark_ms - MS_DAY - 5 * 60_000 for t, _, _ in state.recent_sent)
    assert state_from_bytes(state_to_bytes(state)) == state
