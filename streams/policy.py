"""The decision: a pure function of (scores, user state, candidate, now, config).

Checks run in a fixed order and the first that applies gives the reason, so "why did user U
not get candidate C" is answered by one decision record:

expired -> duplicate candidate -> duplicate content -> critical (bypasses model and caps) ->
user_disabled -> holdout baseline -> score. A scored candidate goes out at the best *feasible
slot*: now, or (send-time optimisation) the start of one of the user's better local hours
before it expires. A slot is feasible when the rolling-24h cap, the minimum gap, quiet hours
and the pushes already held for the user allow it. The best slot is compared with the
threshold (moved by the optional volume controller); below it, a deterministic draw explores
with probability ``explore_share``.

``propensity`` is the probability that the policy takes the logged action given what it knew:
for send and hold the probability of sending (1, or ``explore_share`` for an exploration), for
suppress the probability of suppressing (1 when no draw could have sent it, else
``1 - explore_share``). See ``docs/policy.md``.

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
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from streams.contracts import Candidate
from streams.features import (
    UserState,
    recent_sent_like,
    sends_in_last_day,
    smoothed_rate,
    was_decided,
)
from streams.guardrails import (
    active_until,
    blocked_at,
    conflicts,
    duplicate_content,
    guardrail,
    held_priority,
    in_quiet_hours,
    quiet_hours_end,
)
from streams.sendtime import best_hour_slots, profile_events

__all__ = [
    "HOLD", "SEND", "SUPPRESS", "Decision", "PolicyConfig", "ScoreAt", "Scores", "decide",
    "disable_risk_cap", "dismiss_penalty", "effective_threshold", "guardrail", "held_priority",
    "in_holdout", "in_quiet_hours", "quiet_hours_end", "send_score", "similarity_factor",
    "unit_hash",
]
SEND, HOLD, SUPPRESS = "send", "hold", "suppress"
DISMISS_PRIOR = (1.0, 4.0)  # the prior of the dismiss_rate feature (features.model_features)
_DISMISS_MEAN = DISMISS_PRIOR[0] / sum(DISMISS_PRIOR)
ScoreAt = Callable[[int], "Scores"]


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Policy knobs; built from Settings by the worker, passed explicitly to :func:`decide`.

    ``send_time``: hold a candidate for the user's best local hour (needs
    ``send_time_min_events`` events in the activity profile, looks ``send_time_max_hold_ms``
    ahead at most, scores the ``send_time_slots`` best-ranked hours, and holds only for a gain
    of at least ``send_time_min_gain`` in send score). ``volume_target`` > 0 turns on the
    per-user volume controller (:func:`effective_threshold`). ``dismiss_weight`` lowers the
    send score of users whose dismiss rate exceeds the prior mean (:func:`dismiss_penalty`).
    ``dedupe_content`` off skips the decision-time guardrail against sending a user the same
    ``content_id`` twice in a day (for logs whose "users" are cohorts, such as Open Bandit).

    Examples
    --------
    >>> from dataclasses import replace
    >>> replace(PolicyConfig(), send_time=False, volume_target=1.5).volume_gain
    0.1
    """

    threshold: float = 0.08
    daily_cap: int = 5
    min_gap_ms: int = 4 * 3_600_000
    quiet_start_hour: int = 22
    quiet_end_hour: int = 8
    holdout_share: float = 0.05
    explore_share: float = 0.05
    disable_weight: float = 1.0
    seed: int = 42
    dismiss_weight: float = 0.1
    critical_in_quiet_hours: bool = True
    send_time: bool = True
    send_time_min_events: int = 20
    send_time_max_hold_ms: int = 12 * 3_600_000
    send_time_slots: int = 4
    send_time_min_gain: float = 0.01
    volume_target: float = 0.0
    volume_gain: float = 0.1
    dedupe_content: bool = True
    # Recent-send similarity, active now, new users, disable risk (docs/policy.md): see
    # similarity_factor, guardrails.active_until, guardrails.new_user_limit, disable_risk_cap
    similar_creator_factor: float = 0.7
    similar_kind_factor: float = 0.9
    similar_window_ms: int = 6 * 3_600_000
    active_now_ms: int = 120_000
    new_user_pushes: int = 3
    new_user_inactive_ms: int = 7 * 86_400_000
    new_user_daily_cap: int = 2
    new_user_min_gap_ms: int = 8 * 3_600_000
    p_disable_cap_at: float = 0.0
    # best of several: a send due now waits this long in the outbox, where a better candidate
    # for the same user arriving meanwhile takes its slot (see _pooled)
    pool_ms: int = 0


