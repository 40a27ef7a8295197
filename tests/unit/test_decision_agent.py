"""The decision agent: inputs the consumer skipped are read again before anything after them
is applied, inputs handed over again are counted once, and a batch that failed to write is
written again before later inputs."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
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
    assert worker.gaps == []  # nothing for Faust to mark as done: every offset was applied


def test_a_jump_again_from_the_same_offset_is_a_real_gap(worker: Any) -> None:
    read(worker, 9)
    assert read(worker, 11)  # offset 10 holds no record (e.g. a transaction marker)
    assert not read(worker, 11)  # the re-read jumps over it again: accepted
    assert worker.rewinding == {}
    assert worker.gaps == [(TP(TOPIC, 1), 10, 10)]  # and Faust told, so commits pass it


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


# --- the partition's clock -------------------------------------------------------------------

NOON = 1_780_315_200_000  # 2026-06-01T12:00Z


def event_record(worker: Any, offset: int, user: str, event_ms: int, stamp_ms: int) -> Any:
    topic = worker.topics_by_kind["events"]
    value = orjson.dumps({"event_id": f"e{offset}", "user_id": user, "type": "app_open",
                          "event_time_ms": event_ms, "tz": "UTC"})
    return SimpleNamespace(topic=topic, partition=0, offset=offset, tp=TP(topic, 0),
                           key=user.encode(), value=value, timestamp=stamp_ms / 1000)


def test_one_skewed_device_moves_its_partitions_clock_no_further_than_the_broker_time(
    worker: Any,
) -> None:
    """The clock that ticks every user of a partition follows event time, but a device two
    hours ahead of the broker timestamp of its record moves it by the tolerance at most."""
    batch = worker.batch
    worker._apply(event_record(worker, 0, "a", NOON, NOON), batch)
    worker._apply(event_record(worker, 1, "skewed", NOON + 2 * 3_600_000, NOON + 60_000), batch)
    assert batch.states[b"skewed"].watermark_ms == NOON + 2 * 3_600_000  # its own, as sent
    assert worker.watermarks == {0: NOON + 60_000 + worker.settings.max_clock_skew_s * 1000}
    worker._apply(event_record(worker, 2, "a", NOON + 10 * 60_000, NOON + 10 * 60_000), batch)
    assert worker.watermarks == {0: NOON + 10 * 60_000}  # event time behind its stamp: as is


# --- the two input topics of a partition, in record-time order ---------------------------------


def taken(topic: str, partition: int, offset: int, stamp_ms: int | None) -> Any:
    message = SimpleNamespace(topic=topic, partition=partition, offset=offset,
                              timestamp=None if stamp_ms is None else stamp_ms / 1000)
    return SimpleNamespace(message=message)


def test_a_partitions_input_topics_are_merged_by_record_time_each_in_its_own_order() -> None:
    from streams.app import in_record_time_order

    rank = {"user-events": 0, "notification-candidates": 1}
    events = [taken("notification-candidates", 0, 7, 300), taken("notification-candidates", 0, 8,
                                                                 100),
              taken("user-events", 1, 3, 50), taken("user-events", 0, 4, 200),
              taken("user-events", 0, 5, 300), taken("notification-candidates", 1, 2, 10)]
    order = [(e.message.topic[0], e.message.partition, e.message.offset)
             for e in in_record_time_order(events, rank)]
    # partition 0: 4@200 before 7@300; 8@100 stays after 7 (its topic's order); the tie at 300
    # goes to the user event. Partition 1: 2@10 before 3@50.
    assert order == [("u", 0, 4), ("u", 0, 5), ("n", 0, 7), ("n", 0, 8),
                     ("n", 1, 2), ("u", 1, 3)]
    assert in_record_time_order(events[:2], rank) == events[:2]


# --- inputs handed over again are counted once ---------------------------------------------


def hand_over(worker: Any, kind: str, offset: int, value: bytes, partition: int = 1) -> None:
    """Faust hands the agent one input of ``kind`` (events, candidates) from ``u1``."""
    topic = worker.topics_by_kind[kind]
    message = SimpleNamespace(topic=topic, partition=partition, offset=offset,
                              tp=TP(topic, partition), key=b"u1", value=value,
                              timestamp=NOON / 1000)
    worker._apply(message, worker.batch)


def user_event(n: int) -> bytes:
    return orjson.dumps({"event_id": f"e{n}", "user_id": "u1", "type": "video_view",
                         "event_time_ms": NOON + n * 60_000, "tz": "UTC"})


def a_candidate(n: int) -> bytes:
    return orjson.dumps({"candidate_id": f"c{n}", "user_id": "u1", "content_id": f"v{n}",
                         "kind": "new_video_from_followed", "created_at_ms": NOON + n * 60_000,
                         "expires_at_ms": NOON + 12 * 3_600_000, "tz": "UTC"})


def input_counts(worker: Any) -> Counter[tuple[str, str]]:
    worker._publish_counts()
    return Counter({(s.labels["outcome"], s.labels["topic"].rsplit("-", 1)[-1]): int(s.value)
                    for family in worker.registry.collect() for s in family.samples
                    if s.name == "pushflow_input_messages_total"})


def the_inputs(worker: Any) -> list[tuple[str, int, bytes]]:
    return [("events", 0, user_event(0)), ("candidates", 0, a_candidate(1)),
            ("events", 1, b"[]"), ("events", 2, user_event(2)),
            ("candidates", 1, a_candidate(3)), ("candidates", 2, b'{"user_id": "u1"')]


def test_inputs_handed_over_again_from_the_committed_offset_are_counted_once(
    worker: Any,
) -> None:
    """Faust seeks back to its committed offset (after a recovery, a rebalance) while its
    commits trail what the agent applied, and hands the inputs since then over again: they
    are re-read (their stored outputs emitted again) but counted once."""
    for kind, offset, value in the_inputs(worker):
        hand_over(worker, kind, offset, value)
    once = input_counts(worker)
    assert sum(once.values()) == 6
    decisions = [r["decision_id"] for t, _, r in worker.batch.outputs if t == "decisions_topic"]
    for kind, offset, value in the_inputs(worker):  # again, from the committed offset 0
        hand_over(worker, kind, offset, value)
    assert input_counts(worker) == once
    again = [r["decision_id"] for t, _, r in worker.batch.outputs if t == "decisions_topic"]
    assert again == decisions + decisions  # re-emitted, identically
    hand_over(worker, "events", 3, user_event(3))
    assert sum(input_counts(worker).values()) == 7


def test_inputs_read_again_after_a_revocation_are_counted_once(worker: Any) -> None:
    for kind, offset, value in the_inputs(worker):
        hand_over(worker, kind, offset, value)
    once = input_counts(worker)
    topics = worker.topics_by_kind
    asyncio.run(worker._on_revoked(None, {TP(topics[k], 1) for k in ("events", "candidates")}))
    for kind, offset, value in the_inputs(worker):  # assigned again: from the committed offset
        hand_over(worker, kind, offset, value)
    assert input_counts(worker) == once


def changelog_event(key: bytes, state: Any) -> Any:
    return SimpleNamespace(key=key, value=state, message=SimpleNamespace(partition=1, value=b"x"))


def state_at(user: str, **applied: int) -> Any:
    from streams.features import UserState

    state = UserState(user, partition=1)
    state.applied = dict(applied)
    return state


def test_a_changelog_older_than_the_live_state_does_not_take_it_back(worker: Any) -> None:
    """After a rebalance Faust replays the whole changelog over the in-memory table: a record
    a broker lost would leave an older one last, which must not replace what this worker
    holds; it is written again once recovery is done. Newer records (another worker's) and
    new users are restored as Faust would."""
    live = state_at("u1", events=9, ticks=3)
    worker.table.data[b"u1"] = live
    worker.table.data[b"u2"] = state_at("u2", events=4)
    newer_u2 = state_at("u2", events=4, candidates=1)
    worker.table.apply_changelog_batch([
        changelog_event(b"u1", state_at("u1", events=5)),
        changelog_event(b"u1", state_at("u1", events=9, ticks=2)),
        changelog_event(b"u2", newer_u2),
        changelog_event(b"u3", state_at("u3", events=1)),
    ])
    assert worker.table.data[b"u1"] is live
    assert worker.table.data[b"u2"] is newer_u2
    assert worker.table.data[b"u3"].applied == {"events": 1}
    worker.owned_inputs = {TP(worker.settings.topic("user_events_topic"), 1)}
    worker._rebuild_due_index()
    assert worker.batch.states == {b"u1": live}
    assert worker.metrics.outdated_states._value.get() == 1
    assert worker.outdated == {}


def test_an_older_record_followed_by_the_live_one_is_nothing_to_write_again(worker: Any) -> None:
    live = state_at("u1", events=9)
    worker.table.data[b"u1"] = live
    same = state_at("u1", events=9)
    worker.table.apply_changelog_batch([changelog_event(b"u1", state_at("u1", events=5)),
                                        changelog_event(b"u1", same)])
    assert worker.table.data[b"u1"] is same
    worker._rebuild_due_index()
    assert worker.batch.states == {}


def test_a_standby_copy_is_kept_but_not_written_again(worker: Any) -> None:
    live = state_at("u1", events=9)
    worker.table.data[b"u1"] = live
    worker.table.apply_changelog_batch([changelog_event(b"u1", state_at("u1", events=5))])
    assert worker.table.data[b"u1"] is live
    worker._rebuild_due_index()  # partition 1 is not this worker's
    assert worker.batch.states == {}


# --- batched ingestion: a fetch is applied, written, and only then acknowledged -----------------


def test_a_fetch_is_acknowledged_part_by_part_only_after_its_write(tmp_path: Path) -> None:
    """Five inputs in one fetch, ``batch_max`` 2: three parts, each acknowledged only after a
    write holding all of its inputs returned; a failed write is tried again, and until one
    succeeds nothing is acknowledged."""
    from streams.app import Batch, PushflowWorker

    settings = Settings.from_env({"PUSHFLOW_BATCH_MAX": "2"}, broker="kafka://127.0.0.1:9092",
                                 data_dir=str(tmp_path))
    worker = PushflowWorker(settings, registry=CollectorRegistry())
    topic = worker.topics_by_kind["events"]
    fetch = [SimpleNamespace(topic=topic, partition=1, offset=n, tp=TP(topic, 1), key=b"u1",
                             value=user_event(n), timestamp=(NOON + n * 60_000) / 1000)
             for n in range(5)]
    log: list[Any] = []
    failures = [RuntimeError("broker away")]

    async def write(batch: Batch) -> None:
        await asyncio.sleep(0.01)  # the broker's acknowledgement takes a while
        if failures:
            raise failures.pop()
        log.append(("written", batch.inputs))

    worker._write = write
    worker.app.consumer = SimpleNamespace(
        ack_all=lambda messages: log.append(("acked", [m.offset for m in messages])))

    async def run() -> None:
        await worker._on_input_batch(fetch)
        await asyncio.gather(*worker._writes)

    asyncio.run(run())
    written, acked = 0, []
    for what, value in log:
        if what == "written":
            written += value
        else:  # every acknowledged input is in a write that returned before
            assert max(value) < written, log
            acked += value
    assert sorted(acked) == [0, 1, 2, 3, 4] and written == 5  # a retried part may ack last
    assert worker.positions[(topic, 1)] == 5
