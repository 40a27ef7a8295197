"""Seeded, closed-loop simulator of short-video app users (no Kafka, no wall clock).

The world (sessions, candidates, creator posts) is drawn from one ``random.Random(seed)``
and never depends on which pushes are delivered, except that messages of users who
uninstalled are dropped. The outcome of a push is drawn from a generator seeded by
``(seed, intent_id)``, so two policies replayed on the same seed share their random numbers.
Times are simulated event times in epoch ms. Each user's hidden truth is a :class:`SimUser`
plus a push history (fatigue); :meth:`Population.true_p_open` is the oracle of p_open.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import math
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
USER_EVENTS = "user-events"
CANDIDATES = "notification-candidates"

ZONE_WEIGHTS = {
    "America/Los_Angeles": 8, "America/New_York": 10, "America/Mexico_City": 5,
    "America/Sao_Paulo": 8, "Europe/London": 6, "Europe/Berlin": 8, "Africa/Lagos": 5,
    "Asia/Kolkata": 14, "Asia/Jakarta": 8, "Asia/Shanghai": 10, "Asia/Tokyo": 6,
    "Australia/Sydney": 4,
}
#: Beta(a, b) prior of a user's interest in each candidate kind.
INTEREST_PRIORS = {
    "new_video_from_followed": (3.0, 5.0), "live_started": (2.0, 5.0),
    "comment_reply": (4.0, 3.0), "trending": (1.2, 6.0), "friend_joined": (2.0, 4.0),
    "security_alert": (6.0, 2.0),
}
KINDS = tuple(k for k in INTEREST_PRIORS if k != "security_alert")
USER_KIND_WEIGHTS = {"trending": 0.55, "comment_reply": 0.27, "friend_joined": 0.15,
                     "security_alert": 0.03}
ACTIVITY_WEIGHTS = {"video_view": 0.72, "like": 0.13, "search": 0.06, "comment": 0.03,
                    "share": 0.03, "follow": 0.03}
TTL_MS = {"live_started": HOUR_MS}
DEFAULT_TTL_MS = 6 * HOUR_MS
NIGHT_FLOOR = 0.02
DEFAULT_INTEREST = 0.2
# Hidden p_open = sigmoid(BIAS + W_INTEREST*logit(interest) + W_ACTIVITY*activity
#                         + W_RESPONSIVENESS*responsiveness - W_FATIGUE*fatigue)
BIAS, W_INTEREST, W_ACTIVITY, W_RESPONSIVENESS, W_FATIGUE = -2.4, 1.0, 2.4, 0.8, 0.45
FATIGUE_TAU_MS = 8 * HOUR_MS
DISABLE_FATIGUE, DISABLE_ANNOYANCE, MAX_DISABLE_HAZARD = 0.6, 1.5, 0.5

_ZONES, _CUM_ZONES = tuple(ZONE_WEIGHTS), list(itertools.accumulate(ZONE_WEIGHTS.values()))
_USER_KINDS, _CUM_USER_KINDS = (tuple(USER_KIND_WEIGHTS),
                                list(itertools.accumulate(USER_KIND_WEIGHTS.values())))
_ACTIVITY_TYPES = tuple(ACTIVITY_WEIGHTS)
_CUM_ACTIVITY = list(itertools.accumulate(ACTIVITY_WEIGHTS.values()))[:-1]  # for bisect
_FEEDBACK_COUNTS = {"push_delivered": "delivered", "push_opened": "opens",
                    "push_dismissed": "dismissals", "push_disabled": "disables",
                    "uninstall": "uninstalls"}
_AFTER_PUSH = ("push_delivered", "push_opened", "push_dismissed")
_OFFSET_BUCKET_MS = 15 * 60_000
_EMIT, _SESSION, _USER_CANDIDATE, _POST = 0, 1, 2, 3


def sigmoid(x: float) -> float:
    """Logistic function, safe for large ``|x|``."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def logit(p: float) -> float:
    """Log-odds of ``p``, clipped away from 0 and 1."""
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def local_hour(zone: str, at_ms: int) -> float:
    """Fractional local hour (0 <= h < 24) of ``at_ms`` in the IANA ``zone``."""
    return (at_ms + _utc_offset_ms(zone, at_ms // _OFFSET_BUCKET_MS)) % DAY_MS / HOUR_MS


@functools.lru_cache(maxsize=1 << 16)
def _utc_offset_ms(zone: str, bucket: int) -> int:
    """UTC offset of ``zone`` in a 15-minute bucket (transitions fall on quarter hours)."""
    local = datetime.fromtimestamp(bucket * _OFFSET_BUCKET_MS / 1000, ZoneInfo(zone))
    return int((local.utcoffset() or timedelta()).total_seconds() * 1000)


def _offset_name(zone: str, at_ms: int) -> str:
    minutes = _utc_offset_ms(zone, at_ms // _OFFSET_BUCKET_MS) // 60_000
    sign = "+" if minutes >= 0 else "-"
    return "Z" if minutes == 0 else f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@dataclass(frozen=True)
class SimUser:
    """Hidden truth about one simulated user.

    Parameters
    ----------
    user_id : str
        ``u000123``.
    zone : str
        IANA time zone that drives the daily rhythm.
    tz : str
        What the user's events carry: ``zone``, or for ~10% of users a fixed UTC offset.
    peaks : tuple of (hour, width, height)
        Gaussian bumps of activity in local time (hours).
    session_rate : float
        Sessions per hour at full activity (log-normal across users).
    interest : Mapping[str, float]
        Interest in each candidate kind, in (0, 1) (Beta draws).
    responsiveness : float
        User-level open propensity on the logit scale (standard normal).
    disable_risk : float
        Base hazard of disabling pushes after an unopened push.
    followed : frozenset of str
        Creator ids the user follows.
    """

    user_id: str
    zone: str
    tz: str
    peaks: tuple[tuple[float, float, float], ...]
    session_rate: float
    interest: Mapping[str, float]
    responsiveness: float
    disable_risk: float
    followed: frozenset[str]

    def activity(self, hour: float) -> float:
        """Activity level in [0, 1] at local ``hour`` (near zero at night)."""
        level = NIGHT_FLOOR
        for mu, width, height in self.peaks:
            d = abs(hour - mu) % 24
            level += height * math.exp(-0.5 * (min(d, 24 - d) / width) ** 2)
        return min(1.0, level)

    def activity_at(self, at_ms: int) -> float:
        """Activity level in [0, 1] at epoch ``at_ms``, in the user's local time."""
        return self.activity(local_hour(self.zone, at_ms))


@dataclass
class _UserState:
    pushes: list[tuple[int, float]] = field(default_factory=list)  # (send_at_ms, 1-interest)
    disabled_at: int | None = None
    uninstalled_at: int | None = None


def _draw_user(rng: random.Random, n: int, creators: list[str], popularity: list[float],
               offset_share: float, start_ms: int, session_rate: float) -> SimUser:
    zone = rng.choices(_ZONES, cum_weights=_CUM_ZONES)[0]
    peaks = [(rng.gauss(20.5, 1.0), rng.uniform(1.3, 2.2), 1.0)]
    if rng.random() < 0.5:
        peaks.append((rng.gauss(12.5, 1.0), rng.uniform(1.0, 2.0), rng.uniform(0.3, 0.7)))
    n_followed = 1 + int(rng.expovariate(1 / 7))
    return SimUser(
        user_id=f"u{n:06d}", zone=zone,
        tz=_offset_name(zone, start_ms) if rng.random() < offset_share else zone,
        peaks=tuple(peaks), session_rate=session_rate * rng.lognormvariate(0, 0.6),
        interest=MappingProxyType({k: rng.betavariate(a, b)
                                   for k, (a, b) in INTEREST_PRIORS.items()}),
        responsiveness=rng.gauss(0, 1), disable_risk=0.001 * rng.lognormvariate(0, 0.5),
        followed=frozenset(rng.choices(creators, popularity, k=n_followed)))


def _derived_id(intent_id: str, suffix: str) -> str:
    """Event id of feedback: readable, and independent of the world's id counter."""
    event_id = f"{intent_id}:{suffix}"
    return event_id if len(event_id) <= 128 else str(uuid.uuid5(uuid.NAMESPACE_OID, event_id))


def _log_uniform_ms(rng: random.Random, low_ms: int, high_ms: int) -> int:
    return int(math.exp(rng.uniform(math.log(low_ms), math.log(high_ms))))


class Population:
    """A seeded population of app users that emits events and reacts to pushes.

    Parameters
    ----------
    seed : int
        Seeds everything; same seed and same call sequence give identical output.
    n_users : int
        Number of users (``u000000`` ...).
    start_ms : int
        Simulated epoch ms at which the clock starts.
    sessions_per_hour : float, default 0.6
        Median sessions per hour at the peak of a user's rhythm.
    events_per_session : float, default 6.0
        Mean number of activity events after each ``app_open``.
    candidates_per_day : float, default 5.0
        Per-user candidates (trending, comment_reply, friend_joined, security_alert) per day.
    posts_per_creator_day : float, default 0.6
        Posts per creator per day; each fans out to every follower as a candidate.
    live_share : float, default 0.2
        Share of creator posts that are ``live_started`` (else ``new_video_from_followed``).
    offset_tz_share : float, default 0.1
        Share of users whose events carry a UTC offset rather than an IANA name.
    dismiss_prob : float, default 0.5
        Probability that an unopened, not-disabling push is dismissed (else ignored).
    uninstall_prob : float, default 0.1
        Probability that a user who disables pushes also uninstalls.

    Examples
    --------
    >>> start = 1_767_225_600_000  # 2026-01-01T00:00Z
    >>> pop = Population(seed=7, n_users=50, start_ms=start)
    >>> batch = pop.advance(start + 6 * 3_600_000)
    >>> sorted({topic for topic, _ in batch})
    ['notification-candidates', 'user-events']
    >>> cand = next(m for t, m in batch if t == 'notification-candidates')
    >>> 0.0 < pop.true_p_open(cand['user_id'], cand['kind'], cand['created_at_ms']) < 1.0
    True
    >>> pop.deliver({'intent_id': 'i-1', 'user_id': cand['user_id'], 'kind': cand['kind'],
    ...              'candidate_id': cand['candidate_id'], 'send_at_ms': start + 6 * 3_600_000})
    >>> feedback = [m['type'] for _, m in pop.advance(start + 7 * 3_600_000)
    ...             if m.get('intent_id') == 'i-1']
    >>> feedback[0], pop.stats['delivered']
    ('push_delivered', 1)
    """

    def __init__(self, seed: int, n_users: int, start_ms: int, *,
                 sessions_per_hour: float = 0.6, events_per_session: float = 6.0,
                 candidates_per_day: float = 5.0, posts_per_creator_day: float = 0.6,
                 live_share: float = 0.2, offset_tz_share: float = 0.1,
                 dismiss_prob: float = 0.5, uninstall_prob: float = 0.1) -> None:
        self._seed, self._rng = seed, random.Random(seed)
        self._start = self._now = int(start_ms)
        self._events_per_session, self._live_share = events_per_session, live_share
        self._candidate_rate = candidates_per_day / DAY_MS
        self._post_rate = posts_per_creator_day / DAY_MS
        self._dismiss_prob, self._uninstall_prob = dismiss_prob, uninstall_prob
        self._heap: list[tuple[int, int, int, int, Any]] = []
        self._seq, self._serial = itertools.count(), itertools.count(1)
        self._id_prefix = f"sim{seed}-"
        self._counts = dict.fromkeys(("delivered", "opens", "dismissals", "disables",
                                      "uninstalls", "ignored_intents", "duplicate_intents"), 0)
        self._delivered_ids: set[str] = set()
        self._populate(n_users, offset_tz_share, sessions_per_hour)

    # ----------------------------------------------------------------- public API
    def advance(self, until_ms: int) -> list[tuple[str, dict[str, Any]]]:
        """Move the clock to ``until_ms``; return the messages due in (previous, until_ms].

        Messages are ``(topic, message)`` pairs in event-time order.
        """
        if until_ms < self._now:
            raise ValueError(f"until_ms {until_ms} is before the clock {self._now}")
        out: list[tuple[str, dict[str, Any]]] = []
        heap, handlers = self._heap, {_SESSION: self._on_session,
                                      _USER_CANDIDATE: self._on_user_candidate,
                                      _POST: self._on_post}
        while heap and heap[0][0] <= until_ms:
            at_ms, _, action, idx, payload = heapq.heappop(heap)
            if action != _EMIT:
                handlers[action](idx, at_ms)
            elif self._still_emitted(idx, at_ms, payload):
                out.append((CANDIDATES if "candidate_id" in payload else USER_EVENTS, payload))
        self._now = int(until_ms)
        return out

    def deliver(self, intent: Mapping[str, Any]) -> None:
        """Record that the worker sent ``intent`` (a notification-intent) and draw its outcome.

        Feedback is scheduled from ``max(send_at_ms, clock)`` and returned by later
        :meth:`advance` calls. Intents for unknown or disabled users are ignored, and
        repeated ``intent_id`` values are counted as duplicates.
        """
        idx = self._index.get(str(intent.get("user_id")))
        intent_id = str(intent.get("intent_id"))
        send_at = int(intent.get("send_at_ms") or intent.get("decided_at_ms") or self._now)
        if idx is None:
            self._counts["ignored_intents"] += 1
        elif intent_id in self._delivered_ids:
            self._counts["duplicate_intents"] += 1
        elif (disabled := self._states[idx].disabled_at) is not None and send_at >= disabled:
            self._counts["ignored_intents"] += 1
        else:
            self._delivered_ids.add(intent_id)
            self._draw_outcome(idx, intent_id, str(intent.get("kind")), send_at)

    def true_p_open(self, user_id: str, kind: str, at_ms: int, *, interest: bool = True) -> float:
        """Hidden probability that ``user_id`` opens a ``kind`` push sent at ``at_ms``; with
        ``interest`` false, without the user's own interest in the kind (every user's
        interest taken as the default)."""
        return self._truth(self._index[user_id], kind, at_ms, interest)[0]

    def true_p_disable(self, user_id: str, kind: str, at_ms: int) -> float:
        """Hidden probability that a ``kind`` push sent at ``at_ms`` makes the user disable."""
        return self._truth(self._index[user_id], kind, at_ms)[1]

    def user(self, user_id: str) -> SimUser:
        """The hidden truth about ``user_id`` (raises ``KeyError`` if unknown)."""
        return self._users[self._index[user_id]]

    @property
    def now_ms(self) -> int:
        """The simulated clock: ``start_ms``, then the last ``until_ms`` advanced to."""
        return self._now

    @property
    def user_ids(self) -> list[str]:
        """All user ids, in creation order."""
        return [u.user_id for u in self._users]

    @property
    def stats(self) -> dict[str, float]:
        """Counters of emitted feedback and of intents, plus per-user-per-day rates."""
        days = (self._now - self._start) / DAY_MS
        per_user_day = 1 / (len(self._users) * days) if days > 0 and self._users else 0.0
        return {**self._counts,
                "active_users": len(self._users) - self._counts["uninstalls"],
                "elapsed_days": days,
                "opens_per_user_day": self._counts["opens"] * per_user_day,
                "pushes_per_user_day": self._counts["delivered"] * per_user_day}

    # ------------------------------------------------------------------ the world
    def _schedule(self, at_ms: int, action: int, idx: int, payload: Any = None) -> None:
        heapq.heappush(self._heap, (at_ms, next(self._seq), action, idx, payload))

    def _next_id(self, prefix: str) -> str:
        return f"{self._id_prefix}{prefix}{next(self._serial)}"

    def _exp_ms(self, rate_per_ms: float) -> int:
        return 1 + int(self._rng.expovariate(rate_per_ms))

    def _populate(self, n_users: int, offset_tz_share: float, sessions_per_hour: float) -> None:
        """Draw creators, users and who follows whom; schedule everyone's first events."""
        self._creators = [f"c{n:05d}" for n in range(max(20, n_users // 20))]
        popularity = [1 / (rank + 1) for rank in range(len(self._creators))]  # Zipf
        self._users = [_draw_user(self._rng, n, self._creators, popularity, offset_tz_share,
                                  self._start, sessions_per_hour) for n in range(n_users)]
        self._index = {u.user_id: i for i, u in enumerate(self._users)}
        self._states = [_UserState() for _ in self._users]
        self._followers: dict[str, list[int]] = {c: [] for c in self._creators}
        for i, user in enumerate(self._users):
            for creator in sorted(user.followed):
                self._followers[creator].append(i)
        for i, user in enumerate(self._users):
            self._schedule(self._next_session_ms(user, self._start), _SESSION, i)
            self._schedule(self._start + self._exp_ms(self._candidate_rate), _USER_CANDIDATE, i)
        for c in range(len(self._creators)):
            self._schedule(self._start + self._exp_ms(self._post_rate), _POST, c)

    def _next_session_ms(self, user: SimUser, after_ms: int) -> int:
        """Next session start: a Poisson process thinned by the local-time rhythm."""
        at_ms, rate = after_ms, user.session_rate / HOUR_MS
        while True:
            at_ms += self._exp_ms(rate)
            if self._rng.random() < user.activity_at(at_ms):
                return at_ms

    def _on_session(self, idx: int, at_ms: int) -> None:
        user, rng = self._users[idx], self._rng
        self._schedule(at_ms, _EMIT, idx, self._event(user, "app_open", at_ms,
                                                      {"source": "organic"}))
        for _ in range(int(rng.expovariate(1 / self._events_per_session))):
            at_ms += int(rng.uniform(5_000, 60_000))
            kind = _ACTIVITY_TYPES[bisect.bisect(_CUM_ACTIVITY, rng.random())]
            props = ({"creator_id": self._creators[int(rng.random() * len(self._creators))]}
                     if kind == "follow" else {"video_id": f"v{int(rng.random() * 1e6)}"})
            self._schedule(at_ms, _EMIT, idx, self._event(user, kind, at_ms, props))
        self._schedule(self._next_session_ms(user, at_ms), _SESSION, idx)

    def _on_user_candidate(self, idx: int, at_ms: int) -> None:
        rng = self._rng
        kind = rng.choices(_USER_KINDS, cum_weights=_CUM_USER_KINDS)[0]
        if kind == "friend_joined":
            creator: str | None = self._users[rng.randrange(len(self._users))].user_id
        else:
            creator = None if kind == "security_alert" else rng.choice(self._creators)
        content = self._next_id({"trending": "v", "comment_reply": "m"}.get(kind, "x"))
        self._schedule(at_ms, _EMIT, idx, self._candidate(idx, kind, at_ms, content, creator))
        self._schedule(at_ms + self._exp_ms(self._candidate_rate), _USER_CANDIDATE, idx)

    def _on_post(self, creator_idx: int, at_ms: int) -> None:
        live = self._rng.random() < self._live_share
        kind = "live_started" if live else "new_video_from_followed"
        creator = self._creators[creator_idx]
        content = self._next_id("l" if live else "v")
        for idx in self._followers[creator]:
            created = at_ms + self._rng.randrange(60_000)  # fan-out jitter
            self._schedule(created, _EMIT, idx,
                           self._candidate(idx, kind, created, content, creator))
        self._schedule(at_ms + self._exp_ms(self._post_rate), _POST, creator_idx)

    def _event(self, user: SimUser, kind: str, at_ms: int, props: dict[str, Any] | None,
               event_id: str | None = None, intent_id: str | None = None) -> dict[str, Any]:
        event = {"event_id": event_id or self._next_id("e"), "user_id": user.user_id,
                 "type": kind, "event_time_ms": at_ms, "tz": user.tz}
        if intent_id is not None:
            event["intent_id"] = intent_id
        if props is not None:
            event["props"] = props
        return event

    def _candidate(self, idx: int, kind: str, at_ms: int, content_id: str,
                   creator: str | None) -> dict[str, Any]:
        user = self._users[idx]
        candidate = {"candidate_id": self._next_id("c"), "user_id": user.user_id, "kind": kind,
                     "content_id": content_id, "created_at_ms": at_ms,
                     "expires_at_ms": at_ms + TTL_MS.get(kind, DEFAULT_TTL_MS),
                     "critical": kind == "security_alert", "tz": user.tz,
                     "title": f"{kind.replace('_', ' ')}: {content_id}"}
        if creator is not None:
            candidate["creator_id"] = creator
        return candidate

    def _still_emitted(self, idx: int, at_ms: int, message: dict[str, Any]) -> bool:
        """Drop what an uninstalled user would send and push feedback after disabling."""
        state, kind = self._states[idx], message.get("type")
        if state.disabled_at is None and kind not in _FEEDBACK_COUNTS:
            return True  # the common case
        if kind != "uninstall" and at_ms >= (state.uninstalled_at or math.inf):
            return False
        if kind in _AFTER_PUSH and at_ms > (state.disabled_at or math.inf):
            return False
        if kind in _FEEDBACK_COUNTS:
            self._counts[_FEEDBACK_COUNTS[kind]] += 1
        return True

    # ------------------------------------------------------------------ feedback
    def _load(self, idx: int, at_ms: int) -> tuple[float, float]:
        """(fatigue, annoyance): decayed counts of pushes (and of their irrelevance) in 24h."""
        fatigue = annoyance = 0.0
        for sent_ms, irrelevance in self._states[idx].pushes:
            if at_ms - DAY_MS <= sent_ms < at_ms:
                weight = math.exp((sent_ms - at_ms) / FATIGUE_TAU_MS)
                fatigue += weight
                annoyance += weight * irrelevance
        return fatigue, annoyance

    def _truth(self, idx: int, kind: str, at_ms: int,
               own_interest: bool = True) -> tuple[float, float]:
        """(p_open, p_disable) of a ``kind`` push to user ``idx`` sent at ``at_ms``."""
        user, (fatigue, annoyance) = self._users[idx], self._load(idx, at_ms)
        interest = user.interest.get(kind, DEFAULT_INTEREST) if own_interest else DEFAULT_INTEREST
        p_open = sigmoid(BIAS + W_INTEREST * logit(interest)
                         + W_ACTIVITY * user.activity_at(at_ms)
                         + W_RESPONSIVENESS * user.responsiveness - W_FATIGUE * fatigue)
        hazard = user.disable_risk * (1.5 - interest) * (
            1 + DISABLE_FATIGUE * fatigue + DISABLE_ANNOYANCE * annoyance)
        return p_open, (1 - p_open) * min(hazard, MAX_DISABLE_HAZARD)

    def _draw_outcome(self, idx: int, intent_id: str, kind: str, send_at: int) -> None:
        user, state = self._users[idx], self._states[idx]
        rng = random.Random(f"{self._seed}/{intent_id}")
        p_open, p_disable = self._truth(idx, kind, send_at)
        state.pushes = [p for p in state.pushes if p[0] >= send_at - 2 * DAY_MS]
        state.pushes.append((send_at, 1 - user.interest.get(kind, DEFAULT_INTEREST)))
        delivered = max(send_at, self._now) + rng.randint(500, 2_000)
        self._feedback(idx, "push_delivered", delivered, intent_id)
        u = rng.random()
        if u < p_open:
            opened = delivered + _log_uniform_ms(rng, 10_000, 1_200_000)
            self._feedback(idx, "push_opened", opened, intent_id)
            self._schedule(opened + 1_000, _EMIT, idx, self._event(
                user, "app_open", opened + 1_000, {"source": "push"},
                _derived_id(intent_id, "app_open")))
        elif u < p_open + p_disable:
            self._disable(idx, intent_id, delivered + _log_uniform_ms(rng, 30_000, 1_800_000),
                          rng)
        elif rng.random() < self._dismiss_prob:
            dismissed = delivered + _log_uniform_ms(rng, 5_000, 2 * HOUR_MS)
            self._feedback(idx, "push_dismissed", dismissed, intent_id)

    def _disable(self, idx: int, intent_id: str, at_ms: int, rng: random.Random) -> None:
        state = self._states[idx]
        if state.disabled_at is not None:  # already decided to disable: nothing more happens
            return
        state.disabled_at = at_ms
        self._feedback(idx, "push_disabled", at_ms, intent_id)
        if rng.random() < self._uninstall_prob:
            gone = at_ms + _log_uniform_ms(rng, 60_000, 6 * HOUR_MS)
            state.uninstalled_at = gone
            self._schedule(gone, _EMIT, idx, self._event(
                self._users[idx], "uninstall", gone, None, _derived_id(intent_id, "uninstall")))

    def _feedback(self, idx: int, kind: str, at_ms: int, intent_id: str) -> None:
        self._schedule(at_ms, _EMIT, idx, self._event(
            self._users[idx], kind, at_ms, None, _derived_id(intent_id, kind), intent_id))