@dataclass(frozen=True, slots=True)
class Scores:
    """What the model said about one candidate at decision time."""

    p_open: float
    p_disable: float
    model_version: int


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one candidate, with the reason and what the policy knew.

    ``scores`` are what the decision was based on (for a held push, the model's scores of
    its send time); ``displaces`` lists held intents whose slot this decision takes (they are
    suppressed).
    """

    action: str
    reason: str
    score: float | None
    threshold: float
    explore: bool
    propensity: float
    holdout: bool
    send_at_ms: int | None
    scores: Scores | None = None
    displaces: tuple[str, ...] = ()
    # the similarity factor (< 1) the send score was multiplied by; None when not demoted
    demoted: float | None = None


@dataclass(frozen=True, slots=True)
class _Slot:
    at_ms: int
    scores: Scores
    value: float
    displaces: tuple[str, ...] = field(default=())
    lost: float = 0.0

    @property
    def net(self) -> float:
        return self.value - self.lost


def unit_hash(*parts: str) -> float:
    """A deterministic draw in [0, 1) from strings (same input, same draw, on every worker).

    >>> unit_hash("a") == unit_hash("a") != unit_hash("b")
    True
    """
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def in_holdout(user_id: str, share: float) -> bool:
    return unit_hash("holdout", user_id) < share


def send_score(scores: Scores, state: UserState, config: PolicyConfig) -> float:
    """p_open weighed against p_disable, lowered for users who keep dismissing.

    >>> s = UserState("u1")
    >>> s.sent, s.dismissed = 20, 20
    >>> round(send_score(Scores(0.3, 0.01, 1), s, PolicyConfig(dismiss_weight=0.2)), 3)
    0.162
    """
    return scores.p_open - config.disable_weight * scores.p_disable - dismiss_penalty(state, config)


def dismiss_penalty(state: UserState, config: PolicyConfig) -> float:
    """``dismiss_weight`` times the user's dismiss rate above the prior mean (0 for new users)."""
    rate = smoothed_rate(state.dismissed, state.sent, DISMISS_PRIOR)
    return config.dismiss_weight * max(0.0, rate - _DISMISS_MEAN)


def effective_threshold(state: UserState, now_ms: int, config: PolicyConfig) -> float:
    """The threshold after volume control, for one more push to this user now.

    The user's pushes in the last 24h (held ones included), plus this one, against the
    target: each push above it raises the threshold by ``volume_gain``, each below lowers it.

    >>> s = UserState("u1")
    >>> s.recent_sends_ms = [0, 1, 2]
    >>> effective_threshold(s, 10, PolicyConfig(threshold=0.1, volume_target=2, volume_gain=0.05))
    0.2
    """
    if config.volume_target <= 0:
        return config.threshold
    held = sum(1 for entry in state.outbox.values() if not entry["candidate"].get("critical"))
    excess = sends_in_last_day(state, now_ms) + held + 1 - config.volume_target
    return min(1.0, max(0.0, config.threshold + config.volume_gain * excess))


