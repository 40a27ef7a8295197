"""Simulated users on a real broker: produce their activity and candidates, answer intents.

The :class:`~streams.simulator.Population` holds the hidden truth; this module only moves
its messages to and from Kafka with confluent-kafka, on a simulated clock that runs
``speed`` times faster than the wall clock.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer

from streams.settings import Settings
from streams.simulator import Population

log = logging.getLogger(__name__)


def producer_config(settings: Settings) -> dict[str, Any]:
    """Keyed by user_id with murmur2, like Java clients and aiokafka: co-partitioning holds."""
    return {
        **settings.confluent_config(),
        "partitioner": "murmur2_random",
        "linger.ms": 20,
        "enable.idempotence": False,
        "queue.buffering.max.messages": 500_000,
    }


class TrafficDriver:
    """Drives a Population against the broker; counts what it sent and what came back.

    Parameters
    ----------
    settings
        Broker and topic names.
    population
        The simulated users.
    speed
        Simulated milliseconds per real millisecond.
    from_beginning
        Read output topics from their start (a fresh broker) or only new records.
    """

    def __init__(
        self, settings: Settings, population: Population, speed: float, from_beginning: bool
    ) -> None:
        self.settings = settings
        self.population = population
        self.speed = speed
        self.sim_start_ms = population.now_ms
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.decisions_by_reason: Counter[str] = Counter()
        self.dead_letter_codes: Counter[str] = Counter()
        self._producer = Producer(producer_config(settings))
        self._consumer = Consumer(
            {
                **settings.confluent_config(),
                "group.id": f"pushflow-simulator-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "enable.auto.commit": True,
                "session.timeout.ms": 6000,
            }
        )
        self._consumer.subscribe(
            [settings.topic(t) for t in ("intents_topic", "decisions_topic", "dead_letters_topic")]
        )
        self._wall_start = time.monotonic()

    @property
    def sim_now_ms(self) -> int:
        return self.sim_start_ms + int((time.monotonic() - self._wall_start) * 1000 * self.speed)

    def step(self, poll_s: float = 0.05) -> None:
        """Produce what the population did up to now; feed back the intents that arrived."""
        for topic, record in self.population.advance(self.sim_now_ms):
            self._produce(topic, record)
        self._producer.poll(0)
        for message in self._consumer.consume(num_messages=2000, timeout=poll_s):
            self._receive(message)

    def _produce(self, logical: str, message: dict[str, Any]) -> None:
        field = "user_events_topic" if logical == "user-events" else "candidates_topic"
        kind = "events" if logical == "user-events" else "candidates"
        value, key = orjson.dumps(message), message["user_id"].encode()
        # Stamped with its simulated time, as an upstream service sending it as it happens
        # would: the worker's partition clocks follow these timestamps, and at speed > 1 the
        # simulated time runs ahead of the wall clock.
        at = message.get("event_time_ms", message.get("created_at_ms"))
        stamp = at if isinstance(at, int) and at > 0 else 0  # 0: the producer's clock
        while True:
            try:
                self._producer.produce(self.settings.topic(field), value=value, key=key,
                                       timestamp=stamp)
                break
            except BufferError:
                self._producer.poll(0.1)
        self.sent[kind] += 1

    def _receive(self, message: Any) -> None:
        if message.error() is not None:
            if message.error().code() != KafkaError._PARTITION_EOF:
                log.warning("simulator consumer: %s", message.error())
            return
        topic = message.topic()
        record = orjson.loads(message.value())
        if topic == self.settings.topic("intents_topic"):
            self.received["intents"] += 1
            self.population.deliver(record)
        elif topic == self.settings.topic("decisions_topic"):
            self.received["decisions"] += 1
            self.decisions_by_reason[record["reason"]] += 1
        else:
            self.received["dead_letters"] += 1
            self.dead_letter_codes[record.get("error_code", "?")] += 1

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
        self._consumer.close()


def run_simulation(
    settings: Settings, *, users: int, speed: float, seed: int, duration: float | None
) -> None:
    """``pushflow simulate``: traffic against an existing deployment until stopped."""
    if settings.broker is None:
        raise SystemExit("pushflow simulate needs --broker or PUSHFLOW_BROKER")
    population = Population(seed=seed, n_users=users, start_ms=int(time.time() * 1000))
    driver = TrafficDriver(settings, population, speed, from_beginning=False)
    deadline = None if duration is None else time.monotonic() + duration
    last_log = time.monotonic()
    try:
        while deadline is None or time.monotonic() < deadline:
            driver.step()
            if time.monotonic() - last_log > 30:
                last_log = time.monotonic()
                log.info("simulated %s, received %s", dict(driver.sent), dict(driver.received))
    finally:
        driver.close()
