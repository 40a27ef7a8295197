"""The measuring steps of ``bench/run.py``, each against a running broker.

- :func:`preload` writes the message mix with confluent-kafka (murmur2_random, like the
  simulator), so every consumer reads the same data.
- :func:`consume_all` watches a worker's counter until it has read the whole preload.
- :func:`offered_load` produces the mix at a fixed rate and times candidate -> decision.
- :func:`changelog_sizes` reads the user-state changelog: bytes of the latest record per user.
- :func:`time_to_ready` restarts a worker and times process start -> ``/readyz`` 200.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, Producer, TopicPartition
from procs import BenchError, CpuProbe, Proc, wait_for
from workload import CANDIDATES, Workload, preload_times

from streams.settings import Settings
from streams.traffic import producer_config


def _produce(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key)
            return
        except BufferError:
            producer.poll(0.05)


def preload(settings: Settings, workload: Workload, events: int, span_ms: int,
            end_ms: int) -> dict[str, Any]:
    """Produce ``events`` messages with event times spread over ``span_ms`` before ``end_ms``."""
    failed: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    producer = Producer({**producer_config(settings), "on_delivery": on_delivery})
    per_topic: dict[str, int] = {}
    users: set[bytes] = set()  # distinct keys: what a per-user counter must end up with
    feedback = 0
    started = time.monotonic()
    for at_ms in preload_times(end_ms - span_ms, span_ms, events):
        topic, key, value = workload.next_message(at_ms)
        per_topic[topic] = per_topic.get(topic, 0) + 1
        users.add(key)
        feedback += b'"push_' in value or b'"uninstall"' in value
        _produce(producer, settings.topic(_field(topic)), key, value)
        producer.poll(0)
    left = producer.flush(120)
    elapsed = time.monotonic() - started
    if left or failed:
        raise BenchError(f"preload: {left} undelivered, {len(failed)} failed: {failed[:3]}")
    return {"messages": events, "per_topic": per_topic, "users": len(users), "feedback": feedback,
            "seconds": round(elapsed, 2), "produce_per_s": round(events / elapsed)}


def _field(topic: str) -> str:
    return "candidates_topic" if topic == CANDIDATES else "user_events_topic"


def consume_all(proc: Proc, count: Callable[[Proc], int | None], expected: int,
                deadline_s: float, pids: dict[str, int]) -> dict[str, Any]:
    """Poll ``count`` until ``expected``; events/s over the middle 96% of the preload.

    CPU use (cores) of ``pids`` and of everything else is measured from the first event on.
    """
    samples: list[tuple[float, int]] = []
    probe: CpuProbe | None = None

    def done() -> bool:
        nonlocal probe
        seen = count(proc)
        if seen is not None:
            samples.append((time.monotonic(), seen))
            if probe is None and seen > 0:
                probe = CpuProbe(pids)
        return seen is not None and seen >= expected

    wait_for(done, deadline_s, f"{proc.name} to read {expected} events", poll_s=0.25)
    at_a = next(i for i, s in enumerate(samples) if s[1] >= 0.02 * expected)
    t_a, c_a = samples[at_a]
    t_b, c_b = next(s for s in samples if s[1] >= 0.98 * expected)
    if t_b <= t_a and at_a > 0:  # read within one poll: from the poll before
        t_a, c_a = samples[at_a - 1]
    t_first = next(t for t, c in samples if c > 0)
    t_end = samples[-1][0]
    rate = (c_b - c_a) / (t_b - t_a) if t_b > t_a else float("nan")
    cpu = probe.report() if probe is not None else {}
    return {
        "events": expected,
        "events_per_s": round(rate),
        # Robust to other work on the machine: what one core of worker CPU buys.
        "events_per_worker_cpu_s": round(rate / cpu["cores_worker"]) if cpu.get("cores_worker")
        else None,
        "events_per_s_whole": round(expected / max(1e-9, t_end - t_first)),
        "first_event_after_s": round(t_first - proc.started_at, 2),
        "done_after_s": round(t_end - proc.started_at, 2),
        "memory_kib": proc.memory_kib(),
        "cpu": cpu,
    }


# --- latency at a fixed offered rate ------------------------------------------------------


class _DecisionWatcher(threading.Thread):
    """Reads a decisions topic from its end; remembers when each candidate's first came in."""

    def __init__(self, settings: Settings, topic: str, partitions: int) -> None:
        super().__init__(name="decision-watcher", daemon=True)
        self.arrived: dict[str, float] = {}
        self.stopping = threading.Event()
        self.consumer = Consumer({
            **settings.confluent_config(), "group.id": f"bench-latency-{time.time_ns()}",
            "enable.auto.commit": False, "fetch.wait.max.ms": 5, "fetch.min.bytes": 1,
        })
        self.consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in range(partitions)])

    def run(self) -> None:
        while not self.stopping.is_set():
            for message in self.consumer.consume(num_messages=500, timeout=0.05):
                if message.error() is None:
                    arrived = time.monotonic()
                    candidate_id = orjson.loads(message.value() or b"{}").get("candidate_id")
                    self.arrived.setdefault(candidate_id, arrived)
        self.consumer.close()