def similarity_factor(
    state: UserState, candidate: Candidate, at_ms: int, config: PolicyConfig
) -> float:
    """What a send of ``candidate`` at ``at_ms`` is worth against one unlike the user's recent
    sends: ``similar_creator_factor`` per send of the same creator and ``similar_kind_factor``
    per send of the same kind within ``similar_window_ms`` (1.0 when none, or with the window
    0). The same content is a hard duplicate instead (``duplicate``).

    >>> from streams.features import record_send
    >>> s = UserState("u1")
    >>> record_send(s, 0, Candidate("c1", "u1", "live", "v1", 0, 9, creator_id="ann"))
    >>> c = Candidate("c2", "u1", "live", "v2", 0, 9, creator_id="ann")
    >>> round(similarity_factor(s, c, 1_000, PolicyConfig()), 3)
    0.63
    """
    if config.similar_window_ms <= 0:
        return 1.0
    same_creator, same_kind = recent_sent_like(state, candidate, at_ms, config.similar_window_ms)
    return config.similar_creator_factor ** same_creator * config.similar_kind_factor ** same_kind


def _demoted_score(
    scores: Scores, state: UserState, candidate: Candidate, at_ms: int, config: PolicyConfig
) -> float:
    """The send score, multiplied by the similarity factor when positive (a factor below 1
    must not raise a negative score)."""
    value = send_score(scores, state, config)
    return value * similarity_factor(state, candidate, at_ms, config) if value > 0 else value


def disable_risk_cap(p_disable: float, config: PolicyConfig) -> int:
    """The user's rolling-24h cap at this disable risk:
    ``max(1, floor(daily_cap * (1 - p_disable / p_disable_cap_at)))`` (``daily_cap`` with
    ``p_disable_cap_at`` 0).

    >>> [disable_risk_cap(p, PolicyConfig(daily_cap=5, p_disable_cap_at=0.1))
    ...  for p in (0.0, 0.01, 0.05, 0.2)]
    [5, 4, 2, 1]
    """
    if config.p_disable_cap_at <= 0:
        return config.daily_cap
    share = 1.0 - p_disable / config.p_disable_cap_at
    return max(1, min(config.daily_cap, math.floor(config.daily_cap * share + 1e-9)))


def decide(
    scores: Scores | None,
    state: UserState,
    candidate: Candidate,
    now_ms: int,
    config: PolicyConfig,
    score_at: ScoreAt | None = None,
) -> Decision:
    """Decide whether ``candidate`` goes out now, later, or not at all.

    ``score_at(t)`` gives the model's scores for a send at ``t``; without it (or with
    ``send_time`` off) only now, or the end of quiet hours, are considered.
    """
    holdout = in_holdout(candidate.user_id, config.holdout_share)
    early = _hard_stop(state, candidate, now_ms, holdout, config)
    if early is not None:
        return early
    if candidate.critical:
        return _critical(state, candidate, now_ms, holdout, config)
    if holdout:
        return _not_while_active(_baseline(state, candidate, now_ms, config), state, candidate,
                                 now_ms, config)
    if scores is None:
        raise ValueError("a non-critical, non-holdout decision needs model scores")
    return _scored(scores, state, candidate, now_ms, config, score_at)


def _hard_stop(
    state: UserState, candidate: Candidate, now_ms: int, holdout: bool, config: PolicyConfig
) -> Decision | None:
    if now_ms > candidate.expires_at_ms:
        return _decision(SUPPRESS, "expired", config, holdout=holdout)
    if was_decided(state, candidate.candidate_id, now_ms):
        return _decision(SUPPRESS, "duplicate", config, holdout=holdout)
    if config.dedupe_content and duplicate_content(state, candidate, now_ms):
        return _decision(SUPPRESS, "duplicate", config, holdout=holdout)
    if state.disabled and not candidate.critical:
        return _decision(SUPPRESS, "user_disabled", config, holdout=holdout)
    return None


