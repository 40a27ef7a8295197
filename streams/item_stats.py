"""What everyone did with a piece of content or a creator: decayed counts on event time.

Inputs are partitioned by user, so no scoring worker sees all the feedback on one item. Each
send, open and dismissal of a push is also an *item feedback* record keyed by the item
(``content:<id>`` and ``creator:<id>``); the worker that owns the item's partition folds it into
an :class:`ItemStats` and publishes the result, and every scoring worker reads the published
statistics (:class:`ItemStatsView`).

Counts decay exponentially on event time with half-life ``half_life_ms``. An event at ``t``
contributes ``2 ** (-(T - t) / half_life)`` to the count read at ``T``; a record stores the sum
at its newest event time, so the fold is exact whatever order the events arrive in (an older
event is added already decayed to the record's time) and merging two records is a sum.

>>> s = ItemStats()
>>> s.add(SEND, 0, HOUR); s.add(OPEN, 0, HOUR); s.add(SEND, HOUR, HOUR)
>>> round(s.count(SEND, HOUR, HOUR), 3), round(s.count(OPEN, HOUR, HOUR), 3)
(1.5, 0.5)
>>> round(s.open_rate(HOUR, HOUR, base_rate=0.1, strength=10.0), 4)
0.1304
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # annotations only: those modules import this one
    from streams.attribution import TrainingExample
    from streams.contracts import Candidate
    from streams.features import PendingLabel

HOUR = 3_600_000
SEND, OPEN, DISMISS = 0, 1, 2
OUTCOMES = {"send": SEND, "open": OPEN, "dismiss": DISMISS}
FORMAT = 1


def item_keys(content_id: str | None, creator_id: str | None) -> list[str]:
    """The statistics keys one push counts under.

    >>> item_keys("v-1", "c-9"), item_keys("v-1", None)
    (['content:v-1', 'creator:c-9'], ['content:v-1'])
    """
    keys = []
    if content_id:
        keys.append(f"content:{content_id}")
    if creator_id:
        keys.append(f"creator:{creator_id}")
    return keys


def send_feedback(candidate: Candidate, at_ms: int) -> list[dict[str, Any]]:
    """The item feedback of a push of ``candidate`` going out at ``at_ms``."""
    keys = item_keys(candidate.content_id, candidate.creator_id)
    return [feedback_record(key, "send", at_ms, candidate.intent_id) for key in keys]


def outcome_feedback(
    examples: Iterable[TrainingExample], labels: Mapping[str, PendingLabel]
) -> list[dict[str, Any]]:
    """The item feedback of resolved labels (``labels``: the pending labels they resolved,
    by intent id): opens, and dismissals (a disable counts as one); a label that expired
    unopened adds nothing (its send is counted already)."""
    records = []
    for example in examples:
        outcome = {"opened": "open", "dismissed": "dismiss", "disabled": "dismiss"}.get(
            example.outcome)
        label = labels.get(example.intent_id)
        if outcome is not None and label is not None:
            records += [feedback_record(key, outcome, example.resolved_at_ms, example.intent_id)
                        for key in item_keys(label.content_id, label.creator_id)]
    return records


def feedback_record(key: str, outcome: str, at_ms: int, intent_id: str) -> dict[str, Any]:
    """One ``item-feedback`` record, keyed by ``key`` on its topic.

    >>> parse_feedback(orjson.dumps(feedback_record("content:v-1", "open", 5, "i-1")))
    ('content:v-1', 1, 5, 'i-1')
    """
    return {"item": key, "outcome": outcome, "at_ms": at_ms, "intent_id": intent_id}


def parse_feedback(raw: bytes, max_bytes: int = 4096) -> tuple[str, int, int, str]:
    """(key, outcome, at_ms, intent_id) of an ``item-feedback`` record; a ValueError that
    says what is wrong for anything else."""
    if len(raw) > max_bytes:
        raise ValueError(f"item feedback: {len(raw)} bytes, over {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"item feedback: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("item feedback: not a JSON object")
    key, outcome, at, intent_id = (obj.get(k) for k in ("item", "outcome", "at_ms", "intent_id"))
    if not isinstance(key, str) or not key.startswith(("content:", "creator:")):
        raise ValueError("item feedback: 'item' must be a content: or creator: key")
    if outcome not in OUTCOMES:
        raise ValueError(f"item feedback: 'outcome' must be one of {sorted(OUTCOMES)}")
    if not isinstance(at, int) or isinstance(at, bool) or at < 0:
        raise ValueError("item feedback: 'at_ms' must be a non-negative integer")
    if not isinstance(intent_id, str) or not intent_id:
        raise ValueError("item feedback: 'intent_id' must be a non-empty string")
    return key, OUTCOMES[outcome], at, intent_id


@dataclass(slots=True)
class ItemStats:
    """Decayed send, open and dismiss counts of one item, as of ``at_ms`` (its newest event)."""

    at_ms: int = 0
    counts: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def add(self, outcome: int, at_ms: int, half_life_ms: int, weight: float = 1.0) -> None:
        """Count one ``outcome`` at event time ``at_ms``, in any order."""
        if at_ms > self.at_ms:
            factor = _decay(at_ms - self.at_ms, half_life_ms)
            self.counts = [c * factor for c in self.counts]
            self.at_ms = at_ms
            self.counts[outcome] += weight
        else:
            self.counts[outcome] += weight * _decay(self.at_ms - at_ms, half_life_ms)

    def merge(self, other: ItemStats, half_life_ms: int) -> None:
        """Fold in the counts of ``other`` (e.g. another worker's share of the same item)."""
        for outcome, value in enumerate(other.counts):
            if value:
                self.add(outcome, other.at_ms, half_life_ms, value)

    def count(self, outcome: int, now_ms: int, half_life_ms: int) -> float:
        """The decayed count read at ``now_ms`` (never later than the newest event counted:
        an event ahead of ``now_ms`` counts as if it happened now)."""
        return self.counts[outcome] * _decay(max(0, now_ms - self.at_ms), half_life_ms)

    def open_rate(self, now_ms: int, half_life_ms: int, base_rate: float,
                  strength: float) -> float:
        """Opens per send, shrunk towards ``base_rate`` with ``strength`` pseudo-sends: an item
        nobody has been sent yet is exactly as good as the average push."""
        sends = self.count(SEND, now_ms, half_life_ms)
        opens = min(self.count(OPEN, now_ms, half_life_ms), sends)
        return (opens + strength * base_rate) / (sends + strength)

    def to_bytes(self) -> bytes:
        # orjson's output object keeps its over-allocated buffer (about 4 KiB for these few
        # dozen bytes); an owner keeps a record per item, so it keeps an exact-size copy
        raw = orjson.dumps({"v": FORMAT, "at": self.at_ms, "c": self.counts})
        return memoryview(raw).tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ItemStats:
        """Inverse of :meth:`to_bytes`; anything else is a ValueError.

        >>> s = ItemStats(5, [1.0, 0.5, 0.0])
        >>> ItemStats.from_bytes(s.to_bytes()) == s
        True
        >>> ItemStats.from_bytes(b'{"v": 1, "at": 0, "c": [1, -1, 0]}')
        Traceback (most recent call last):
        ...
        ValueError: item statistics: counts must be three finite non-negative numbers
        """
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"item statistics: not JSON ({exc})") from None
        if not isinstance(obj, dict) or obj.get("v") != FORMAT:
            raise ValueError(f"item statistics: not format {FORMAT}")
        at, counts = obj.get("at"), obj.get("c")
        if not isinstance(at, int) or isinstance(at, bool) or at < 0:
            raise ValueError("item statistics: 'at' must be a non-negative integer")
        if not (isinstance(counts, list) and len(counts) == 3 and all(
                isinstance(c, int | float) and not isinstance(c, bool) and math.isfinite(c)
                and c >= 0 for c in counts)):
            raise ValueError("item statistics: counts must be three finite non-negative numbers")
        return cls(at, [float(c) for c in counts])


