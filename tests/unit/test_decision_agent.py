"""The decision agent: inputs the consumer skipped are read again before anything after them
is applied, and a batch that failed to write is written again before later inputs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry

from streams.settings import Settings

TOPIC = "user-events"


@pytest.fixture
def worker(tmp_path: Path) -> Any:
    from streams.app import PushflowWorker

    settings = Settings.from_env({}, broker="kafka://127.0.0.1:9092", data_dir=str(tmp_path))
    return PushflowWorker(settings, registry=CollectorRegistry())


def read(worker: Any, offset: int, partition: int = 1) -> bool:
    """What the agent does with one input: True if it passes over it."""
    tp = TP(TOPIC, partition)
    message = SimpleNamespace(topic=TOPIC, partition=partition, offset=offset, tp=tp)
    if worker._skipped(message):
        return True
    worker.positions[(TOPIC, partition)] = offset + 1
    return False


def test_contiguous_inputs_are_applied(worker: Any) -> None:
    assert [read(worker, o) for o in range(5)] == [False] * 5
    assert worker.rewinding == {}


def test_a_jump_seeks_back_and_passes_over_everything_until_the_first_missing_input(
    worker: Any,
) -> None:
    read(worker, 9)
    assert read(worker, 15)  # 10..14 were never handed over
    assert [(r.tp.partition, r.first_missing) for r in worker.rewinding.values()] == [(1, 10)]
    assert read(worker, 16) and read(worker, 17)  # still buffered from before the seek
    assert [read(worker, o) for o in range(10, 18)] == [False] * 8  # the re-read, in order
    assert worker.rewinding == {}


def test_a_jump_again_from_the_same_offset_is_a_real_gap(worker: Any) -> None:
    read(worker, 9)
    assert read(worker, 11)  # offset 10 holds no record (e.g. a transaction marker)
    assert not read(worker, 11)  # the re-read jumps over it again: accepted
    assert worker.rewinding == {}


def test_other_partitions_are_not_held_up(worker: Any) -> None:
    read(worker, 9)
    assert read(worker, 15)
    assert not read(worker, 0, partition=2)
    assert not read(worker, 1, partition=2)


def test_a_revoked_partition_forgets_its_rewind(worker: Any) -> None:
    read(worker, 9)
    read(worker, 15)
    asyncio.run(worker._on_revoked(None, {TP(TOPIC, 1)}))
    assert worker.rewinding == {} and worker.rewound == {}


def test_a_batch_that_failed_to_write_is_written_again_before_later_inputs(worker: Any) -> None:
    from streams.app import Batch

    failing = Batch(latest_ms=1, started=1.0, inputs=2, candidates=1,
                    outputs=[("decisions_topic", b"u1", {"decision_id": "d1"})])
    worker.batch = failing
    written: list[list[Any]] = []

    async def write(batch: Batch) -> None:
        if batch is failing:
            raise RuntimeError("broker said no")
        written.append(batch.outputs)

    worker._write = write

    async def run() -> None:
        with pytest.raises(RuntimeError):
            await worker.write_pending()
        worker.batch.add(b"u2", [("decisions_topic", {"decision_id": "d2"})])
        worker.batch.inputs += 1
        await worker.write_pending()

    asyncio.run(run())
    assert [[r["decision_id"] for _, _, r in outputs] for outputs in written] == [["d1", "d2"]]
