"""The replay's tick wakes only the users it changes, and ends exactly where the worker's
sweep of every due user would (``streams/ticks.py``)."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from streams.model import PushModel
from streams.pipeline import DeciderConfig, StepOutput
from streams.replay import Replayer, ReplayOptions
from tests.unit.test_replay import envelope, record_log


def _replay(lines: list[bytes], exact: bool, options: ReplayOptions) -> list[bytes]:
    outputs: list[bytes] = []

    def sink(step: StepOutput) -> None:
        outputs.append(orjson.dumps([step.ignored, step.decisions, step.intents, step.examples]))

    replayer = Replayer(DeciderConfig(), PushModel(), options, sink)
    replayer.clock.exact = exact  # tick every due user, as the worker's timer does
    for line in lines:
        replayer.feed(line)
    report: dict[str, Any] = replayer.finish().to_dict()
    states = {u: replayer.states[u] for u in sorted(replayer.states)}
    return [*outputs, orjson.dumps(report), orjson.dumps(states, option=orjson.OPT_NON_STR_KEYS)]


@pytest.mark.parametrize("interval_ms", [5_000, 60_000, 7 * 60_000])
def test_woken_ticks_give_the_outputs_and_states_of_a_sweep_of_every_user(
    interval_ms: int,
) -> None:
    lines = [envelope(r) for r in record_log(seed=5, users=60, hours=30)]
    rng = random.Random(interval_ms)
    for i in rng.sample(range(len(lines) - 40), len(lines) // 20):  # some input out of order
        j = i + rng.randrange(1, 40)
        lines[i], lines[j] = lines[j], lines[i]
    options = ReplayOptions(tick_interval_ms=interval_ms, user_ttl_ms=6 * 3_600_000)
    woken, swept = _replay(lines, False, options), _replay(lines, True, options)
    assert len(woken) > 100
    assert woken == swept


def test_catching_up_prunes_where_the_missed_ticks_would_have() -> None:
    """Ticks at 1, 301 and 599 s: the ticks prune at 301 s (a new 5-minute bucket), so what
    resolved between 301 - 24 h and 599 - 24 h is still remembered."""
    from streams.features import MS_DAY, PendingLabel, UserState
    from streams.ticks import TickClock

    def user() -> UserState:
        s = UserState("u1")
        s.pending["i0"] = PendingLabel("i0", "c0", "trending", 0, 10 * MS_DAY, 0.1, 0.0, 1, {})
        s.resolved = {f"i{t}": t * 1000 - MS_DAY for t in (1, 200, 400, 598)}
        return s

    ticked, caught_up, clock = user(), user(), TickClock()
    clock.schedule("u1", caught_up)
    for at_ms in (1_000, 301_000, 599_000):
        ticked.advance(at_ms)
        assert clock.tick(at_ms, {"u1"}) == []
    clock.catch_up("u1", caught_up)
    assert caught_up == ticked
    assert sorted(ticked.resolved) == ["i400", "i598"]