def _critical(
    state: UserState, candidate: Candidate, now_ms: int, holdout: bool, config: PolicyConfig
) -> Decision:
    """Transactional: no model, no caps, no quiet hours (a login code is wanted now).

    Only with ``critical_in_quiet_hours`` off does a critical push in quiet hours wait for
    their end, and then only if that comes before it expires: it is never held past its
    expiry, nor lost to quiet hours, so if the wait would outlast it, it goes now.
    """
    quiet = in_quiet_hours(now_ms, state.tz, config.quiet_start_hour, config.quiet_end_hour)
    if not quiet or config.critical_in_quiet_hours:
        return _decision(SEND, "critical", config, holdout=holdout, send_at=now_ms)
    send_at = quiet_hours_end(now_ms, state.tz, config.quiet_end_hour)
    if send_at > candidate.expires_at_ms:
        return _decision(SEND, "critical", config, holdout=holdout, send_at=now_ms)
    return _decision(HOLD, "quiet_hours", config, holdout=holdout, send_at=send_at)


def _baseline(
    state: UserState, candidate: Candidate, now_ms: int, config: PolicyConfig
) -> Decision:
    """The holdout group's non-model policy: send whatever the guardrails allow."""
    slot = _first_slot(state, candidate, now_ms, -math.inf, config)
    if slot is None:
        reason = blocked_at(state, now_ms, -math.inf, config) or "min_gap"
        return _decision(SUPPRESS, reason, config, holdout=True)
    if slot == now_ms:
        return _decision(SEND, "holdout_send", config, holdout=True, send_at=now_ms)
    return _decision(HOLD, "quiet_hours", config, holdout=True, send_at=slot)


def _first_slot(
    state: UserState, candidate: Candidate, now_ms: int, value: float, config: PolicyConfig
) -> int | None:
    """Now, or the end of quiet hours if only they stand in the way; None if neither works."""
    stop = blocked_at(state, now_ms, value, config)
    if stop is None:
        return now_ms
    if stop != "quiet_hours":
        return None
    later = quiet_hours_end(now_ms, state.tz, config.quiet_end_hour)
    if later > candidate.expires_at_ms or blocked_at(state, later, value, config) is not None:
        return None
    return later


def _scored(
    scores: Scores,
    state: UserState,
    candidate: Candidate,
    now_ms: int,
    config: PolicyConfig,
    score_at: ScoreAt | None,
) -> Decision:
    """The scored decision with the rules around it: the disable-risk cap first, the
    similarity demotion inside the score (``similar_recent`` when it alone turned a send into
    a suppression, else ``demoted`` on the decision), and no push while the user is active."""
    risky = _disable_risk_stop(scores, state, now_ms, config)
    if risky is not None:
        return risky
    decision = _by_score(scores, state, candidate, now_ms, config, score_at)
    at = now_ms if decision.send_at_ms is None else decision.send_at_ms
    factor = similarity_factor(state, candidate, at, config)
    if factor < 1.0:
        decision = replace(decision, demoted=factor)
        if decision.action == SUPPRESS and decision.reason == "below_threshold":
            alike = replace(config, similar_creator_factor=1.0, similar_kind_factor=1.0)
            if _by_score(scores, state, candidate, now_ms, alike, score_at).action != SUPPRESS:
                decision = replace(decision, reason="similar_recent")
    return _not_while_active(decision, state, candidate, now_ms, config)


def _disable_risk_stop(
    scores: Scores, state: UserState, now_ms: int, config: PolicyConfig
) -> Decision | None:
    """Suppressed as ``disable_risk_cap`` when the user's pushes in the last 24h, held ones
    included, reach the cap their ``p_disable`` allows (:func:`disable_risk_cap`), below
    ``daily_cap`` (once the sends reach that, the ordinary cap speaks)."""
    cap = disable_risk_cap(scores.p_disable, config)
    if cap >= config.daily_cap:
        return None
    sent = sends_in_last_day(state, now_ms)
    held = sum(1 for entry in state.outbox.values() if not entry["candidate"].get("critical"))
    if sent >= config.daily_cap or sent + held < cap:
        return None
    threshold = effective_threshold(state, now_ms, config)
    value = send_score(scores, state, config)
    return Decision(SUPPRESS, "disable_risk_cap", value, threshold, False, 1.0, False, None,
                    scores)


