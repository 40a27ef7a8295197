"""A second simulated world for ``pushflow evaluate``, shaped unlike :mod:`streams.simulator`.

Users fall into hidden segments; each segment has a two-peak daily activity curve (sessions and
opens follow it in the user's true local time), its own fatigue half-life and its own disable
hazard, which grows with the pushes a user ignored in a row. A user's taste is a rank-3 latent
vector; kinds and creators have latent vectors too, and affinity is their dot product. A
candidate's appeal decays with its age. Users live in 15 IANA zones (the US ones change to DST
on 2026-03-08, inside the default run); some travel: their device zone changes at a session
whose events carry the new zone. Some candidates arrive late (after ``created_at_ms``, marked
``arrived_at_ms``), some are re-sent under the same id, and critical ones (login codes asked for
at the start of a session, security alerts) expire within minutes.

The outcome model reads only this world's hidden state, never pushflow's features: nothing in
it is tuned to the policy. The world is drawn from one ``random.Random(seed)``; a push's outcome
from a generator seeded by ``(seed, intent_id)``, so policies on one seed share their numbers.

>>> start = 1_772_582_400_000  # 2026-03-04T00:00Z
>>> world = SegmentWorld(seed=3, n_users=30, start_ms=start)
>>> batch = world.advance(start + 12 * HOUR_MS)
>>> sorted({topic for topic, _ in batch})
['notification-candidates', 'user-events']
>>> cand = next(m for t, m in batch if t == 'notification-candidates')
>>> 0.0 < world.candidate_p_open(cand, start + 12 * HOUR_MS) < 1.0
True
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.simulator import CANDIDATES, DAY_MS, HOUR_MS, USER_EVENTS, local_hour, sigmoid

#: Zone -> weight; the US zones change to DST on 2026-03-08, Europe on 03-29, Sydney and
#: Auckland leave DST on 04-05.
ZONES = {
    "America/Los_Angeles": 8, "America/Denver": 3, "America/Chicago": 6, "America/New_York": 10,
    "America/Sao_Paulo": 7, "Europe/London": 6, "Europe/Berlin": 7, "Africa/Lagos": 5,
    "Africa/Cairo": 4, "Asia/Kolkata": 12, "Asia/Jakarta": 7, "Asia/Shanghai": 9,
    "Asia/Tokyo": 5, "Australia/Sydney": 4, "Pacific/Auckland": 2,
}
RANK = 3
#: kind -> (share of candidates, freshness half-life in hours, ttl in ms).
KINDS: Mapping[str, tuple[float, float, int]] = {
    "new_video_from_followed": (0.30, 6.0, 12 * HOUR_MS),
    "live_started": (0.10, 0.5, HOUR_MS),
    "trending": (0.30, 3.0, 6 * HOUR_MS),
    "comment_reply": (0.15, 12.0, 24 * HOUR_MS),
    "friend_joined": (0.13, 24.0, 24 * HOUR_MS),
    "security_alert": (0.02, 1.0, 30 * 60_000),
}
CRITICAL = frozenset({"security_alert", "login_code"})
LOGIN_CODE_TTL_MS = 5 * 60_000
CREATOR_KINDS = frozenset({"new_video_from_followed", "live_started", "trending"})


@dataclass(frozen=True, slots=True)
class Segment:
    """Hidden truth shared by a segment's users."""

    name: str
    share: float
    peaks: tuple[tuple[float, float, float], tuple[float, float, float]]  # (hour, width, height)
    base_logit: float
    fatigue_half_life_h: float
    disable_base: float  # hazard after one ignored push
    disable_growth: float  # hazard multiplier per further push ignored in a row

    def activity(self, hour: float) -> float:
        """Activity in (0, 1] at local ``hour``: two bumps over a night floor."""
        level = 0.02
        for mu, width, height in self.peaks:
            d = abs(hour - mu) % 24
            level += height * math.exp(-0.5 * (min(d, 24 - d) / width) ** 2)
        return min(1.0, level)


SEGMENTS = (
    Segment("commuters", 0.3, ((7.5, 1.0, 0.9), (18.0, 1.2, 0.8)), -1.6, 3.0, 0.004, 1.6),
    Segment("night_owls", 0.25, ((13.0, 1.5, 0.4), (23.5, 1.5, 1.0)), -1.9, 8.0, 0.002, 1.3),
    Segment("lunch_and_evening", 0.3, ((12.5, 1.0, 0.7), (21.0, 1.5, 0.9)), -1.3, 12.0,
            0.003, 1.45),
    Segment("casual", 0.15, ((10.0, 2.0, 0.5), (20.0, 2.0, 0.5)), -2.5, 24.0, 0.008, 1.8),
)
_CUM_SEG = list(itertools.accumulate(s.share for s in SEGMENTS))
_ZONE_NAMES, _CUM_ZONES = tuple(ZONES), list(itertools.accumulate(ZONES.values()))
_KIND_NAMES = tuple(KINDS)
_CUM_KINDS = list(itertools.accumulate(v[0] for v in KINDS.values()))
_EMIT, _SESSION, _CANDIDATE, _MOVE = 0, 1, 2, 3