def offered_load(settings: Settings, workload: Workload, rate: float, duration_s: float,
                 warmup_s: float, pids: dict[str, int]) -> dict[str, Any]:
    """Produce the mix at ``rate``/s (event time = now); candidate -> decision latency."""
    probe = CpuProbe(pids)
    watcher = _DecisionWatcher(settings, settings.topic("decisions_topic"), settings.partitions)
    watcher.start()
    producer = Producer({**producer_config(settings), "linger.ms": 1})
    sent: dict[str, float] = {}
    produced = 0
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < warmup_s + duration_s:
            while produced < rate * elapsed:
                topic, key, value = workload.next_message(int(time.time() * 1000))
                _produce(producer, settings.topic(_field(topic)), key, value)
                produced += 1
                if workload.last_candidate_id is not None and elapsed >= warmup_s:
                    sent[workload.last_candidate_id] = time.monotonic()
            producer.poll(0.002)
        producer.flush(30)
        offered_s = time.monotonic() - started
        complete = lambda: all(c in watcher.arrived for c in sent)  # noqa: E731
        with contextlib.suppress(BenchError):  # reported below as missing
            wait_for(complete, 60, "a decision for every timed candidate")
    finally:
        watcher.stopping.set()
        watcher.join(10)
    latencies = sorted(watcher.arrived[c] - t for c, t in sent.items() if c in watcher.arrived)
    return {
        "produced": produced,
        "offered_per_s": round(rate), "achieved_per_s": round(produced / offered_s),
        "seconds": round(duration_s), "timed_candidates": len(sent),
        "missing_decisions": len(sent) - len(latencies), **_percentiles_ms(latencies),
        "cpu": probe.report(),
    }


def _percentiles_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    if len(values) == 1:
        values = values * 2
    cut = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": round(cut[49] * 1000, 1), "p99_ms": round(cut[98] * 1000, 1),
            "max_ms": round(values[-1] * 1000, 1)}


# --- state size and recovery --------------------------------------------------------------


def changelog_sizes(settings: Settings, topic: str, copy_to: str | None = None,
                    deadline_s: float = 300) -> dict[str, Any]:
    """Latest value size per key in the changelog; the end is 3 s without a new record.

    tansu never compacts and misreports the high watermark, so the topic is read until it
    goes quiet rather than to a watermark. With ``copy_to``, every record is also written to
    that topic, same partition, so a fresh app id can restore the very same state.
    """
    consumer = Consumer({**settings.confluent_config(), "group.id": f"bench-cl-{time.time_ns()}",
                         "enable.auto.commit": False, "fetch.message.max.bytes": 8 << 20})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                     for p in range(settings.partitions)])
    producer = None if copy_to is None else Producer(
        {**settings.confluent_config(), "linger.ms": 20, "queue.buffering.max.messages": 500_000})
    latest: dict[bytes, int] = {}
    records, quiet_since = 0, time.monotonic()

    def quiet_for_3s() -> bool:
        nonlocal records, quiet_since
        batch = consumer.consume(num_messages=10_000, timeout=0.5)
        for message in batch:
            if message.error() is not None:
                continue
            records += 1
            key, value = message.key() or b"", message.value()
            if value is None:
                latest.pop(key, None)
            else:
                latest[key] = len(value)
            if producer is not None and copy_to is not None:
                _produce_to(producer, copy_to, message.partition() or 0, key, value)
        if batch:
            quiet_since = time.monotonic()
        return records > 0 and time.monotonic() - quiet_since > 3

    try:
        wait_for(quiet_for_3s, deadline_s, f"the end of {topic}", poll_s=0)
    finally:
        consumer.close()
        if producer is not None and producer.flush(60):
            raise BenchError(f"could not copy {topic} to {copy_to}")
    sizes = sorted(latest.values())
    return {
        "topic": topic, "records": records, "users": len(sizes),
        "mean_bytes": round(statistics.fmean(sizes)), "p50_bytes": sizes[len(sizes) // 2],
        "p99_bytes": sizes[int(len(sizes) * 0.99)], "max_bytes": sizes[-1],
    }


def _produce_to(producer: Producer, topic: str, partition: int, key: bytes,
                value: bytes | None) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, partition=partition)
            producer.poll(0)
            return
        except BufferError:
            producer.poll(0.05)


def time_to_ready(proc: Proc, deadline_s: float) -> dict[str, Any]:
    """Seconds from process start to ``/readyz`` 200 (table recovered, partitions assigned)."""
    def ready() -> bool:
        answer = proc.get("/readyz")
        return answer is not None and answer[0] == 200

    wait_for(ready, deadline_s, f"{proc.name} /readyz", poll_s=0.1)
    seconds = time.monotonic() - proc.started_at
    keys = wait_for(lambda: _table_keys(proc), 20, "the table_keys gauge", poll_s=0.5)
    return {"seconds_to_ready": round(seconds, 2), "recovered_users": keys,
            "memory_kib": proc.memory_kib()}


def metric_sum(proc: Proc, name: str) -> float | None:
    """Sum of every sample of ``name`` on the worker's ``/metrics``; None if unreachable."""
    answer = proc.get("/metrics")
    if answer is None or answer[0] != 200:
        return None
    total = 0.0
    for line in answer[1].decode().splitlines():
        if line.startswith(name) and line[len(name)] in "{ ":
            total += float(line.rsplit(" ", 1)[1])
    return total


def _table_keys(proc: Proc) -> int:
    return int(metric_sum(proc, "pushflow_table_keys") or 0)