def _not_while_active(
    decision: Decision, state: UserState, candidate: Candidate, now_ms: int,
    config: PolicyConfig,
) -> Decision:
    """No non-critical push while the user is active in the app: one due before their
    activity window ends (:func:`~streams.guardrails.active_until`) is held to its end if it
    lives that long and nothing else blocks it then (``hold`` / ``active_now``), else
    suppressed (``active_now``, deterministic)."""
    if decision.action == SUPPRESS or decision.send_at_ms is None:
        return decision
    until = active_until(state, now_ms, config)
    if until is None or decision.send_at_ms >= until:
        return decision
    held = None if until > candidate.expires_at_ms else _held_at(
        decision, state, until, "active_now", config)
    if held is not None:
        return held
    return replace(decision, action=SUPPRESS, reason="active_now", explore=False,
                   propensity=1.0, send_at_ms=None, displaces=())


def _by_score(
    scores: Scores,
    state: UserState,
    candidate: Candidate,
    now_ms: int,
    config: PolicyConfig,
    score_at: ScoreAt | None,
) -> Decision:
    threshold = effective_threshold(state, now_ms, config)
    planned = _uses_send_time(state, config, score_at)
    slots = _slots(scores, state, candidate, now_ms, config, score_at if planned else None)
    eligible = [slot for slot in slots if slot.value >= threshold]
    best = _best(eligible, now_ms, config.send_time_min_gain)
    if best is not None:
        return _pooled(_exploit(best, now_ms, threshold, planned), state, candidate, now_ms,
                       config)
    return _explore_or_suppress(scores, state, candidate, now_ms, config, threshold, slots)


def _uses_send_time(state: UserState, config: PolicyConfig, score_at: ScoreAt | None) -> bool:
    return (
        config.send_time
        and score_at is not None
        and profile_events(state) >= config.send_time_min_events
    )


def _slots(
    scores: Scores,
    state: UserState,
    candidate: Candidate,
    now_ms: int,
    config: PolicyConfig,
    score_at: ScoreAt | None,
) -> list[_Slot]:
    """Every feasible send time considered, with its scores; now first when feasible."""
    now_value = _demoted_score(scores, state, candidate, now_ms, config)
    if score_at is None:
        at = _first_slot(state, candidate, now_ms, now_value, config)
        return [] if at is None else [_slot(state, at, scores, now_value, config)]
    horizon = min(candidate.expires_at_ms, now_ms + config.send_time_max_hold_ms)
    times = [now_ms, *best_hour_slots(state, now_ms, horizon, config.send_time_slots)]
    found = []
    for at in times:
        at_scores = scores if at == now_ms else score_at(at)
        value = _demoted_score(at_scores, state, candidate, at, config)
        slot = _slot(state, at, at_scores, value, config)
        if blocked_at(state, at, value, config) is None and (slot.net > 0 or not slot.displaces):
            found.append(slot)
    return found


def _slot(state: UserState, at: int, scores: Scores, value: float, config: PolicyConfig) -> _Slot:
    displaced = conflicts(state, at, value, config) or ()
    lost = sum(max(0.0, held_priority(state.outbox[i])) for i in displaced)
    return _Slot(at, scores, value, displaced, lost)


def _best(slots: list[_Slot], now_ms: int, min_gain: float) -> _Slot | None:
    """The slot worth most net of what it displaces; now unless later gains ``min_gain``."""
    if not slots:
        return None
    best = max(slots, key=lambda slot: (slot.net, -slot.at_ms))
    now = slots[0] if slots[0].at_ms == now_ms else None
    if now is not None and best.net < now.net + min_gain:
        return now
    return best


