"""Does the broker answer a waiting fetch as soon as data arrives? (It decides latency.)

Faust hard-codes aiokafka's ``fetch_max_wait_ms=1500``. A broker that holds every fetch for
that long when it finds no new data, instead of answering once data arrives, adds up to 1.5 s
to every hop. This measures produce -> consume latency with plain confluent-kafka clients at
50 messages/s for a few ``fetch.wait.max.ms`` values::

    python bench/fetch_wait.py --broker-kind tansu
"""

from __future__ import annotations

import argparse
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams.admin import TopicSpec, ensure_topics
from streams.broker import EmbeddedBroker

PARTITIONS = 8
MESSAGES = 150
WARMUP = 20  # the first messages also pay for connections and the first fetch
RATE = 50.0


def measure(bootstrap: str, wait_ms: int) -> tuple[float, float]:
    """(p50, p99) produce -> consume latency in ms, on a fresh topic."""
    topic = f"fetch-wait-{wait_ms}-{time.time_ns()}"
    ensure_topics(bootstrap, {topic: TopicSpec(topic, PARTITIONS)}, timeout=30)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic,
                         "fetch.wait.max.ms": wait_ms, "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    arrived: dict[bytes, float] = {}
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            for message in consumer.consume(100, 0.05):
                value = message.value()
                if message.error() is None and value is not None:
                    arrived[value] = time.monotonic()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    sent: dict[bytes, float] = {}
    started = time.monotonic()
    for i in range(MESSAGES):
        while time.monotonic() < started + i / RATE:  # pacing, not synchronisation
            producer.poll(0.001)
        value = str(i).encode()
        sent[value] = time.monotonic()
        producer.produce(topic, value, key=value)
    producer.flush(10)
    deadline = time.monotonic() + 10
    while len(arrived) < MESSAGES and time.monotonic() < deadline:  # wait, with a deadline
        time.sleep(0.05)
    done.set()
    reader.join(5)
    consumer.close()
    lat = sorted(arrived[v] - t for v, t in list(sent.items())[WARMUP:] if v in arrived)
    return lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker-kind", choices=("tansu", "noida"), default="tansu")
    args = parser.parse_args()
    with EmbeddedBroker(args.broker_kind) as broker:
        for wait_ms in (1500, 100, 10):
            p50, p99 = measure(broker.bootstrap, wait_ms)
            print(f"{args.broker_kind} fetch.wait.max.ms={wait_ms:>4}: "
                  f"p50 {p50:.0f} ms, p99 {p99:.0f} ms")


if __name__ == "__main__":
    main()
