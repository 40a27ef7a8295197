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
    PendingLabel,
    UserState,
    model_features,
    observe_activity,
    record_send,
)
from streams.model import PushModel
from streams.policy import (
    HOLD,
    SEND,
    SUPPRESS,
    Decision,
    PolicyConfig,
    Scores,
    decide,
    guardrail,
)

OUTBOX_LIMIT = 16


@dataclass(frozen=True, slots=True)
class DeciderConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    attribution_window_ms: int = 3_600_000
    late_tolerance_ms: int = 7 * 86_400_000


@dataclass(slots=True)
class StepOutput:
    """What one input produced; ``ignored`` says why an input had no effect (counted)."""

    ignored: str | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    intents: list[dict[str, Any]] = field(default_factory=list)
    examples: list[TrainingExample] = field(default_factory=list)

    def extend(self, other: StepOutput) -> None:
        self.decisions += other.decisions
        self.intents += other.intents
        self.examples += other.examples


class Decider:
    """Applies events, candidates and event-time ticks to one user's state.

    Parameters
    ----------
    model
        The model to score with, or a callable returning the current one (workers swap in
        newer snapshots between steps).
    config
        Policy and attribution settings.
    """

    def __init__(self, model: PushModel | Callable[[], PushModel], config: DeciderConfig) -> None:
        self._model = model if callable(model) and not isinstance(model, PushModel) else None
        self._fixed = model if isinstance(model, PushModel) else None
        self.config = config

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
            state.tz = event.tz
            ignored, examples = on_feedback(state, event)
            out.ignored = ignored
            out.examples += examples
        else:
            observe_activity(state, event.event_time_ms, event.tz)
        return out

    def on_candidate(self, state: UserState, candidate: Candidate) -> StepOutput:
        """Score, decide, and remember what is needed to learn from the outcome."""
        now = max(candidate.created_at_ms, state.watermark_ms)
        if candidate.tz:
            state.tz = candidate.tz
        out = self.on_tick(state, now)
        features = model_features(state, candidate, now)
        scores = None if candidate.critical else self._score(features)
        decision = decide(scores, state, candidate, now, self.config.policy)
        if decision.reason != "duplicate" or candidate.candidate_id not in state.decided:
            state.decided[candidate.candidate_id] = candidate.expires_at_ms
        out.decisions.append(_decision_record(candidate, decision, scores, now))
        if decision.action == SEND:
            out.intents.append(self._send(state, candidate, decision, scores, features, now))
        elif decision.action == HOLD:
            self._hold(state, candidate, decision, scores, features, now, out)
        return out

    def on_tick(self, state: UserState, now_ms: int) -> StepOutput:
        """Event time moved to ``now_ms``: expire labels and release held pushes that are due."""
        state.advance(now_ms)
        out = StepOutput(examples=expire_pending(state, now_ms))
        for intent_id in sorted(state.outbox, key=lambda i: state.outbox[i]["send_at_ms"]):
            if state.outbox[intent_id]["send_at_ms"] <= now_ms:
                out.extend(self._release(state, intent_id, now_ms))
        return out

    # --- internals ------------------------------------------------------------------------

    def _score(self, features: dict[str, float]) -> Scores:
        model = self.model
        return Scores(model.p_open(features), model.p_disable(features), model.version)

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
        record_send(state, send_at, candidate)
        decided_at = send_at if decided_at is None else decided_at
        state.pending[candidate.intent_id] = PendingLabel(
            intent_id=candidate.intent_id,
            candidate_id=candidate.candidate_id,
            kind=candidate.kind,
            decided_at_ms=send_at,
            deadline_ms=send_at + self.config.attribution_window_ms,
            p_open=None if scores is None else scores.p_open,
            p_disable=None if scores is None else scores.p_disable,
            model_version=self.model.version if scores is None else scores.model_version,
            features=features,
        )
        return _intent_record(candidate, decision, scores, decided_at, send_at)

    def _hold(
        self,
        state: UserState,
        candidate: Candidate,
        decision: Decision,
        scores: Scores | None,
        features: dict[str, float],
        now: int,
        out: StepOutput,
    ) -> None:
        if len(state.outbox) >= OUTBOX_LIMIT:
            dropped = dataclasses.replace(decision, action=SUPPRESS, reason="capped")
            out.decisions[-1] = _decision_record(candidate, dropped, scores, now)
            return
        state.outbox[candidate.intent_id] = {
            "candidate": dataclasses.asdict(candidate),
            "decision": dataclasses.asdict(decision),
            "scores": None if scores is None else dataclasses.asdict(scores),
            "features": features,
            "decided_at_ms": now,
            "send_at_ms": decision.send_at_ms,
        }

    def _release(self, state: UserState, intent_id: str, now: int) -> StepOutput:
        held = state.outbox.pop(intent_id)
        candidate = Candidate(**held["candidate"])
        scores = None if held["scores"] is None else Scores(**held["scores"])
        original = Decision(**held["decision"])
        stop = _release_stop(state, candidate, now, self.config.policy)
        out = StepOutput()
        if stop is not None:
            final = dataclasses.replace(original, action=SUPPRESS, reason=stop, send_at_ms=None)
            out.decisions.append(_decision_record(candidate, final, scores, now))
            return out
        final = dataclasses.replace(original, action=SEND, reason="released", send_at_ms=now)
        out.decisions.append(_decision_record(candidate, final, scores, held["decided_at_ms"]))
        out.intents.append(
            self._send(state, candidate, final, scores, held["features"], now, held["decided_at_ms"])
        )
        return out


def _release_stop(
    state: UserState, candidate: Candidate, now: int, policy: PolicyConfig
) -> str | None:
    if now > candidate.expires_at_ms:
        return "expired"
    if state.disabled and not candidate.critical:
        return "user_disabled"
    stop = guardrail(state, now, policy)
    return None if stop == "quiet_hours" else stop


def _decision_record(
    candidate: Candidate, decision: Decision, scores: Scores | None, decided_at: int
) -> dict[str, Any]:
    return {
        "decision_id": candidate.intent_id,
        "candidate_id": candidate.candidate_id,
        "user_id": candidate.user_id,
        "kind": candidate.kind,
        "action": decision.action,
        "reason": decision.reason,
        "p_open": None if scores is None else scores.p_open,
        "p_disable": None if scores is None else scores.p_disable,
        "score": decision.score,
        "threshold": decision.threshold,
        "model_version": 0 if scores is None else scores.model_version,
        "explore": decision.explore,
        "propensity": decision.propensity,
        "holdout": decision.holdout,
        "decided_at_ms": decided_at,
        "send_at_ms": decision.send_at_ms,
    }


def _intent_record(
    candidate: Candidate,
    decision: Decision,
    scores: Scores | None,
    decided_at: int,
    send_at: int,
) -> dict[str, Any]:
    intent = {
        "intent_id": candidate.intent_id,
        "user_id": candidate.user_id,
        "candidate_id": candidate.candidate_id,
        "content_id": candidate.content_id,
        "kind": candidate.kind,
        "p_open": None if scores is None else scores.p_open,
        "p_disable": None if scores is None else scores.p_disable,
        "score": decision.score,
        "threshold": decision.threshold,
        "model_version": 0 if scores is None else scores.model_version,
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
