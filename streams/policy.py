"""The decision: a pure function of (scores, user state, candidate, now, config).

Checks run in a fixed order and the first that applies gives the reason, so "why did user U
not get candidate C" is answered by one decision record:

expired -> duplicate -> critical -> user_disabled -> duplicate content -> capped ->
min_gap -> holdout baseline or threshold (above_threshold, explore, below_threshold) ->
quiet_hours (a send in quiet hours is held until they end, or suppressed if it would expire).

>>> from streams.contracts import Candidate
>>> from streams.features import UserState
>>> c = Candidate("c1", "u1", "trending", "v1", created_at_ms=0, expires_at_ms=3_600_000)
>>> cfg = PolicyConfig(threshold=0.1, quiet_start_hour=0, quiet_end_hour=0, holdout_share=0)
>>> decide(Scores(0.3, 0.0, 7), UserState("u1"), c, 1_000, cfg).reason
'above_threshold'
>>> decide(Scores(0.3, 0.0, 7), UserState("u1"), c, 4_000_000, cfg).reason
'expired'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from streams.contracts import Candidate, local_time
from streams.features import MS_DAY, UserState, sends_in_last_day

SEND, HOLD, SUPPRESS = "send", "hold", "suppress"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Policy knobs; built from Settings by the worker, passed explicitly to :func:`decide`."""

    threshold: float = 0.08
    daily_cap: int = 5
    min_gap_ms: int = 4 * 3_600_000
    quiet_start_hour: int = 22
    quiet_end_hour: int = 8
    holdout_share: float = 0.05
    explore_share: float = 0.05
    disable_weight: float = 1.0
    seed: int = 42


@dataclass(frozen=True, slots=True)
class Scores:
    """What the model said about one candidate at decision time."""

    p_open: float
    p_disable: float
    model_version: int


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one candidate, with the reason and what the policy knew."""

    action: str
    reason: str
    score: float | None
    threshold: float
    explore: bool
    propensity: float
    holdout: bool
    send_at_ms: int | None


def unit_hash(*parts: str) -> float:
    """A deterministic draw in [0, 1) from strings (same input, same draw, on every worker).

    >>> unit_hash("a") == unit_hash("a") != unit_hash("b")
    True
    """
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def in_holdout(user_id: str, share: float) -> bool:
    return unit_hash("holdout", user_id) < share


def in_quiet_hours(at_ms: int, tz: str, start_hour: int, end_hour: int) -> bool:
    """Whether the user's local hour falls in [start, end), wrapping midnight.

    >>> in_quiet_hours(0, "UTC", 22, 8), in_quiet_hours(12 * 3_600_000, "UTC", 22, 8)
    (True, False)
    """
    hour = local_time(at_ms, tz).hour
    if start_hour == end_hour:
        return False
    if start_hour < end_hour:
        return start_hour <= hour < end_hour
    return hour >= start_hour or hour < end_hour


def quiet_hours_end(at_ms: int, tz: str, end_hour: int) -> int:
    """Event time of the next local ``end_hour``:00 after ``at_ms`` (DST-aware).

    >>> quiet_hours_end(0, "UTC", 8)  # 1970-01-01T08:00Z
    28800000
    """
    local = local_time(at_ms, tz)
    target = local.replace(hour=end_hour, minute=0, second=0, microsecond=0)
    if target <= local:
        naive = target.replace(tzinfo=None) + timedelta(days=1)
        target = naive.replace(tzinfo=local.tzinfo)
    return _epoch_ms(target)


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def guardrail(state: UserState, now_ms: int, config: PolicyConfig) -> str | None:
    """The first of capped / min_gap / quiet_hours that stops a send now, or None."""
    if sends_in_last_day(state, now_ms) >= config.daily_cap:
        return "capped"
    if state.last_send_ms is not None and now_ms - state.last_send_ms < config.min_gap_ms:
        return "min_gap"
    if in_quiet_hours(now_ms, state.tz, config.quiet_start_hour, config.quiet_end_hour):
        return "quiet_hours"
    return None


def decide(
    scores: Scores | None,
    state: UserState,
    candidate: Candidate,
    now_ms: int,
    config: PolicyConfig,
) -> Decision:
    """Decide whether ``candidate`` goes out now, later, or not at all."""
    holdout = in_holdout(candidate.user_id, config.holdout_share)
    early = _hard_stop(state, candidate, now_ms, holdout, config)
    if early is not None:
        return early
    stop = guardrail(state, now_ms, config)
    if stop in ("capped", "min_gap"):
        return _decision(SUPPRESS, stop, None, config, holdout=holdout)
    if holdout:
        wanted = _decision(SEND, "holdout_send", None, config, holdout=True, send_at=now_ms)
    else:
        wanted = _by_score(scores, candidate, now_ms, config)
    if wanted.action == SEND and stop == "quiet_hours":
        return _hold_for_quiet_hours(wanted, state, candidate, now_ms, config)
    return wanted


def _hard_stop(
    state: UserState, candidate: Candidate, now_ms: int, holdout: bool, config: PolicyConfig
) -> Decision | None:
    if now_ms > candidate.expires_at_ms:
        return _decision(SUPPRESS, "expired", None, config, holdout=holdout)
    if candidate.candidate_id in state.decided:
        return _decision(SUPPRESS, "duplicate", None, config, holdout=holdout)
    if candidate.critical:
        return _decision(SEND, "critical", None, config, holdout=holdout, send_at=now_ms)
    if state.disabled:
        return _decision(SUPPRESS, "user_disabled", None, config, holdout=holdout)
    sent_at = state.recent_content.get(candidate.content_id)
    if sent_at is not None and now_ms - sent_at < MS_DAY:
        return _decision(SUPPRESS, "duplicate", None, config, holdout=holdout)
    return None


def _hold_for_quiet_hours(
    wanted: Decision, state: UserState, candidate: Candidate, now_ms: int, config: PolicyConfig
) -> Decision:
    """A send that falls in quiet hours waits for their end, unless it expires first."""
    send_at = quiet_hours_end(now_ms, state.tz, config.quiet_end_hour)
    if send_at > candidate.expires_at_ms:
        return replace(wanted, action=SUPPRESS, reason="quiet_hours", send_at_ms=None)
    return replace(wanted, action=HOLD, reason="quiet_hours", send_at_ms=send_at)


def _by_score(
    scores: Scores | None, candidate: Candidate, now_ms: int, config: PolicyConfig
) -> Decision:
    if scores is None:
        raise ValueError("a non-critical, non-holdout decision needs model scores")
    score = scores.p_open - config.disable_weight * scores.p_disable
    if score >= config.threshold:
        return _decision(SEND, "above_threshold", score, config, send_at=now_ms)
    if unit_hash("explore", str(config.seed), candidate.candidate_id) < config.explore_share:
        return _decision(
            SEND, "explore", score, config, explore=True, propensity=config.explore_share,
            send_at=now_ms,
        )
    return _decision(
        SUPPRESS, "below_threshold", score, config, propensity=1.0 - config.explore_share
    )


def _decision(
    action: str,
    reason: str,
    score: float | None,
    config: PolicyConfig,
    *,
    holdout: bool = False,
    explore: bool = False,
    propensity: float = 1.0,
    send_at: int | None = None,
) -> Decision:
    return Decision(
        action=action,
        reason=reason,
        score=score,
        threshold=config.threshold,
        explore=explore,
        propensity=propensity,
        holdout=holdout,
        send_at_ms=send_at,
    )
