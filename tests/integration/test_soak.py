"""Bounded state under steady load: a worker that runs for weeks must not grow with them.

Users keep arriving, stay active for a while and go quiet for good, at a steady rate on a
simulated clock (SPEED x the wall clock). Some pushes are opened, the rest expire. With
``user_ttl_s`` and label expiry working, the state table holds only recent users, pending
labels only the last attribution window, and the worker's memory levels off: the second half
of the run must look like the first half (docs/reliability.md).
"""

from __future__ import annotations

import heapq
import statistics
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pytest
from confluent_kafka import Consumer

from .conftest import Deployment
from .test_faults import (  # noqa: F401 - broker, _close_clients: fixtures
    MINUTE,
    NOON,
    Feed,
    Msg,
    _close_clients,
    broker,
    candidate,
    event,
    first_problems,
    gauge,
    input_counts,
    rss_mb,
    wait_until,
)

pytestmark = pytest.mark.integration

SPEED = 240  # simulated ms per wall ms: an hour of event time every 15 s
RUN_S, WARM_UP_S, SAMPLE_S = 130.0, 40.0, 2.0
ARRIVALS_PER_S = 10  # new users per wall second
LIFETIME = 40 * MINUTE  # event time a user stays active
TTL_S = 3600  # user_ttl_s: forgotten an hour (event time) after going quiet
TOLERANCE = 1.25  # second half vs first half
RSS_SLACK_MB = 20.0


@dataclass(frozen=True)
class Churn:
    """User ``n`` arrives at ``n / ARRIVALS_PER_S`` wall seconds, views a video every two
    minutes and gets a candidate every twenty for LIFETIME, then never comes back."""

    tag: str

    def arrival(self, n: int) -> int:
        return NOON + int(n / ARRIVALS_PER_S * 1000 * SPEED)

    def user_messages(self, n: int) -> Iterator[tuple[int, Msg]]:
        user, start = f"{self.tag}-u{n}", self.arrival(n)
        for at in range(start, start + LIFETIME, 2 * MINUTE):
            yield at, event(user, f"a{at}", at)
        for at in range(start + 5 * MINUTE, start + LIFETIME, 20 * MINUTE):
            yield at, candidate(user, f"{user}-c{at}", at)

    def schedule(self, until_s: float) -> list[tuple[int, int, Msg]]:
        users = int(until_s * ARRIVALS_PER_S)
        timed = [(at, n, m) for n in range(users) for at, m in self.user_messages(n)]
        heapq.heapify(timed)
        return timed


def opened_feedback(intent: dict) -> Msg | None:
    """A third of the pushes are opened two minutes after they are sent."""
    if zlib.crc32(intent["intent_id"].encode()) % 3:
        return None
    return event(intent["user_id"], f"open-{intent['intent_id']}",
                 intent["send_at_ms"] + 2 * MINUTE, kind="push_opened",
                 intent_id=intent["intent_id"])


@pytest.mark.slow
def test_state_and_memory_level_off_under_steady_churn(deployment: Deployment) -> None:
    worker = deployment.start_worker(
        PUSHFLOW_USER_TTL_S=str(TTL_S), PUSHFLOW_DECIDED_HORIZON_S=str(TTL_S),
        PUSHFLOW_TTL_SWEEP_INTERVAL_S="2",
        PUSHFLOW_SNAPSHOT_EVERY="50",
    )
    feed, schedule = Feed(deployment), Churn("soak").schedule(RUN_S)
    settings = deployment.settings
    intents = Consumer({**settings.confluent_config(), "group.id": f"{settings.app_id}-users",
                        "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    intents.subscribe([settings.topic("intents_topic")])
    samples: list[tuple[float, float, float, float]] = []
    started = next_sample = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < RUN_S:
            now = NOON + int(elapsed * 1000 * SPEED)
            while schedule and schedule[0][0] <= now:
                feed.put(heapq.heappop(schedule)[2])
            for message in intents.consume(500, timeout=0.05):
                if message.error() is None and (opened := opened_feedback(
                        orjson.loads(message.value() or b"{}"))) is not None:
                    feed.put(opened)
            if time.monotonic() >= next_sample:
                next_sample += SAMPLE_S
                samples.append((elapsed, gauge(worker, "pushflow_table_keys"),
                                gauge(worker, "pushflow_pending_labels"),
                                rss_mb(worker.proc.pid)))
        feed.flush()
    finally:
        intents.close()
    wait_until(lambda: sum(input_counts(worker).values()) >= feed.count(), 60,
               "the worker catches up with the load")
    steady = [s for s in samples if s[0] >= WARM_UP_S]
    half = len(steady) // 2
    first, second = steady[:half], steady[half:]
    report = {
        "table_keys": growth([s[1] for s in first], [s[1] for s in second]),
        "pending_labels": growth([s[2] for s in first], [s[2] for s in second]),
        "rss_mb": rss_growth([s[3] for s in first], [s[3] for s in second]),
        "inputs_uncounted": feed.count() - sum(input_counts(worker).values()),
        "worker_exited": worker.proc.poll(),
    }
    print(f"soak: {feed.count()} inputs in {RUN_S:.0f}s; (s, keys, pending, rss MB) "
          f"{[tuple(round(x) for x in s) for s in samples[::5]]}")
    assert not first_problems(report), first_problems(report)


def growth(first: list[float], second: list[float]) -> dict[str, float]:
    """Means of both halves when the second is more than TOLERANCE x the first, else {}."""
    before, after = statistics.fmean(first), statistics.fmean(second)
    return {"first_half": round(before), "second_half": round(after)} \
        if after > TOLERANCE * before + 10 else {}


def rss_growth(first: list[float], second: list[float]) -> dict[str, float]:
    before, after = max(first), max(second)
    return {"first_half_max": round(before), "second_half_max": round(after)} \
        if after > before + RSS_SLACK_MB else {}
