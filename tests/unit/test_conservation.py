"""Conservation through the pure core: what goes in comes out, once.

A simulated population (``streams.simulator.Population``, closed loop: intents go back to the
users, who open, dismiss or disable) drives the parse + Decider steps the worker runs, with
event-time ticks for every user with something due, as the worker's timer does. Malformed
messages and redelivered feedback are mixed in. Once event time has passed every window:

- every input ended in exactly one counted outcome, and the dead letters are exactly the
  malformed inputs;
- every candidate got exactly one final decision (and at most one hold before it);
- every intent got exactly one label, and no label exists without its intent;
- no pending label and no held push is left behind.

The integration tests hold a real worker to the same accounting from its /metrics
(``tests/integration/test_faults.py``); see docs/reliability.md.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import orjson

from streams.contracts import Candidate, encode
from streams.features import UserState, state_from_bytes, state_to_bytes
from streams.pipeline import StepOutput
from streams.simulator import Population

from .test_fuzz import CANDIDATE, EVENT, Core, Message

START = 1_780_272_000_000  # 2026-06-01T00:00Z
STEP, DAY = 300_000, 86_400_000
TOPICS = {"user-events": EVENT, "notification-candidates": CANDIDATE}


class Run:
    """The core driven as the worker drives it; everything it emitted is kept."""

    def __init__(self) -> None:
        self.core = Core()
        self.outcomes: Counter[str] = Counter()
        self.malformed = 0
        self.candidates: list[str] = []
        self.emitted = StepOutput()

    def feed(self, message: Message) -> None:
        self.outcomes[self.core.feed(message).split(":")[0]] += 1
        if message.expect != "valid":
            self.malformed += 1
        elif message.topic == CANDIDATE:
            self.candidates.append(orjson.loads(message.raw)["candidate_id"])
        if self.core.last is not None:
            self.collect(self.core.last)

    def tick(self, now_ms: int) -> None:
        for state in self.core.states.values():
            if state.pending or state.outbox:
                self.collect(self.core.decider.on_tick(state, now_ms))

    def collect(self, out: StepOutput) -> None:
        self.emitted.extend(out)
        self.core.learn(out)


def run_population(days: int, n_users: int, seed: int) -> Run:
    run, population, delivered = Run(), Population(seed, n_users, START), 0
    for n, now in enumerate(range(START + STEP, START + days * DAY, STEP)):
        for topic, body in population.advance(now):
            message = Message(TOPICS[topic], body["user_id"].encode(), orjson.dumps(body),
                              "valid", "valid")
            run.feed(message)
            if body.get("type", "").startswith("push_") and n % 3 == 0:
                run.feed(message)  # feedback delivered twice
            if message.topic == CANDIDATE and len(run.candidates) % 97 == 0:
                cut = message.raw[: len(message.raw) // 2]
                run.feed(Message(CANDIDATE, message.key, cut, "cut", "invalid_json"))
        run.tick(now)
        for intent in run.emitted.intents[delivered:]:
            population.deliver(intent)
        delivered = len(run.emitted.intents)
    run.tick(START + (days + 2) * DAY)  # past every expiry and attribution window
    return run


def test_what_goes_in_comes_out_once() -> None:
    run = run_population(days=2, n_users=100, seed=11)
    out = run.emitted
    print(f"conservation: {dict(run.outcomes)}, {len(run.candidates)} candidates, "
          f"{len(out.intents)} intents, labels {dict(Counter(e.outcome for e in out.examples))}")

    assert run.outcomes["dead_letter"] == run.malformed > 0
    stages: dict[str, Counter[str]] = defaultdict(Counter)
    for decision in out.decisions:
        stages[decision["candidate_id"]]["hold" if decision["action"] == "hold" else "final"] += 1
    assert set(stages) == set(run.candidates)
    assert {cid: dict(s) for cid, s in stages.items() if s["final"] != 1 or s["hold"] > 1} == {}

    sent = Counter(intent["intent_id"] for intent in out.intents)
    labels = Counter(example.intent_id for example in out.examples)
    assert max(sent.values()) == 1
    assert labels == sent, "every intent gets exactly one label, and only intents do"
    assert {"opened", "expired"} <= {e.outcome for e in out.examples}
    assert [k for k, s in run.core.states.items() if s.pending or s.outbox] == []


def test_a_candidate_processed_again_changes_no_decision() -> None:
    """After kill -9 the worker re-reads the inputs after its last commit, on the state its
    changelog restores, which may already hold them. The second pass must emit what the first
    did, identically (downstream dedups by decision_id and intent_id), or nothing; a second,
    different decision (reason ``duplicate``) breaks "one decision per candidate"."""
    decider = Core().decider
    candidate = Candidate("c-once", "u1", "trending", "v-once", START + 12 * 3_600_000,
                          START + DAY)
    state = UserState("u1")
    first = decider.on_candidate(state, candidate)
    restored = state_from_bytes(state_to_bytes(state))
    second = decider.on_candidate(restored, candidate)

    def emitted(out: StepOutput) -> tuple[list[bytes], list[bytes]]:
        return [encode(d) for d in out.decisions], [encode(i) for i in out.intents]

    assert emitted(second) in (emitted(first), ([], [])), (
        [d["reason"] for d in first.decisions], [d["reason"] for d in second.decisions])
