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
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer

from streams import progress
from streams.admin import wait_for_broker
from streams.errors import BrokerError, ConfigError
from streams.logs import client_logging
from streams.settings import Settings
from streams.simulator import Population

log = logging.getLogger(__name__)

# A record the broker has not acknowledged within this long counts as undelivered, so a
# simulator cut off from its broker fails (and is restarted) instead of looking healthy.
DELIVERY_TIMEOUT_MS = 30_000
STATUS_EVERY_S = 30.0


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
    on_record
        Called with ``(kind, record)`` for every record sent (``events``, ``candidates``) and
        read back (``intents``, ``decisions``, ``dead_letters``), e.g. to tally them.
    """

    def __init__(
        self, settings: Settings, population: Population, speed: float, from_beginning: bool,
        on_record: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.population = population
        self.speed = speed
        self.sim_start_ms = population.now_ms
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.decisions_by_reason: Counter[str] = Counter()
        self.dead_letter_codes: Counter[str] = Counter()
        self.on_record = on_record
        self.undelivered = 0
        self.delivery_error: str | None = None
        self._producer = Producer(client_logging(
            {**producer_config(settings), "message.timeout.ms": DELIVERY_TIMEOUT_MS}))
        self._consumer = Consumer(
            client_logging({
                **settings.confluent_config(),
                "group.id": f"pushflow-simulator-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "enable.auto.commit": True,
                "session.timeout.ms": 6000,
            })
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
                                       on_delivery=self._delivered, timestamp=stamp)
                break
            except BufferError:
                self._producer.poll(0.1)
        self.sent[kind] += 1
        if self.on_record is not None:
            self.on_record(kind, message)

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.undelivered += 1
            self.delivery_error = str(error)

    def _receive(self, message: Any) -> None:
        if message.error() is not None:
            if message.error().code() != KafkaError._PARTITION_EOF:
                log.warning("simulator consumer: %s", message.error())
            return
        topic = message.topic()
        record = orjson.loads(message.value())
        if topic == self.settings.topic("intents_topic"):
            kind = "intents"
            self.population.deliver(record)
        elif topic == self.settings.topic("decisions_topic"):
            kind = "decisions"
            self.decisions_by_reason[record["reason"]] += 1
        else:
            kind = "dead_letters"
            self.dead_letter_codes[record.get("error_code", "?")] += 1
        self.received[kind] += 1
        if self.on_record is not None:
            self.on_record(kind, record)

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is left within ``timeout``; returns how many records were not."""
        left = self._producer.flush(timeout)
        self._consumer.close()
        return int(left) + self.undelivered

    def status(self) -> str:
        return (f"sent {self.sent['events']} events, {self.sent['candidates']} candidates; "
                f"received {self.received['intents']} intents, "
                f"{self.received['decisions']} decisions, "
                f"{self.received['dead_letters']} dead letters")


def run_simulation(
    settings: Settings, *, users: int, speed: float, seed: int, duration: float | None
) -> None:
    """``pushflow simulate``: traffic against an existing deployment until stopped.

    Raises BrokerError when the broker does not answer within ``startup_timeout_s`` or a
    record cannot be delivered: a simulator that sends nothing must not look healthy.
    """
    if settings.broker is None:
        raise ConfigError("pushflow simulate needs --broker or PUSHFLOW_BROKER")
    wait_for_broker(settings.bootstrap_servers, settings.confluent_config(),
                    timeout=settings.startup_timeout_s)
    population = Population(seed=seed, n_users=users, start_ms=int(time.time() * 1000))
    driver = TrafficDriver(settings, population, speed, from_beginning=False)
    started = time.monotonic()
    try:
        _drive(driver, duration)
    except KeyboardInterrupt:
        log.info("simulate: interrupted, stopping")
    finally:
        left = driver.close()
    # a log line, not a print: under log_format=json every stderr line is one JSON object
    log.info("simulate: %s in %.0f s", driver.status(), time.monotonic() - started)
    if left:
        raise BrokerError(f"{left} records were not delivered ({driver.delivery_error})")


def _drive(driver: TrafficDriver, duration: float | None) -> None:
    """Step until ``duration`` passes; a status line every 30 s (a bar on a terminal)."""
    started = last = time.monotonic()
    total = None if duration is None else round(duration)
    with progress.bar(total, "simulate", "s",
                      bar_format="{desc}: {elapsed} {postfix}" if total is None else None) as bar:
        while duration is None or time.monotonic() - started < duration:
            driver.step()
            if driver.undelivered:
                raise BrokerError(f"records are not being delivered ({driver.delivery_error})")
            now = time.monotonic()
            if bar.disable and now - last >= STATUS_EVERY_S:
                log.info("simulate: %s", driver.status())
                last = now
            elif not bar.disable and now - last >= 1.0:
                bar.set_postfix_str(driver.status(), refresh=False)
                bar.update(round(now - started) - bar.n)
                last = now
