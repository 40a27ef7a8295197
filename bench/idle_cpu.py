"""What an idle consumer and an idle worker cost, per broker: CPU time from ``/proc``.

A broker that answers an empty fetch at once (noida-db) instead of holding it for the fetch's
maximum wait makes every idle consumer loop. This measures, on a fresh embedded broker:

- a plain aiokafka consumer on an empty topic for ``--seconds`` (fetches sent, share of a
  core);
- a pushflow worker with no traffic, ``--rounds`` times ``--seconds`` (share of a core, of the
  worker and of the broker).

Usage::

    python bench/idle_cpu.py --broker-kind noida
    python bench/idle_cpu.py --broker-kind tansu --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.fetcher import Fetcher
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import _jiffies  # noqa: E402

from streams.broker import EmbeddedBroker
from streams.demo import WorkerProcess
from streams.settings import Settings

WORKER_ENV = {"PUSHFLOW_SESSION_TIMEOUT_S": "6", "PUSHFLOW_PARTITIONS": "4",
              "PUSHFLOW_TICK_INTERVAL_S": "1", "PUSHFLOW_SNAPSHOT_INTERVAL_S": "1"}


def cpu_seconds(pid: int) -> float:
    return _jiffies(pid) / os.sysconf("SC_CLK_TCK")


async def idle_consumer(bootstrap: str, topic: str, seconds: float) -> tuple[int, float]:
    """(fetches sent, share of a core) of an aiokafka consumer reading an empty topic."""
    fetches = 0
    inner = Fetcher._proc_fetch_request

    async def counted(fetcher: Any, assignment: Any, node_id: Any, request: Any) -> bool:
        nonlocal fetches
        fetches += 1
        return bool(await inner(fetcher, assignment, node_id, request))

    Fetcher._proc_fetch_request = counted  # type: ignore[method-assign]
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"idle-{topic}",
                                auto_offset_reset="earliest")
    try:
        await consumer.start()
        await consumer.getmany(timeout_ms=1000)  # joined and assigned
        fetches, started, cpu = 0, time.monotonic(), time.process_time()
        while time.monotonic() - started < seconds:
            await consumer.getmany(timeout_ms=500)
        return fetches, (time.process_time() - cpu) / (time.monotonic() - started)
    finally:
        await consumer.stop()
        Fetcher._proc_fetch_request = inner  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker-kind", choices=("noida", "tansu"), default="noida")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with EmbeddedBroker(args.broker_kind) as broker:
        bootstrap = broker.url.removeprefix("kafka://")
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic("idle-plain", 4, 1)]).values():
            future.result()
        fetches, share = asyncio.run(idle_consumer(bootstrap, "idle-plain", args.seconds))
        print(f"{args.broker_kind}: aiokafka consumer, empty topic: {fetches / args.seconds:,.0f}"
              f" fetches/s, {share:.0%} of a core")
        workdir = Path(tempfile.mkdtemp(prefix="pushflow-idle-"))
        settings = Settings.from_env({}, broker=broker.url, data_dir=str(workdir),
                                     app_id="idle", topic_prefix="idle-")
        worker = WorkerProcess(settings, workdir, env=WORKER_ENV, name="idle")
        try:
            worker.wait_ready(120)
            assert broker.pid is not None
            for _ in range(args.rounds):
                w0, b0, t0 = cpu_seconds(worker.proc.pid), cpu_seconds(broker.pid), time.time()
                time.sleep(args.seconds)
                elapsed = time.time() - t0
                print(f"{args.broker_kind}: idle worker "
                      f"{(cpu_seconds(worker.proc.pid) - w0) / elapsed:.0%} of a core, broker "
                      f"{(cpu_seconds(broker.pid) - b0) / elapsed:.0%}", flush=True)
        finally:
            worker.stop(timeout=15)


if __name__ == "__main__":
    main()
