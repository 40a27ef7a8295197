"""Item statistics in the worker: counted where the item is owned, read by every worker.

The decision agent emits each send, open and dismissal as an ``item-feedback`` record keyed
by item (``content:<id>``, ``creator:<id>``), so Kafka routes all feedback on one item to one
partition, whoever the users were. :class:`ItemCounter` is the agent on that topic: it folds
each record into the item's :class:`~streams.item_stats.ItemStats`, kept in a Faust table
whose changelog the worker writes itself (as it does for user state), so a restarted or new
owner recovers the counts before it counts more; then it publishes the item's new record on
the compacted ``item-stats`` topic. :class:`ItemStatsFollower` reads that whole topic on every
worker into the :class:`~streams.item_stats.ItemStatsTable` the worker scores with.

Feedback is at least once (an input re-read after a crash emits its outputs again): the owner
skips a record it has counted already (same item, outcome and intent) among the last
``SEEN_LIMIT`` it counted in this process.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import faust
from aiokafka.partitioner import murmur2
from confluent_kafka import Message

from streams.errors import ContractError
from streams.follow import TopicFollower
from streams.item_stats import (
    DISMISS,
    OPEN,
    OUTCOMES,
    SEND,
    ItemStats,
    ItemStatsTable,
    ItemStatsView,
    parse_feedback,
)

if TYPE_CHECKING:
    from streams.app import PushflowWorker

log = logging.getLogger(__name__)
SEEN_LIMIT = 200_000
OUTCOME_NAMES = {number: name for name, number in OUTCOMES.items()}
LOG_EVERY_S = 60.0


class _RawValue:
    """Faust value type of the item-counts table: the record's bytes as they are (Faust reads
    the changelog codec from ``_options.serializer``)."""

    class _options:  # noqa: N801 - the attribute name Faust looks up
        serializer = "raw"

    @classmethod
    def from_data(cls, data: Any, preferred_type: Any = None) -> Any:
        return data


class ItemCounter:
    """The owner side: the ``pushflow.items`` agent and the table it keeps."""

    def __init__(self, worker: PushflowWorker) -> None:
        self.worker = worker
        s = worker.settings
        self.half_life_ms = s.item_half_life_s * 1000
        self.stats_topic = s.topic("item_stats_topic")
        self.table = worker.app.Table(
            "item-counts", partitions=s.partitions, key_type=bytes, value_type=_RawValue
        )
        self.changelog = self.table.changelog_topic.get_topic_name()
        self.seen: OrderedDict[tuple[bytes, int, str], None] = OrderedDict()
        self.watermark_ms = 0
        # item -> (newest event time, partition) of what this worker wrote: the sweep reads
        # it instead of parsing and hashing every record; records restored from the
        # changelog are parsed once, at the first sweep that meets them
        self.dated: dict[bytes, tuple[int, int]] = {}
        topic = worker._raw_topic(s.topic("item_feedback_topic"))
        worker.app.agent(topic, name="pushflow.items")(self.agent)

    async def agent(self, stream: faust.StreamT) -> AsyncIterator[None]:
        """Fold each taken list, write the changed items (changelog, then the statistics
        topic) and wait for the broker before the list is acknowledged."""
        taken = stream.take_events(1000, 0.2)  # type: ignore[attr-defined]
        async for events in taken:
            changed: dict[bytes, tuple[int, ItemStats]] = {}
            for event in events:
                self._count(event.message, changed)
            self._write(changed)
            if changed:
                await self.worker.output.flush()
            yield None

    def _count(self, message: Any, changed: dict[bytes, tuple[int, ItemStats]]) -> None:
        try:
            key, outcome, at_ms, intent_id = parse_feedback(message.value or b"")
        except ValueError as exc:
            self.worker._dead_letter(message, ContractError(f"{exc}"), self.worker.batch)
            return
        item = key.encode()
        seen = (item, outcome, intent_id)
        if seen in self.seen:
            return
        self.seen[seen] = None
        if len(self.seen) > SEEN_LIMIT:
            self.seen.popitem(last=False)
        stats = changed.get(item, (0, None))[1] or self._stored(item) or ItemStats(at_ms)
        stats.add(outcome, at_ms, self.half_life_ms)
        changed[item] = (message.partition, stats)
        self.watermark_ms = max(self.watermark_ms, at_ms)
        self.worker.metrics.child(self.worker.metrics.item_feedback, OUTCOME_NAMES[outcome]).inc()

    def _stored(self, item: bytes) -> ItemStats | None:
        raw = self.table.data.get(item)
        if raw is None:
            return None
        try:
            return ItemStats.from_bytes(raw)
        except ValueError:  # only this worker writes it: a bug, start the item over
            log.exception("item statistics of %r unreadable", item)
            return None

    def _write(self, changed: Mapping[bytes, tuple[int, ItemStats]]) -> None:
        output = self.worker.output
        for item, (partition, stats) in changed.items():
            raw = stats.to_bytes()
            self.table.data[item] = raw
            self.dated[item] = (stats.at_ms, partition)
            output.produce(self.changelog, item, raw, partition)
            output.produce(self.stats_topic, item, raw, partition)

    def sweep(self, active: set[int], ttl_ms: int, max_items: int) -> int:
        """Forget owned items not updated for ``ttl_ms`` of event time, and the least
        recently updated beyond ``max_items``: tombstones on the changelog and the statistics
        topic, so every follower forgets them too. The number forgotten."""
        dated: list[tuple[int, bytes]] = []
        for item, raw in list(self.table.data.items()):
            known = self.dated.get(item)
            if known is None:
                try:
                    at_ms = ItemStats.from_bytes(raw).at_ms
                except ValueError:
                    at_ms = 0
                known = self.dated[item] = (at_ms, self._partition_of(item))
            if known[1] in active:
                dated.append((known[0], item))
        oldest = self.watermark_ms - ttl_ms
        dated.sort()
        gone = [item for at, item in dated if at < oldest]
        beyond = len(dated) - len(gone) - max_items
        if beyond > 0:
            gone += [item for _, item in dated[len(gone):len(gone) + beyond]]
        for item in gone:
            partition = self.dated.pop(item)[1]
            del self.table.data[item]
            if partition in active:  # a standby's copy goes with its owner's tombstone
                self.worker.output.produce(self.changelog, item, None, partition)
                self.worker.output.produce(self.stats_topic, item, None, partition)
        return len(gone)

    def _partition_of(self, item: bytes) -> int:
        return partition_of(item, self.worker.settings.partitions)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as the worker's producer is set
    up) puts ``key`` in: where the item's feedback, counts and statistics all live.

    >>> partition_of(b"content:v-1", 8) == partition_of(b"content:v-1", 8) < 8
    True
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class ItemStatsFollower(TopicFollower):
    """Tails every partition of the statistics topic into ``table`` in a daemon thread."""

    def __init__(
        self,
        client_config: Mapping[str, str],
        topic: str,
        partitions: int,
        table: ItemStatsTable,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(client_config, topic, partitions, "item-stats-follower")
        self.table = table
        self._on_refused = on_refused
        self._logged_at = 0.0
        self.read = 0
        self.problem: str | None = None

    def report_problem(self, problem: str | None, detail: str = "") -> None:
        self.problem = problem
        if problem == "follower_error":
            self._refuse(problem, detail)

    def apply(self, message: Message) -> None:
        self._apply(message.key(), message.value())

    def _apply(self, key: bytes | None, raw: bytes | None) -> None:
        item = (key or b"").decode(errors="replace")
        if not item.startswith(("content:", "creator:")):
            self._refuse("bad_key", f"key {item[:80]!r} is not an item")
            return
        if raw is None:
            self.table.remove(item)
            return
        try:
            self.table.put(item, ItemStats.from_bytes(raw))
        except ValueError as exc:
            self._refuse("bad_record", str(exc))
            return
        self.read += 1

    def _refuse(self, reason: str, message: str) -> None:
        if self._on_refused is not None:
            self._on_refused(reason)
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.warning("item statistics record refused (%s): %s", reason, message[:200])


def item_page(table: ItemStatsTable, item: str, now_ms: int | None = None) -> dict[str, Any]:
    """What ``GET /items?key=content:<id>`` answers: the item's counts as of now (event
    time: its newest event, or ``now_ms``), and its open rate shrunk to the base rate."""
    stats = table.get(item)
    if stats is None:
        return {"key": item, "known": False}
    at = max(stats.at_ms, now_ms or 0)
    half_life = table.half_life_ms
    view = ItemStatsView(table)
    return {
        "key": item, "known": True, "at_ms": stats.at_ms,
        "sends": stats.count(SEND, at, half_life),
        "opens": stats.count(OPEN, at, half_life),
        "dismissals": stats.count(DISMISS, at, half_life),
        "open_rate": stats.open_rate(at, half_life, view.base_rate(at), view.strength),
    }
