"""Delayed labels: each sent push resolves exactly once, on event time, without leaks."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.attribution import expire_pending, on_feedback
from streams.contracts import Candidate, UserEvent
from streams.features import PendingLabel, UserState, hashed
from streams.model import PushModel
from streams.pipeline import Decider, DeciderConfig
from streams.policy import PolicyConfig

T0 = 1_780_315_200_000
HOUR = 3_600_000


def pending_state(*intents: str) -> UserState:
    state = UserState("u1")
    for n, intent in enumerate(intents):
        state.pending[intent] = PendingLabel(intent, f"c{n}", "trending", T0, T0 + HOUR, 0.2,
                                             0.01, 4, {"act_24h": 1.0})
    return state


def event(kind: str, intent: str | None, at: int) -> UserEvent:
    return UserEvent(f"e-{kind}-{at}", "u1", kind, at, "UTC", intent)


def test_open_inside_the_window_is_a_positive() -> None:
    state = pending_state("i1")
    ignored, examples = on_feedback(state, event("push_opened", "i1", T0 + 10_000))
    assert ignored is None and [(e.label, e.outcome) for e in examples] == [(1, "opened")]
    assert examples[0].features == {"act_24h": 1.0} and examples[0].p_open == 0.2
    assert state.opened == 1 and not state.pending


def test_late_open_duplicate_open_and_unknown_intent_are_ignored_and_counted() -> None:
    state = pending_state("i1")
    assert on_feedback(state, event("push_opened", "i1", T0 + 2 * HOUR))[0] == "late_feedback"
    assert on_feedback(state, event("push_opened", "zzz", T0))[0] == "unknown_intent"
    on_feedback(state, event("push_dismissed", "i1", T0 + 5))
    assert on_feedback(state, event("push_opened", "i1", T0 + 6))[0] == "late_feedback"


def test_disable_without_intent_blames_the_newest_pending_push() -> None:
    state = pending_state("old", "new")
    state.pending["new"].decided_at_ms = T0 + 1000
    _, examples = on_feedback(state, event("uninstall", None, T0 + 2000))
    assert [(e.intent_id, e.disabled, e.label) for e in examples] == [("new", 1, 0)]
    assert state.disabled


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["push_opened", "push_dismissed", "push_disabled",
                                            "push_delivered", "tick"]),
                          st.sampled_from(["i1", "i2", "i3"]),
                          st.integers(0, 2 * HOUR)), max_size=30))
def test_every_pending_push_resolves_at_most_once(steps: list[tuple[str, str, int]]) -> None:
    state = pending_state("i1", "i2", "i3")
    resolved: list[str] = []
    for kind, intent, offset in sorted(steps, key=lambda s: s[2]):
        if kind == "tick":
            resolved += [e.intent_id for e in expire_pending(state, T0 + offset)]
        else:
            _, examples = on_feedback(state, event(kind, intent, T0 + offset))
            resolved += [e.intent_id for e in examples]
    resolved += [e.intent_id for e in expire_pending(state, T0 + 3 * HOUR)]
    assert sorted(resolved) == ["i1", "i2", "i3"]


def test_the_example_carries_the_scores_made_before_learning() -> None:
    """No label leak: the example holds the features and p_open of the decision itself."""
    model = PushModel()
    decider = Decider(model, DeciderConfig(policy=PolicyConfig(
        quiet_start_hour=0, quiet_end_hour=0, holdout_share=0, min_gap_ms=0)))
    state = UserState("u1")
    candidate = Candidate("c1", "u1", "trending", "v1", T0, T0 + 6 * HOUR)
    out = decider.on_candidate(state, candidate)
    intent = out.intents[0]
    for _ in range(50):  # the model moves on before the label arrives
        model.learn({"act_24h": 1.0, "kind=trending": 1.0}, opened=True, disabled=False)
    done = decider.on_event(state, event("push_opened", intent["intent_id"], T0 + 60_000))
    [example] = done.examples
    assert example.p_open == intent["p_open"] and example.model_version == 0
    assert example.features[hashed("kind:trending")] == 1.0


def test_the_example_record_is_asdict_with_its_own_features() -> None:
    state = pending_state("i1")
    _, [example] = on_feedback(state, event("push_opened", "i1", T0 + 10_000))
    record = example.record()
    assert list(record.items()) == list(dataclasses.asdict(example).items())
    record["features"]["act_24h"] = 9.0
    assert example.features == {"act_24h": 1.0}
