"""One step of the decision loop: (user state, input) -> outputs, with no I/O.

The Faust agents, the offline replay and the policy evaluation all drive this same class, so
what is measured offline is what runs in production.

>>> from streams.contracts import Candidate
>>> from streams.model import PushModel
>>> step = Decider(PushModel(), DeciderConfig(policy=PolicyConfig(quiet_start_hour=0,
...     quiet_end_hour=0, holdout_share=0)))
>>> state = UserState("u1")
>>> out = step.on_candidate(state, Candidate("c1", "u1", "trending", "v1", 0, 3_600_000))
>>> [d["reason"] for d in out.decisions], len(out.intents), len(state.pending)
(['above_threshold'], 1, 1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streams.attribution import TrainingExample, expire_pending, on_feedback
from streams.contracts import Candidate, UserEvent
from streams.features import (
    DECIDED_LIMIT,
    MS_DAY,
    TIMELESS,
    PendingLabel,
    UserState,
    model_features,
    observe_activity,
    record_send,
    remember_decided,
    report_zone,
    was_decided,
)
from streams.item_stats import (
    OUTCOMES,
    ItemStatsTable,
    ItemStatsView,
    outcome_feedback,
    send_feedback,
)
from streams.model import PushModel
from streams.outbox import (
    due,
    held_candidate,
    held_decision,
    hold_entry,
    release_stop,
    reschedule_after_activity,
    reschedule_after_quiet_hours,
    until_zone_known,
    wait_for_zone,
    zone_reported,
)
from streams.policy import (
    HOLD,
    SEND,
    SUPPRESS,
    Decision,
    PolicyConfig,
    ScoreAt,
    Scores,
    decide,
)
from streams.sendtime import slot_features

OUTBOX_LIMIT = 16
DECIDED_HORIZON_MS = 7 * MS_DAY


@dataclass(frozen=True, slots=True)
class DeciderConfig:
    """Policy and attribution settings of one :class:`Decider`; ``outbox_limit`` bounds the
    pushes held per user (beyond it a new hold is suppressed as ``capped``).

    A decided candidate id is remembered for ``decided_horizon_ms`` of event time after its
    decision, or until its expiry if that is later, so that a re-send is ignored rather than
    decided again; at most ``decided_limit`` ids per user, the first decided forgotten first.
    """

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    attribution_window_ms: int = 3_600_000
    late_tolerance_ms: int = 7 * 86_400_000
    outbox_limit: int = OUTBOX_LIMIT
    decided_horizon_ms: int = DECIDED_HORIZON_MS
    decided_limit: int = DECIDED_LIMIT
    # score with what everyone did with the content and creator (the Decider's ``items``)
    item_features: bool = False
    item_half_life_ms: int = 6 * 3_600_000  # of the item statistics a replay keeps itself


@dataclass(slots=True)
class StepOutput:
    """What one input produced; ``ignored`` says why an input had no effect (counted)."""

    ignored: str | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    intents: list[dict[str, Any]] = field(default_factory=list)
    examples: list[TrainingExample] = field(default_factory=list)
    # Sends, opens and dismissals by item (streams.item_stats.feedback_record records)
    feedback: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: StepOutput) -> None:
        self.decisions += other.decisions
        self.intents += other.intents
        self.examples += other.examples
        self.feedback += other.feedback


class Decider:
    """Applies events, candidates and event-time ticks to one user's state.

    Parameters
    ----------
    model
        The model to score with, or a callable returning the current one (workers swap in
        newer snapshots between steps).
    config
        Policy and attribution settings.

    Examples
    --------
    A candidate at 23:00 in Berlin is held until 08:00 local, then released by a tick:

    >>> from streams.contracts import Candidate
    >>> step = Decider(PushModel(), DeciderConfig(policy=PolicyConfig(holdout_share=0)))
    >>> state = UserState("u1", tz="Europe/Berlin")
    >>> night = 1_767_218_400_000  # 2025-12-31T22:00Z, 23:00 in Berlin
    >>> out = step.on_candidate(state, Candidate("c1", "u1", "trending", "v1", night,
    ...                                          night + 12 * 3_600_000))
    >>> [(d["action"], d["reason"]) for d in out.decisions], list(state.outbox) != []
    ([('hold', 'quiet_hours')], True)
    >>> out = step.on_tick(state, night + 9 * 3_600_000)  # 07:00Z = 08:00 in Berlin
    >>> [(d["action"], d["reason"]) for d in out.decisions], out.intents[0]["send_at_ms"]
    ([('send', 'released')], 1767250800000)
    """

    def __init__(
        self,
        model: PushModel | Callable[[], PushModel],
        config: DeciderConfig,
        items: ItemStatsTable | None = None,
    ) -> None:
        self._model = model if callable(model) and not isinstance(model, PushModel) else None
        self._fixed = model if isinstance(model, PushModel) else None
        self.config = config
        # What every user did with each content and creator (streams.item_stats): the worker's
        # follower fills it from item-stats; an in-process harness folds its own feedback in.
        self.items = items

    def fold(self, out: StepOutput) -> None:
        """Count this step's item feedback into :attr:`items` (replay and evaluation, where
        one process sees all users; the worker reads the statistics its peers publish)."""
        if self.items is not None:
            for record in out.feedback:
                self.items.add(record["item"], OUTCOMES[record["outcome"]], record["at_ms"])

    def features(self, state: UserState, candidate: Candidate, now: int) -> dict[str, float]:
        """The model's input for ``candidate`` now: the user's and the candidate's features,
        and, with item statistics, what everyone did with its content and creator."""
        base_rate = self.model.base_rate
        features = model_features(state, candidate, now, base_rate)
        if self.items is not None and self.config.item_features:
            features.update(ItemStatsView(self.items).features(
                candidate.content_id, candidate.creator_id, now, base_rate))
        return features

    @property
    def model(self) -> PushModel:
        if self._fixed is not None:
            return self._fixed
        assert self._model is not None
        return self._model()

    # --- inputs ---------------------------------------------------------------------------

    def on_event(self, state: UserState, event: UserEvent) -> StepOutput:
        """Activity updates windows and profiles; feedback resolves labels."""
        if event.event_time_ms < state.watermark_ms - self.config.late_tolerance_ms:
            return StepOutput(ignored="too_late")
        out = self.on_tick(state, max(event.event_time_ms, state.watermark_ms))
        if event.is_feedback:
            report_zone(state, event.tz, event.event_time_ms)
            pending = dict(state.pending)  # the labels it may resolve, and what they pushed
            ignored, examples = on_feedback(state, event)
            out.ignored = ignored
            out.examples += examples
            out.feedback += outcome_feedback(examples, pending)
        else:
            observe_activity(state, event.event_time_ms, event.tz, event.type, event.creator_id)
        if state.outbox and zone_reported(state):
            out.extend(self.on_tick(state, state.watermark_ms))
        return out

    def on_candidate(
        self, state: UserState, candidate: Candidate, arrival_ms: int | None = None
    ) -> StepOutput:
        """Score, decide, and remember what is needed to learn from the outcome.

        ``arrival_ms`` is when the candidate reached the worker (its record's broker
        timestamp): the decision is made then, never earlier, so a late candidate is not
        dated in the past and one that expired on the way is suppressed (see
        :func:`decision_time`).

        A candidate already decided (an upstream duplicate, a re-send after its expiry, or a
        re-read after a crash on state that kept the first pass) changes nothing and emits
        nothing: its first final decision record stands, so there is one per candidate id of a
        user for as long as the id is remembered (``DeciderConfig.decided_horizon_ms``).
        """
        now = decision_time(state, candidate, arrival_ms)
        if was_decided(state, candidate.candidate_id, now):
            return StepOutput(ignored="duplicate_candidate")
        if candidate.tz and state.tz_reported_ms is None:  # the device's own report wins
            state.tz, state.tz_known = candidate.tz, True
        out = self.on_tick(state, now)
        model = self.model
        features = self.features(state, candidate, now)
        scores = None if candidate.critical else self.score(candidate, features, now, model)
        score_at = self._score_at(state, candidate, features, model)
        decision = decide(scores, state, candidate, now, self.config.policy, score_at)
        if decision.scores is None and scores is not None:  # holdout: logged, not used
            decision = dataclasses.replace(decision, scores=scores)
        # a candidate living longer than the horizon is still remembered until it expires
        until = max(now + self.config.decided_horizon_ms, candidate.expires_at_ms)
        remember_decided(state, candidate.candidate_id, until, self.config.decided_limit)
        unknown = not (candidate.critical or state.tz_known)
        if unknown and decision.action != SUPPRESS:
            decision = until_zone_known(decision, candidate)
        if decision.action == HOLD:
            decision = self._hold(state, candidate, decision, now, out)
            if unknown and decision.action == HOLD:
                wait_for_zone(state.outbox[candidate.intent_id])
        out.decisions.append(_decision_record(candidate, decision, scores, now))
        if decision.action == SEND:
            out.intents.append(self._send(state, candidate, decision, scores, features, now))
            out.feedback += send_feedback(candidate, now)
        return out

    def on_tick(self, state: UserState, now_ms: int) -> StepOutput:
        """Event time moved to ``now_ms``: expire labels and release held pushes that are due."""
        state.advance(now_ms)
        if not state.pending and not state.outbox:  # most users: nothing in flight
            return StepOutput()
        out = StepOutput(examples=expire_pending(state, now_ms))
        for intent_id in due(state, now_ms):
            out.extend(self._release(state, intent_id, now_ms))
        return out

    def score(
        self, candidate: Candidate, features: dict[str, float], at_ms: int, model: PushModel
    ) -> Scores:
        """The model's scores of ``features`` (a send of ``candidate`` at ``at_ms``).

        Evaluation harnesses override this to score with something else (an oracle).
        """
        return Scores(model.p_open(features), model.p_disable(features), model.version)

    # --- internals ------------------------------------------------------------------------

    def _score_at(
        self, state: UserState, candidate: Candidate, features: dict[str, float], model: PushModel
    ) -> ScoreAt:
        def score_at(at_ms: int) -> Scores:
            at_features = slot_features(state, candidate, features, at_ms)
            for name in TIMELESS:  # as scored now, with the model's base rate
                at_features[name] = features[name]
            return self.score(candidate, at_features, at_ms, model)

        return score_at

    def _send(
        self,
        state: UserState,
        candidate: Candidate,
        decision: Decision,
        scores: Scores | None,
        features: dict[str, float],
        send_at: int,
        decided_at: int | None = None,
    ) -> dict[str, Any]:
        """Record the send and keep what learning needs: the features seen at send time."""
        basis = decision.scores or scores
        record_send(state, send_at, candidate)
        state.pending[candidate.intent_id] = PendingLabel(
            intent_id=candidate.intent_id,
            candidate_id=candidate.candidate_id,
            kind=candidate.kind,
            decided_at_ms=send_at,
            deadline_ms=send_at + self.config.attribution_window_ms,
            p_open=None if basis is None else basis.p_open,
            p_disable=None if basis is None else basis.p_disable,
            model_version=self.model.version if basis is None else basis.model_version,
            features=features,
            content_id=candidate.content_id,
            creator_id=candidate.creator_id,
        )
        decided_at = send_at if decided_at is None else decided_at
        return _intent_record(candidate, decision, basis, decided_at, send_at)

    def _hold(
        self, state: UserState, candidate: Candidate, decision: Decision, now: int, out: StepOutput
    ) -> Decision:
        """Put the push in the outbox; the pushes it displaces are suppressed now."""
        full = len(state.outbox) - len(decision.displaces) >= self.config.outbox_limit
        if full and not candidate.critical:
            return dataclasses.replace(
                decision, action=SUPPRESS, reason="capped", explore=False, propensity=1.0,
                send_at_ms=None, displaces=(),
            )
        for intent_id in decision.displaces:
            out.extend(self._drop(state, intent_id, "min_gap", now))
        state.outbox[candidate.intent_id] = hold_entry(candidate, decision, now)
        return decision

    def _drop(self, state: UserState, intent_id: str, reason: str, now: int) -> StepOutput:
        held = state.outbox.pop(intent_id)
        final = dataclasses.replace(
            held_decision(held), action=SUPPRESS, reason=reason, propensity=1.0, send_at_ms=None
        )
        record = _decision_record(held_candidate(held), final, None, now)
        return StepOutput(decisions=[record])

    def _release(self, state: UserState, intent_id: str, now: int) -> StepOutput:
        if intent_id not in state.outbox:  # displaced by a push released in this same tick
            return StepOutput()
        stop = release_stop(state, intent_id, now, self.config.policy)
        if stop == "quiet_hours" and reschedule_after_quiet_hours(
            state, intent_id, now, self.config.policy
        ):
            return StepOutput()
        if stop == "active_now" and reschedule_after_activity(
            state, intent_id, now, self.config.policy
        ):
            return StepOutput()
        if stop is not None:
            return self._drop(state, intent_id, stop, now)
        held = state.outbox.pop(intent_id)
        candidate, original = held_candidate(held), held_decision(held)
        final = dataclasses.replace(original, action=SEND, reason="released", send_at_ms=now)
        decided_at = held["decided_at_ms"]
        features = self.features(state, candidate, now)
        intent = self._send(state, candidate, final, None, features, now, decided_at)
        record = _decision_record(candidate, final, None, decided_at)
        return StepOutput(decisions=[record], intents=[intent],
                          feedback=send_feedback(candidate, now))


def decision_time(state: UserState, candidate: Candidate, arrival_ms: int | None) -> int:
    """When ``candidate`` is decided: at its arrival, and not before it was created.

    Without an arrival (a log that did not record one) it falls back to event time, the
    newer of its creation and the user's own watermark. With one, the user's watermark does
    not count: it may run ahead on a skewed device, and the push can go out no earlier than
    it arrived anyway, so expiry and quiet hours are judged then.

    >>> c = Candidate("c1", "u1", "trending", "v1", created_at_ms=1_000, expires_at_ms=9_000)
    >>> s = UserState("u1", watermark_ms=5_000)
    >>> decision_time(s, c, None), decision_time(s, c, 3_000), decision_time(s, c, 500)
    (5000, 3000, 1000)
    """
    if arrival_ms is None:
        return max(candidate.created_at_ms, state.watermark_ms)
    return max(candidate.created_at_ms, arrival_ms)


def _decision_record(
    candidate: Candidate, decision: Decision, scores: Scores | None, decided_at: int
) -> dict[str, Any]:
    basis = decision.scores or scores
    return {
        "decision_id": candidate.intent_id,
        "candidate_id": candidate.candidate_id,
        "user_id": candidate.user_id,
        "kind": candidate.kind,
        "action": decision.action,
        "reason": decision.reason,
        "p_open": None if basis is None else basis.p_open,
        "p_disable": None if basis is None else basis.p_disable,
        "score": decision.score,
        "threshold": decision.threshold,
        "model_version": 0 if basis is None else basis.model_version,
        "explore": decision.explore,
        "propensity": decision.propensity,
        "holdout": decision.holdout,
        "decided_at_ms": decided_at,
        "send_at_ms": decision.send_at_ms,
        # a hold is followed by exactly one final record (released, or suppressed at release)
        "final": decision.action != HOLD,
        "demoted": decision.demoted,
    }


def _intent_record(
    candidate: Candidate,
    decision: Decision,
    basis: Scores | None,
    decided_at: int,
    send_at: int,
) -> dict[str, Any]:
    intent = {
        "intent_id": candidate.intent_id,
        "user_id": candidate.user_id,
        "candidate_id": candidate.candidate_id,
        "content_id": candidate.content_id,
        "kind": candidate.kind,
        "p_open": None if basis is None else basis.p_open,
        "p_disable": None if basis is None else basis.p_disable,
        "score": decision.score,
        "threshold": decision.threshold,
        "model_version": 0 if basis is None else basis.model_version,
        "explore": decision.explore,
        "propensity": decision.propensity,
        "send_at_ms": send_at,
        "decided_at_ms": decided_at,
        "reason": decision.reason,
        "critical": candidate.critical,
    }
    if candidate.title is not None:
        intent["title"] = candidate.title
    return intent