def _exploit(best: _Slot, now_ms: int, threshold: float, planned: bool) -> Decision:
    if best.at_ms == now_ms:
        action, reason = SEND, "above_threshold"
    else:
        action, reason = HOLD, "held_for_send_time" if planned else "quiet_hours"
    return Decision(
        action, reason, best.value, threshold, explore=False, propensity=1.0, holdout=False,
        send_at_ms=best.at_ms, scores=best.scores, displaces=best.displaces,
    )


def _pooled(
    decision: Decision, state: UserState, candidate: Candidate, now_ms: int,
    config: PolicyConfig,
) -> Decision:
    """The best of several: a send due now is held ``pool_ms`` (``hold`` / ``pooled``) when
    the candidate lives past then and nothing blocks it then. While it waits it is a planned
    send like any held push (:func:`~streams.guardrails.conflicts`): a candidate for the same
    user worth more, arriving within the minimum gap of it, takes its slot (the held one is
    suppressed, ``min_gap``); one worth less does not. So of the candidates that compete for
    one slot within ``pool_ms``, the most valuable goes out, not the first above the
    threshold. Explorations, critical and holdout pushes are never pooled."""
    if config.pool_ms <= 0 or decision.action != SEND or decision.score is None:
        return decision
    at = now_ms + config.pool_ms
    if at >= candidate.expires_at_ms:
        return decision
    return _held_at(decision, state, at, "pooled", config) or decision


def _held_at(
    decision: Decision, state: UserState, at_ms: int, reason: str, config: PolicyConfig
) -> Decision | None:
    """``decision`` held to ``at_ms`` with ``reason``, taking the slot of the held pushes it
    is worth more than; None when a guardrail or a better held push blocks it then."""
    value = -math.inf if decision.score is None else decision.score
    if blocked_at(state, at_ms, value, config) is not None:
        return None
    displaced = conflicts(state, at_ms, value, config) or ()
    return replace(decision, action=HOLD, reason=reason, send_at_ms=at_ms, displaces=displaced)


def _explore_or_suppress(
    scores: Scores,
    state: UserState,
    candidate: Candidate,
    now_ms: int,
    config: PolicyConfig,
    threshold: float,
    slots: list[_Slot],
) -> Decision:
    """Below the threshold everywhere: explore at the first free slot, or suppress."""
    # Each outcome is built whole, not as a replace() of the suppression: most candidates end
    # here, and dataclasses.replace was a tenth of deciding them.
    value = _demoted_score(scores, state, candidate, now_ms, config)
    if not slots:
        reason = blocked_at(state, now_ms, value, config) or "min_gap"
        return Decision(SUPPRESS, reason, value, threshold, False, 1.0, False, None, scores)
    at = _first_slot(state, candidate, now_ms, -math.inf, config)  # never displaces
    if at is None:
        return Decision(SUPPRESS, "below_threshold", value, threshold, False, 1.0, False, None,
                        scores)
    share = config.explore_share
    if unit_hash("explore", str(config.seed), candidate.candidate_id) >= share:
        return Decision(SUPPRESS, "below_threshold", value, threshold, False, 1.0 - share, False,
                        None, scores)
    action, reason = (SEND, "explore") if at == now_ms else (HOLD, "quiet_hours")
    return Decision(action, reason, value, threshold, True, share, False, at, scores)


def _decision(
    action: str,
    reason: str,
    config: PolicyConfig,
    *,
    holdout: bool = False,
    send_at: int | None = None,
) -> Decision:
    """A decision without a score (guardrails, critical, holdout): always deterministic."""
    return Decision(
        action=action,
        reason=reason,
        score=None,
        threshold=config.threshold,
        explore=False,
        propensity=1.0,
        holdout=holdout,
        send_at_ms=send_at,
    )