def _decay(elapsed_ms: int, half_life_ms: int) -> float:
    return 2.0 ** (-elapsed_ms / half_life_ms)


class ItemStatsTable:
    """Statistics of many items, bounded: an item not updated for ``ttl_ms`` of event time is
    forgotten, and beyond ``max_items`` the least recently updated one goes first.

    >>> t = ItemStatsTable(half_life_ms=HOUR, ttl_ms=2 * HOUR, max_items=2)
    >>> for key, at in (("content:a", 0), ("content:b", 10), ("content:c", 20)):
    ...     _ = t.add(key, SEND, at)
    >>> sorted(t.keys()), t.evicted
    (['content:b', 'content:c'], ['content:a'])
    >>> _ = t.add("content:c", OPEN, 3 * HOUR)
    >>> sorted(t.keys()), t.evicted
    (['content:c'], ['content:a', 'content:b'])
    """

    def __init__(self, half_life_ms: int = 6 * HOUR, ttl_ms: int = 7 * 24 * HOUR,
                 max_items: int = 1_000_000) -> None:
        if half_life_ms <= 0 or ttl_ms <= 0 or max_items <= 0:
            raise ValueError("half_life_ms, ttl_ms and max_items must be positive")
        self.half_life_ms, self.ttl_ms, self.max_items = half_life_ms, ttl_ms, max_items
        self._items: OrderedDict[str, ItemStats] = OrderedDict()
        self.watermark_ms = 0
        self.evicted: list[str] = []  # keys dropped since the caller last cleared it
        # The content records summed, as counts decayed to ``_total_at``: kept up to date as
        # records change, so the base rate is read in constant time.
        self._total = ItemStats()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def keys(self) -> Iterator[str]:
        return iter(self._items)

    def get(self, key: str) -> ItemStats | None:
        return self._items.get(key)

    def add(self, key: str, outcome: int, at_ms: int) -> ItemStats:
        """Count one outcome for ``key``; the updated record (to publish)."""
        stats = self._items.get(key)
        if stats is None:
            stats = self._items[key] = ItemStats(at_ms)
        else:
            self._items.move_to_end(key)
        stats.add(outcome, at_ms, self.half_life_ms)
        if key.startswith("content:"):
            self._total.add(outcome, at_ms, self.half_life_ms)
        self.watermark_ms = max(self.watermark_ms, at_ms)
        self._bound()
        return stats

    def put(self, key: str, stats: ItemStats) -> None:
        """Take a published record as is (a follower of the statistics topic)."""
        self._forget(key, self._items.get(key))
        self._items[key] = stats
        self._items.move_to_end(key)
        if key.startswith("content:"):
            self._total.merge(stats, self.half_life_ms)
        self.watermark_ms = max(self.watermark_ms, stats.at_ms)
        self._bound()

    def remove(self, key: str) -> None:
        self._forget(key, self._items.pop(key, None))

    def total(self, outcome: int, now_ms: int) -> float:
        """The decayed count of ``outcome`` over all content held, read at ``now_ms``."""
        return self._total.count(outcome, now_ms, self.half_life_ms)

    def _forget(self, key: str, stats: ItemStats | None) -> None:
        """Take a record's counts out of the total (it is replaced or dropped)."""
        if stats is None or not key.startswith("content:"):
            return
        total = self._total
        for outcome, value in enumerate(stats.counts):
            if value:  # the record's count as of the total's time, never below zero
                total.add(outcome, stats.at_ms, self.half_life_ms, -value)
                total.counts[outcome] = max(0.0, total.counts[outcome])

    def _bound(self) -> None:
        while len(self._items) > self.max_items:
            key, stats = self._items.popitem(last=False)
            self._forget(key, stats)
            self.evicted.append(key)
        oldest = self.watermark_ms - self.ttl_ms
        while self._items:
            key, stats = next(iter(self._items.items()))
            if stats.at_ms >= oldest:
                break  # kept in update order, so the rest were updated later
            del self._items[key]
            self._forget(key, stats)
            self.evicted.append(key)


