"""Which users an event-time tick changes, so a replay's tick does not visit every user.

The worker's timer ticks every user with pending labels or held pushes
(:meth:`streams.pipeline.Decider.on_tick`). For most of them a tick only moves their
watermark: nothing changes until a label's window passes (``deadline_ms < now``) or a held
push's send time comes (``send_at_ms <= now``). :class:`TickClock` keeps that wake-up time per
user in a heap, so a tick steps only the users it wakes; the others *catch up* when they are
next touched, and end in the very state the ticks would have left them in.

Catching up is exact, not approximate: :meth:`UserState.advance` prunes when the watermark
enters a new 5-minute bucket, so a user ticked at ``t1 < t2 < t3`` (``t2``, ``t3`` in one
bucket) was pruned at ``t2``. Catching up advances to the first tick of the latest bucket the
user missed, then to the latest tick: the same prune, the same watermark.

>>> from streams.features import PendingLabel, UserState
>>> clock, s = TickClock(), UserState("u1")
>>> s.pending["i1"] = PendingLabel("i1", "c1", "trending", 0, 10_000, 0.2, 0.0, 1, {})
>>> clock.schedule("u1", s)
>>> clock.tick(5_000, {"u1"}), s.watermark_ms  # not woken: nothing to do but catch up later
([], 0)
>>> clock.catch_up("u1", s); s.watermark_ms
5000
>>> clock.tick(10_001, {"u1"})  # its window has passed: this tick resolves the label
['u1']
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

from streams.features import MS_5MIN, UserState


class TickClock:
    """Wake-up times of users with something in flight, and the ticks they have missed.

    ``exact`` set means "tick every due user, as the worker does" (after a step raised: a
    half-stepped state may not match its wake-up time); waking and catching up still apply.
    """

    def __init__(self) -> None:
        self.exact = False
        self.ticks = 0  # ticks so far; a user is "synced" at the tick count it has seen
        self.last_tick_ms = 0
        self._bucket_ticks: list[tuple[int, int]] = []  # (count, ms) of the latest 5-min bucket
        self._synced: dict[str, int] = {}
        self._wake: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []

    def schedule(self, user_id: str, state: UserState) -> None:
        """``user_id`` is due (pending labels or held pushes) and current: note when a tick
        next changes it."""
        self._synced[user_id] = self.ticks
        times = [p.deadline_ms + 1 for p in state.pending.values()]
        times += [e["send_at_ms"] for e in state.outbox.values() if e["send_at_ms"] is not None]
        wake = min(times, default=None)
        if wake is None:
            self._wake.pop(user_id, None)
        elif self._wake.get(user_id) != wake:
            self._wake[user_id] = wake
            heapq.heappush(self._heap, (wake, user_id))

    def forget(self, user_id: str) -> None:
        """``user_id`` is no longer due: ticks leave it alone."""
        self._synced.pop(user_id, None)
        self._wake.pop(user_id, None)

    def tick(self, now_ms: int, due: Iterable[str]) -> list[str]:
        """A tick at ``now_ms``: the due users it changes, in user order."""
        self.ticks += 1
        bucket = now_ms // MS_5MIN
        if not self._bucket_ticks or self._bucket_ticks[-1][1] // MS_5MIN != bucket:
            self._bucket_ticks = []
        self._bucket_ticks.append((self.ticks, now_ms))
        self.last_tick_ms = now_ms
        woken = set()
        while self._heap and self._heap[0][0] <= now_ms:
            wake, user_id = heapq.heappop(self._heap)
            if self._wake.get(user_id) == wake:
                del self._wake[user_id]
                woken.add(user_id)
        return sorted(woken.intersection(due))

    def catch_up(self, user_id: str, state: UserState) -> None:
        """Apply to ``state`` the ticks it missed since it was last current."""
        synced = self._synced.get(user_id)
        if synced is None or synced == self.ticks:
            return
        first = next(ms for count, ms in self._bucket_ticks if count > synced)
        state.advance(first)
        state.advance(self.last_tick_ms)
        self._synced[user_id] = self.ticks

    def catch_up_all(self, states: Mapping[str, UserState]) -> None:
        """Every due user current, e.g. before reading watermarks."""
        for user_id in [u for u, synced in self._synced.items() if synced != self.ticks]:
            if user_id in states:
                self.catch_up(user_id, states[user_id])
