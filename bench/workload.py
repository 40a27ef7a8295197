"""A fast, seeded mix of pushflow input messages: activity, candidates and push feedback.

:class:`~streams.simulator.Population` models users faithfully but is too slow to pre-load a
few hundred thousand messages in seconds; this generator only has to produce *valid* messages
(``docs/messages.md``) in a realistic mix, keyed by ``user_id``:

- 85% activity (``video_view``, ``like``, ... with small ``props``),
- 10% candidates (6 kinds, ~1% critical, TTL 1-6 h),
- 5% feedback on an earlier candidate of the same user, naming the intent id the worker
  derives from it (``intent_id_for(user_id, candidate_id)``), inside the 1 h attribution window.

Every user is active: 70% of user draws walk a shuffled cycle over all users (so with
``0.95 * 0.7 * events >= users`` each has state), the other 30% are skewed (``u = U * r**1.5``)
towards a few heavy users.

>>> mix = Workload(seed=1, users=1000)
>>> topics = [mix.next_message(1_767_225_600_000 + i)[0] for i in range(2000)]
>>> round(topics.count(USER_EVENTS) / 2000, 1), round(topics.count(CANDIDATES) / 2000, 1)
(0.9, 0.1)
>>> from streams.contracts import parse_candidate, parse_user_event
>>> topic, key, raw = mix.next_message(1_767_225_700_000)
>>> parsed = (parse_user_event if topic == USER_EVENTS else parse_candidate)(raw, key)
>>> parsed.user_id.encode() == key
True
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from streams.contracts import intent_id_for

USER_EVENTS = "user-events"
CANDIDATES = "notification-candidates"
HOUR_MS = 3_600_000
FEEDBACK_WINDOW_MS = 50 * 60_000  # a little inside the worker's 1 h attribution window
CYCLE_SHARE = 0.7

ZONES = {
    "America/Los_Angeles": 8, "America/New_York": 10, "America/Sao_Paulo": 8,
    "Europe/London": 6, "Europe/Berlin": 8, "Africa/Lagos": 5, "Asia/Kolkata": 14,
    "Asia/Jakarta": 8, "Asia/Shanghai": 10, "Asia/Tokyo": 6, "Australia/Sydney": 4,
    "+05:30": 2, "-03:00": 2, "Z": 1,
}
ACTIVITY = {"video_view": 0.70, "app_open": 0.08, "like": 0.10, "search": 0.05,
            "comment": 0.03, "share": 0.02, "follow": 0.02}
KINDS = {"trending": 0.45, "new_video_from_followed": 0.2, "comment_reply": 0.15,
         "friend_joined": 0.1, "live_started": 0.09, "security_alert": 0.01}
FEEDBACK = {"push_delivered": 0.45, "push_opened": 0.2, "push_dismissed": 0.33,
            "push_disabled": 0.015, "uninstall": 0.005}


def _table(weights: Mapping[str, float]) -> tuple[tuple[str, ...], list[float]]:
    return tuple(weights), list(itertools.accumulate(weights.values()))


@dataclass(slots=True)
class _Sent:
    """A candidate that feedback may later name."""

    created_ms: int
    user: int
    candidate_id: str


class Workload:
    """Seeded message generator; call :meth:`next_message` with a non-decreasing event time.

    Parameters
    ----------
    seed
        Same seed and same call sequence give identical messages.
    users
        Number of distinct users (``u0000000`` ...).
    candidate_share, feedback_share
        Shares of candidates and feedback; the rest is activity.
    id_prefix
        Prefix of event and candidate ids, so two phases of one run never collide.
    """

    def __init__(
        self,
        seed: int,
        users: int,
        candidate_share: float = 0.10,
        feedback_share: float = 0.05,
        id_prefix: str = "b",
    ) -> None:
        self.rng = random.Random(seed)
        self.users = users
        self.candidate_share = candidate_share
        self.feedback_cut = candidate_share + feedback_share
        self.id_prefix = id_prefix
        zones, cum = _table(ZONES)
        self.user_ids = [f"u{i:07d}" for i in range(users)]
        self.user_tz = self.rng.choices(zones, cum_weights=cum, k=users)
        self._activity = _table(ACTIVITY)
        self._kinds = _table(KINDS)
        self._feedback = _table(FEEDBACK)
        self._cycle = list(range(users))
        self.rng.shuffle(self._cycle)
        self._next_in_cycle = 0
        self._sent: list[_Sent] = []
        self._serial = 0
        self.last_candidate_id: str | None = None

    def next_message(self, at_ms: int) -> tuple[str, bytes, bytes]:
        """(topic, key, value) of the next message, with event time ``at_ms``."""
        self._serial += 1
        self.last_candidate_id = None
        draw = self.rng.random()
        if draw < self.candidate_share:
            return self._candidate(at_ms)
        if draw < self.feedback_cut:
            feedback = self._feedback_event(at_ms)
            if feedback is not None:
                return feedback
        return self._activity_event(at_ms)

    def _user(self) -> int:
        if self.rng.random() < CYCLE_SHARE:
            self._next_in_cycle = (self._next_in_cycle + 1) % self.users
            return self._cycle[self._next_in_cycle]
        return int(self.users * self.rng.random() ** 1.5)

    def _pick(self, table: tuple[tuple[str, ...], list[float]]) -> str:
        names, cum = table
        return self.rng.choices(names, cum_weights=cum)[0]

    def _event(self, user: int, kind: str, at_ms: int, **extra: object) -> tuple[str, bytes, bytes]:
        uid = self.user_ids[user]
        record = {"event_id": f"{self.id_prefix}e{self._serial}", "user_id": uid, "type": kind,
                  "event_time_ms": at_ms, "tz": self.user_tz[user], **extra}
        return USER_EVENTS, uid.encode(), orjson.dumps(record)

    def _activity_event(self, at_ms: int) -> tuple[str, bytes, bytes]:
        kind = self._pick(self._activity)
        props = {"video_id": f"v{self.rng.randrange(1_000_000)}",
                 "watch_ms": self.rng.randrange(60_000)}
        return self._event(self._user(), kind, at_ms, props=props)

    def _candidate(self, at_ms: int) -> tuple[str, bytes, bytes]:
        user, kind = self._user(), self._pick(self._kinds)
        uid = self.user_ids[user]
        candidate_id = f"{self.id_prefix}c{self._serial}"
        ttl = HOUR_MS if kind == "live_started" else 6 * HOUR_MS
        record = {
            "candidate_id": candidate_id, "user_id": uid, "kind": kind,
            "content_id": f"v{self.rng.randrange(1_000_000)}",
            "creator_id": f"cr{self.rng.randrange(20_000)}", "created_at_ms": at_ms,
            "expires_at_ms": at_ms + ttl, "critical": kind == "security_alert",
            "tz": self.user_tz[user], "title": f"Something new for you ({kind})",
        }
        self._sent.append(_Sent(at_ms, user, candidate_id))
        self.last_candidate_id = candidate_id
        return CANDIDATES, uid.encode(), orjson.dumps(record)

    def _feedback_event(self, at_ms: int) -> tuple[str, bytes, bytes] | None:
        """Feedback on a random recent candidate; None if there is none to talk about."""
        while self._sent:
            index = self.rng.randrange(len(self._sent))
            sent = self._sent[index]
            if at_ms - sent.created_ms > FEEDBACK_WINDOW_MS:
                self._drop(index)
                continue
            kind = self._pick(self._feedback)
            if kind != "push_delivered":  # a terminal outcome: one per intent
                self._drop(index)
            intent_id = intent_id_for(self.user_ids[sent.user], sent.candidate_id)
            extra = {} if kind == "uninstall" else {"intent_id": intent_id}
            return self._event(sent.user, kind, at_ms, **extra)
        return None

    def _drop(self, index: int) -> None:
        """Swap-remove: O(1), order does not matter for a random pick."""
        last = self._sent.pop()
        if index < len(self._sent):
            self._sent[index] = last


def preload_times(start_ms: int, span_ms: int, count: int) -> list[int]:
    """Evenly spread, non-decreasing event times for ``count`` pre-loaded messages."""
    return [start_ms + i * span_ms // max(1, count) for i in range(count)]