class ItemStatsView:
    """What a scoring worker reads: the published statistics plus a running base rate.

    >>> v = ItemStatsView(ItemStatsTable(half_life_ms=HOUR))
    >>> v.features("v-1", "c-1", 0)["item_open_rate"] == v.features(None, None, 0)["item_open_rate"]
    True
    """

    def __init__(self, table: ItemStatsTable, strength: float = 20.0) -> None:
        self.table = table
        self.strength = strength

    def base_rate(self, now_ms: int) -> float:
        """Opens per send over all content, decayed like the items' counts (0.05 until a
        send is known): the prior every item's rate is shrunk towards."""
        sends, opens = self.table.total(SEND, now_ms), self.table.total(OPEN, now_ms)
        return (min(opens, sends) + 0.05 * self.strength) / (sends + self.strength)

    def features(self, content_id: str | None, creator_id: str | None, now_ms: int,
                 base_rate: float | None = None) -> dict[str, float]:
        """Log-odds of the content's and the creator's open rates (relative to the base
        rate, so 0 = average) and log1p of their decayed sends."""
        base = self.base_rate(now_ms) if base_rate is None else base_rate
        base_logit = math.log(base / (1 - base))
        out: dict[str, float] = {}
        for name, key in (("item", f"content:{content_id}" if content_id else None),
                          ("creator", f"creator:{creator_id}" if creator_id else None)):
            stats = self.table.get(key) if key else None
            if stats is None:
                out[f"{name}_open_rate"], out[f"{name}_sends"] = 0.0, 0.0
                continue
            rate = stats.open_rate(now_ms, self.table.half_life_ms, base, self.strength)
            rate = min(max(rate, 1e-6), 1 - 1e-6)
            out[f"{name}_open_rate"] = math.log(rate / (1 - rate)) - base_logit
            out[f"{name}_sends"] = math.log1p(stats.count(SEND, now_ms, self.table.half_life_ms))
        return out
