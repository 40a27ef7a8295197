"""Experimental shapes of the decision agent, to measure a recommendation before making it.

Not production code: each variant subclasses :class:`streams.app.PushflowWorker`, changes one
thing, and runs through the normal ``pushflow worker`` command (the runner is pointed at the
subclass). ``bench/run.py --variants batched`` measures them beside the real worker.

``batched``
    ``stream.take_events(500, within=0.02)`` instead of one event per iteration, and the
    user-state table written in memory during the batch with **one** changelog record per
    user per batch (``table.send_changelog``, as the worker's tick path already does) instead
    of ``table[key] = state`` per event. Everything else (parse, decide, emit, metrics) is the
    worker's own ``handle``.
``linger``
    The worker unchanged but for ``producer_linger=0.01`` (Faust's default is 0): the
    profile shows ~13% of the worker's CPU in aiokafka's sender task building one small
    produce request after another; a 10 ms linger packs them into fewer, fuller batches.
``batched-linger``
    Both.
``direct``
    ``batched``, and every record the agent writes (decisions, intents, training examples,
    the user-state changelog) produced with a confluent-kafka Producer (librdkafka, in C, on
    its own thread) instead of Faust's producer (aiokafka, Python, on the event loop). Faust
    still consumes, commits, recovers the table and runs the timers. An experiment only: it
    does not flush before Faust commits offsets, so it is not at-least-once as written.

Usage::

    python bench/variants.py batched worker --broker kafka://127.0.0.1:9092 --app-id x ...
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import faust
from confluent_kafka import Producer

import streams.runner
from streams.app import PushflowWorker
from streams.cli import main as pushflow_main
from streams.contracts import encode
from streams.features import UserState, state_to_bytes
from streams.pipeline import StepOutput
from streams.traffic import producer_config

BATCH_MAX = 500
BATCH_WITHIN_S = 0.02  # the longest a lone event waits for company (adds to latency)


class DeferredChangelog:
    """Stands in for the table inside ``handle``: writes stay in memory until :meth:`flush`.

    Reads and the tick path (``.data``, ``.send_changelog``) go to the real table.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self.dirty: dict[bytes, UserState] = {}

    def get(self, key: bytes, default: Any = None) -> Any:
        return self.table.data.get(key, default)

    def __setitem__(self, key: bytes, state: UserState) -> None:
        self.table.data[key] = state
        self.dirty[key] = state

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)

    def flush(self) -> int:
        """One changelog record per user written since the last flush."""
        for key, state in self.dirty.items():
            self.table.send_changelog(state.partition, key, state)
        written = len(self.dirty)
        self.dirty.clear()
        return written


class BatchedWorker(PushflowWorker):
    """The worker with batched stream iteration and one changelog write per user per batch."""

    def _wire(self) -> None:
        super()._wire()
        self.table = DeferredChangelog(self.table)  # type: ignore[assignment]

    async def _decide_agent(self, stream: faust.StreamT) -> AsyncIterator[None]:
        batches = stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S)  # type: ignore[attr-defined]
        async for events in batches:
            for event in events:
                await self.handle(event)
            self.table.flush()  # type: ignore[attr-defined]
            yield None


class DirectChangelog(DeferredChangelog):
    """Changelog records straight to the topic with confluent-kafka, same partition."""

    def __init__(self, table: Any, producer: Producer) -> None:
        super().__init__(table)
        self.producer = producer
        self.topic = table.changelog_topic.get_topic_name()

    def send_changelog(self, partition: int, key: bytes, value: Any, **_: Any) -> None:
        raw = None if value is None else state_to_bytes(value)
        _produce(self.producer, self.topic, key, raw, partition)

    def flush(self) -> int:
        for key, state in self.dirty.items():
            self.send_changelog(state.partition, key, state)
        written = len(self.dirty)
        self.dirty.clear()
        self.producer.poll(0)
        return written


def _produce(producer: Producer, topic: str, key: bytes, value: bytes | None,
             partition: int | None = None) -> None:
    while True:
        try:
            if partition is None:  # keyed: murmur2_random, as Faust and Java clients
                producer.produce(topic, value=value, key=key)
            else:
                producer.produce(topic, value=value, key=key, partition=partition)
            return
        except BufferError:
            producer.poll(0.01)


class DirectProduceWorker(BatchedWorker):
    """Batched, and everything the agent writes goes through a confluent-kafka Producer."""

    def _wire(self) -> None:
        super()._wire()
        self.direct = Producer({**producer_config(self.settings), "linger.ms": 5,
                                "acks": "all", "queue.buffering.max.messages": 1_000_000})
        self.table = DirectChangelog(self.table.table, self.direct)  # type: ignore

    async def _emit(self, key: bytes, out: StepOutput) -> None:
        """As ``PushflowWorker._emit``, without awaiting Faust's producer per record."""
        topic = self.settings.topic
        for decision in out.decisions:
            _produce(self.direct, topic("decisions_topic"), key, encode(decision))
            labels = {"action": decision["action"], "reason": decision["reason"]}
            self.metrics.decisions.labels(**labels).inc()
        for intent in out.intents:
            _produce(self.direct, topic("intents_topic"), key, encode(intent))
            self.metrics.intents.labels(explore=str(intent["explore"]).lower()).inc()
        for example in out.examples:
            _produce(self.direct, topic("training_topic"), key, encode(example))
            self.metrics.labeled.labels(outcome=example.outcome).inc()


PRODUCER_LINGER_S = 0.01


class LingerWorker(PushflowWorker):
    """The worker with a 10 ms producer linger (outputs and changelog alike)."""

    def _build_app(self) -> faust.App:
        app = super()._build_app()
        app.conf.producer_linger = PRODUCER_LINGER_S  # before any producer exists
        return app


class BatchedLingerWorker(BatchedWorker, LingerWorker):
    """Both changes."""


VARIANTS: dict[str, type[PushflowWorker]] = {
    "batched": BatchedWorker, "linger": LingerWorker, "batched-linger": BatchedLingerWorker,
    "direct": DirectProduceWorker,
}


def main() -> None:
    variant = sys.argv.pop(1)
    streams.runner.PushflowWorker = VARIANTS[variant]  # type: ignore[misc]
    pushflow_main()


if __name__ == "__main__":
    main()