@dataclass(slots=True)
class WorldUser:
    """One user's hidden truth and what happened to them."""

    user_id: str
    segment: Segment
    taste: tuple[float, ...]
    zone: str
    reports_offset: bool  # events carry "+HH:MM", not the zone: the worker is never told it
    session_rate: float  # sessions per hour at full activity
    pushes: list[int] = field(default_factory=list)  # send times, for fatigue
    ignored_in_a_row: int = 0
    disabled_at: int | None = None
    moves: list[tuple[int, str]] = field(default_factory=list)  # (at_ms, new zone)

    def zone_at(self, at_ms: int) -> str:
        zone = self.zone
        for moved_at, new_zone in self.moves:
            if moved_at <= at_ms:
                zone = new_zone
        return zone


def _vector(rng: random.Random, scale: float) -> tuple[float, ...]:
    return tuple(rng.gauss(0, scale) for _ in range(RANK))


def _dot(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


class SegmentWorld:
    """A seeded population with hidden segments; the same interface as ``Population``.

    Parameters
    ----------
    seed, n_users, start_ms
        Seed of everything, number of users, simulated epoch ms of the start.
    candidates_per_day
        Non-login candidates per user per day.
    late_share, resend_share, traveller_share, offset_share
        Shares of candidates that arrive late and that are re-sent, of users who travel and
        of users whose events carry a UTC offset instead of their zone.
    """

    def __init__(self, seed: int, n_users: int, start_ms: int, *,
                 candidates_per_day: float = 6.0, late_share: float = 0.15,
                 resend_share: float = 0.05, traveller_share: float = 0.06,
                 offset_share: float = 0.08) -> None:
        self._seed, self._rng = seed, random.Random(f"segments/{seed}")
        self._start = self._now = int(start_ms)
        self._candidate_rate = candidates_per_day / DAY_MS
        self._late_share, self._resend_share = late_share, resend_share
        self._heap: list[tuple[int, int, int, int, Any]] = []
        self._seq, self._serial = itertools.count(), itertools.count(1)
        self._kinds = {k: _vector(self._rng, 0.8) for k in (*_KIND_NAMES, "login_code")}
        self._creators = [_vector(self._rng, 0.6) for _ in range(max(20, n_users // 20))]
        self._creator_weights = [1 / (rank + 1) for rank in range(len(self._creators))]
        self._delivered: set[str] = set()
        self._candidates: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, int] = dict.fromkeys(
            ("delivered", "opens", "disables", "late", "resent", "moves"), 0)
        self._users = [self._draw_user(n, offset_share) for n in range(n_users)]
        self._index = {u.user_id: i for i, u in enumerate(self._users)}
        for i, user in enumerate(self._users):
            self._schedule(self._next_session(user, self._start), _SESSION, i)
            self._schedule(self._start + self._exp_ms(self._candidate_rate), _CANDIDATE, i)
            if self._rng.random() < traveller_share:
                self._schedule(self._start + int(self._rng.uniform(0.5, 5.0) * DAY_MS), _MOVE, i)

    # ----------------------------------------------------------------- public API
    def advance(self, until_ms: int) -> list[tuple[str, dict[str, Any]]]:
        """Move the clock to ``until_ms``; the messages due in (previous, until_ms]."""
        if until_ms < self._now:
            raise ValueError(f"until_ms {until_ms} is before the clock {self._now}")
        out: list[tuple[str, dict[str, Any]]] = []
        handlers = {_SESSION: self._on_session, _CANDIDATE: self._on_candidate,
                    _MOVE: self._on_move}
        while self._heap and self._heap[0][0] <= until_ms:
            at_ms, _, action, idx, payload = heapq.heappop(self._heap)
            if action != _EMIT:
                handlers[action](idx, at_ms)
            else:
                out.append((CANDIDATES if "candidate_id" in payload else USER_EVENTS, payload))
        self._now = int(until_ms)
        return out

    def deliver(self, intent: Mapping[str, Any]) -> None:
        """The worker sent ``intent``: draw its outcome (once per intent id)."""
        idx = self._index.get(str(intent.get("user_id")))
        intent_id = str(intent.get("intent_id"))
        send_at = int(intent.get("send_at_ms") or self._now)
        if idx is None or intent_id in self._delivered:
            return
        user = self._users[idx]
        if user.disabled_at is not None and send_at >= user.disabled_at:
            return
        self._delivered.add(intent_id)
        self._outcome(idx, intent, intent_id, send_at)

    def candidate_p_open(self, candidate: Any, at_ms: int, *, taste: bool = True) -> float:
        """Hidden probability that a push of ``candidate`` (a Candidate or its message) sent
        at ``at_ms`` is opened; with ``taste`` false, without the user's taste for its kind
        and creator (everything else an oracle knows: segment, hour, freshness, fatigue)."""
        def get(name: str) -> Any:
            if isinstance(candidate, Mapping):
                return candidate.get(name)
            return getattr(candidate, name)

        user = self._users[self._index[get("user_id")]]
        return self._p_open(user, get("kind"), get("creator_id"), get("created_at_ms"), at_ms,
                            taste)

    def true_zone(self, user_id: str, at_ms: int) -> str:
        """The zone the user's device is in at ``at_ms``."""
        return self._users[self._index[user_id]].zone_at(at_ms)

    def segment_of(self, user_id: str) -> Segment:
        return self._users[self._index[user_id]].segment

    def travellers(self) -> dict[str, list[tuple[int, str]]]:
        """user id -> its zone changes so far, (at_ms, new zone)."""
        return {u.user_id: list(u.moves) for u in self._users if u.moves}

    # ------------------------------------------------------------------ the world
    def _draw_user(self, n: int, offset_share: float) -> WorldUser:
        rng = self._rng
        draw = rng.random() * _CUM_SEG[-1]
        segment = SEGMENTS[min(len(SEGMENTS) - 1, bisect.bisect(_CUM_SEG, draw))]
        zone = rng.choices(_ZONE_NAMES, cum_weights=_CUM_ZONES)[0]
        return WorldUser(f"w{n:06d}", segment, _vector(rng, 0.9), zone,
                         rng.random() < offset_share, 0.5 * rng.lognormvariate(0, 0.5))

    def _schedule(self, at_ms: int, action: int, idx: int, payload: Any = None) -> None:
        heapq.heappush(self._heap, (at_ms, next(self._seq), action, idx, payload))

    def _exp_ms(self, rate_per_ms: float) -> int:
        return max(1, int(self._rng.expovariate(rate_per_ms)))

    def _next_id(self, prefix: str) -> str:
        return f"seg{self._seed}-{prefix}{next(self._serial)}"

    def _next_session(self, user: WorldUser, after_ms: int) -> int:
        at_ms, rate = after_ms, user.session_rate / HOUR_MS
        while True:
            at_ms += self._exp_ms(rate)
            if self._rng.random() < user.segment.activity(local_hour(user.zone_at(at_ms), at_ms)):
                return at_ms

    def _tz(self, user: WorldUser, at_ms: int) -> str:
        zone = user.zone_at(at_ms)
        if not user.reports_offset:
            return zone
        minutes = round((local_hour(zone, at_ms) - at_ms % DAY_MS / HOUR_MS) * 60) % (24 * 60)
        minutes = minutes - 24 * 60 if minutes > 14 * 60 else minutes
        sign = "+" if minutes >= 0 else "-"
        return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"

    def _event(self, user: WorldUser, kind: str, at_ms: int, intent_id: str | None = None,
               event_id: str | None = None) -> dict[str, Any]:
        event = {"event_id": event_id or self._next_id("e"), "user_id": user.user_id,
                 "type": kind, "event_time_ms": at_ms, "tz": self._tz(user, at_ms)}
        if intent_id is not None:
            event["intent_id"] = intent_id
        return event

    def _on_session(self, idx: int, at_ms: int) -> None:
        user, rng = self._users[idx], self._rng
        self._schedule(at_ms, _EMIT, idx, self._event(user, "app_open", at_ms))
        if rng.random() < 0.06:  # a login code, asked for as the session starts
            self._emit_candidate(idx, "login_code", at_ms + rng.randint(1_000, 5_000), None)
        for _ in range(int(rng.expovariate(1 / 3))):
            at_ms += rng.randint(5_000, 90_000)
            self._schedule(at_ms, _EMIT, idx, self._event(user, "video_view", at_ms))
        self._schedule(self._next_session(user, at_ms), _SESSION, idx)

    def _on_move(self, idx: int, at_ms: int) -> None:
        """A traveller's device zone changes; the next session reports it."""
        user = self._users[idx]
        current = user.zone_at(at_ms)
        user.moves.append((at_ms, self._rng.choice([z for z in _ZONE_NAMES if z != current])))
        self.stats["moves"] += 1
        self._schedule(at_ms + 1, _EMIT, idx, self._event(user, "app_open", at_ms + 1))

    def _on_candidate(self, idx: int, at_ms: int) -> None:
        rng = self._rng
        kind = _KIND_NAMES[min(len(_KIND_NAMES) - 1, bisect.bisect(_CUM_KINDS, rng.random()))]
        creator = None
        if kind in CREATOR_KINDS:
            creator = rng.choices(range(len(self._creators)), self._creator_weights)[0]
        self._emit_candidate(idx, kind, at_ms, creator)
        self._schedule(at_ms + self._exp_ms(self._candidate_rate), _CANDIDATE, idx)

    def _emit_candidate(self, idx: int, kind: str, created: int, creator: int | None) -> None:
        rng, user = self._rng, self._users[idx]
        ttl = LOGIN_CODE_TTL_MS if kind == "login_code" else KINDS[kind][2]
        candidate_id = self._next_id("c")
        message: dict[str, Any] = {
            "candidate_id": candidate_id, "user_id": user.user_id, "kind": kind,
            "content_id": self._next_id("x"), "created_at_ms": created,
            "expires_at_ms": created + ttl, "critical": kind in CRITICAL,
            "title": kind.replace("_", " ")}
        if creator is not None:
            message["creator_id"] = f"k{creator:05d}"
        arrival = created
        if kind not in CRITICAL and rng.random() < self._late_share:
            arrival += int(math.exp(rng.uniform(math.log(60_000), math.log(3 * HOUR_MS))))
            self.stats["late"] += 1
        self._candidates[candidate_id] = message
        self._schedule(arrival, _EMIT, idx, {**message, "arrived_at_ms": arrival})
        if rng.random() < self._resend_share:
            again = arrival + rng.randint(60_000, 45 * 60_000)
            self.stats["resent"] += 1
            self._schedule(again, _EMIT, idx, {**message, "arrived_at_ms": again})

    # ------------------------------------------------------------------ outcomes
    def _p_open(self, user: WorldUser, kind: str, creator_id: str | None, created: int,
                at_ms: int, taste: bool = True) -> float:
        seg = user.segment
        item = self._kinds.get(kind, self._kinds["trending"])
        if creator_id is not None and creator_id.startswith("k") and creator_id[1:].isdigit():
            creator = self._creators[int(creator_id[1:]) % len(self._creators)]
            item = tuple(a + b for a, b in zip(item, creator, strict=True))
        if kind == "login_code":
            return sigmoid(2.0 + math.log(seg.activity(local_hour(user.zone_at(at_ms), at_ms))))
        half_life = KINDS.get(kind, KINDS["trending"])[1]
        freshness = 0.5 ** (max(0, at_ms - created) / (half_life * HOUR_MS))
        fatigue = sum(0.5 ** ((at_ms - t) / (seg.fatigue_half_life_h * HOUR_MS))
                      for t in user.pushes if t <= at_ms)
        open_curve = seg.activity(local_hour(user.zone_at(at_ms), at_ms))
        return sigmoid(seg.base_logit + (1.2 * _dot(user.taste, item) if taste else 0.0)
                       + 1.5 * math.log(open_curve) + 1.5 * math.log(0.05 + freshness)
                       - 0.6 * fatigue)

    def _outcome(self, idx: int, intent: Mapping[str, Any], intent_id: str, send_at: int) -> None:
        user, rng = self._users[idx], random.Random(f"segments/{self._seed}/{intent_id}")
        # An intent names its candidate; the world remembers what it sent under that id.
        candidate = self._candidates.get(str(intent.get("candidate_id")))
        p_open = 0.0 if candidate is None else self.candidate_p_open(candidate, send_at)
        user.pushes = [t for t in user.pushes if t >= send_at - 3 * DAY_MS]
        user.pushes.append(send_at)
        delivered = max(send_at, self._now) + rng.randint(500, 2_000)
        self.stats["delivered"] += 1
        self._feedback(user, idx, "push_delivered", delivered, intent_id)
        if rng.random() < p_open:
            user.ignored_in_a_row = 0
            opened = delivered + rng.randint(10_000, 900_000)
            self.stats["opens"] += 1
            self._feedback(user, idx, "push_opened", opened, intent_id)
            self._schedule(opened + 1_000, _EMIT, idx, self._event(
                user, "app_open", opened + 1_000, event_id=f"{intent_id}:app_open"))
            return
        user.ignored_in_a_row += 1
        seg = user.segment
        hazard = min(0.5, seg.disable_base * seg.disable_growth ** (user.ignored_in_a_row - 1))
        if rng.random() < hazard:
            user.disabled_at = delivered + rng.randint(30_000, 1_800_000)
            self.stats["disables"] += 1
            self._feedback(user, idx, "push_disabled", user.disabled_at, intent_id)
        elif rng.random() < 0.4:
            self._feedback(user, idx, "push_dismissed", delivered + rng.randint(5_000, HOUR_MS),
                           intent_id)

    def _feedback(self, user: WorldUser, idx: int, kind: str, at_ms: int, intent_id: str) -> None:
        self._schedule(at_ms, _EMIT, idx, self._event(user, kind, at_ms, intent_id,
                                                      f"{intent_id}:{kind}"))


