"""Per-user state on event time, and the features the model scores.

One :class:`UserState` record per user holds everything the decision needs: windowed activity
counts, recency, activity and open profiles by local hour, and push history. It is updated by
:func:`observe_activity` and read by :func:`model_features`; it never looks at a wall clock.

Besides the user's own history, the features describe the candidate being scored: its kind,
content and creator identities and their crosses with the user (user x kind, user x creator,
kind x local hour) as hashed one-hot indicators (:func:`hashed`, a bounded space of
:data:`HASH_BUCKETS` names), and the user's decayed affinity for the candidate's creator and
kind (:func:`bump_affinity`).

Windows are bucketed on event time, so they are exact for out-of-order input within the
retention: the 1h window counts 5-minute buckets ``(b(now) - 12, b(now)]``, the 24h window hour
buckets ``(h(now) - 24, h(now)]`` and the 7d window day buckets ``(d(now) - 7, d(now)]``.

>>> s = UserState("u1")
>>> for t in (0, 60_000, 7_200_000):
...     observe_activity(s, t, "UTC")
>>> window_counts(s, 7_200_000)
(1, 3, 3)
"""

from __future__ import annotations

import base64
import hashlib
import math
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from streams.contracts import Candidate, local_hour

MS_5MIN = 300_000
MS_HOUR = 3_600_000
MS_DAY = 86_400_000
WINDOWS = (("1h", MS_5MIN, 12), ("24h", MS_HOUR, 24), ("7d", MS_DAY, 7))
OPEN_PRIOR = (1.0, 9.0)  # Beta prior on open rate: a 10% mean worth 10 pushes
PROFILE_LIMIT = 2000.0  # halve an hour-of-day profile beyond this total so it keeps adapting
RECENT_SENDS_LIMIT = 64
# What the last sends were ([send time, kind, creator]), for the similarity demotion of the
# policy: at most this many, none older than a day
RECENT_SENT_LIMIT = 16
DECIDED_LIMIT = 1024  # candidate ids remembered per user, about 25 bytes of state each
HASH_BUCKETS = 2**18  # hashed indicators ``h=<bucket>``: the model's weights stay bounded
BASE_PRIOR_WEIGHT = 10.0  # a user's open-rate prior, centred on the base rate, worth 10 pushes
#: How an hour-of-day profile is read (:func:`smoothed_hour`): the hour before, the hour, the
#: hour after. ``pushflow evaluate`` measured it against the raw hour (docs/policy.md,
#: "Reading the hour profiles").
HOUR_KERNEL = (0.25, 0.5, 0.25)
AFFINITY_LIMIT = 32  # creators and kinds whose affinity a user keeps (the strongest)
AFFINITY_HALF_LIFE_MS = 7 * MS_DAY
# What one activity event adds to the affinity of the creator it names; a push open adds
# OPEN_AFFINITY to its creator and its kind.
AFFINITY_WEIGHTS = {"video_view": 1.0, "like": 2.0, "comment": 2.0, "share": 3.0, "follow": 4.0}
OPEN_AFFINITY = 3.0


@dataclass(slots=True)
class PendingLabel:
    """A sent push waiting for its outcome, with the exact inputs that scored it."""

    intent_id: str
    candidate_id: str
    kind: str
    decided_at_ms: int
    deadline_ms: int
    p_open: float | None
    p_disable: float | None
    model_version: int
    features: dict[str, float]
    # What was pushed: for the statistics of everyone's feedback on it (streams.item_stats),
    # and an open adds to the user's affinity for the creator. None in records written
    # before they were kept.
    content_id: str | None = None
    creator_id: str | None = None


@dataclass(slots=True)
class UserState:
    """Everything pushflow knows about one user; one record, one changelog entry per write."""

    user_id: str
    tz: str = "UTC"
    tz_reported_ms: int | None = None  # event time of the device report that set ``tz``
    # False for a user the worker knows nothing about yet: ``tz`` is only the default then
    tz_known: bool = True
    partition: int = -1
    watermark_ms: int = 0
    last_active_ms: int | None = None
    buckets: dict[str, dict[int, int]] = field(
        default_factory=lambda: {"1h": {}, "24h": {}, "7d": {}}
    )
    activity_by_hour: list[float] = field(default_factory=lambda: [0.0] * 24)
    opens_by_hour: list[float] = field(default_factory=lambda: [0.0] * 24)
    sent: int = 0
    opened: int = 0
    dismissed: int = 0
    disabled: bool = False
    kind_sent: dict[str, int] = field(default_factory=dict)
    kind_opened: dict[str, int] = field(default_factory=dict)
    # "c:<creator>" / "k:<kind>" -> [affinity, event time it was last decayed to]; at most
    # AFFINITY_LIMIT entries (see bump_affinity)
    affinity: dict[str, list[float]] = field(default_factory=dict)
    recent_sends_ms: list[int] = field(default_factory=list)
    last_send_ms: int | None = None
    recent_content: dict[str, int] = field(default_factory=dict)
    # decided_key(candidate id) -> until when (event time, whole seconds) it counts as decided
    decided_ids: dict[str, int] = field(default_factory=dict)
    pending: dict[str, PendingLabel] = field(default_factory=dict)
    resolved: dict[str, int] = field(default_factory=dict)  # intent id -> when (for a day)
    outbox: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Delivery bookkeeping of the worker (streams.redelivery), not features.
    applied: dict[str, int] = field(default_factory=dict)
    unconfirmed: list[list[Any]] = field(default_factory=list)
    # [send time, kind, creator id or None] of the last RECENT_SENT_LIMIT sends within a day
    # (see recent_sent_like); records written before it existed load with none
    recent_sent: list[list[Any]] = field(default_factory=list)

    def advance(self, at_ms: int) -> None:
        """Move this user's event-time watermark; older input still lands in its bucket.

        Pruning runs when the watermark enters a new 5-minute bucket (the finest window
        grain); every reader also bounds by time, so nothing reads a stale entry.
        """
        if at_ms > self.watermark_ms:
            crossed = at_ms // MS_5MIN != self.watermark_ms // MS_5MIN
            self.watermark_ms = at_ms
            if crossed:
                self._prune()

    def _prune(self) -> None:
        # Runs on most inputs of a sparse user, so it skips the containers that are empty.
        watermark = self.watermark_ms
        for name, width, count in WINDOWS:
            window = self.buckets[name]
            if window:
                oldest = watermark // width - count
                if min(window) <= oldest:  # the longer windows rarely have a bucket to drop
                    for bucket in [b for b in window if b <= oldest]:
                        del window[bucket]
        day_ago = watermark - MS_DAY
        if self.recent_sends_ms:
            self.recent_sends_ms = [t for t in self.recent_sends_ms if t > day_ago]
        if self.recent_content:
            self.recent_content = {c: t for c, t in self.recent_content.items() if t > day_ago}
        if self.recent_sent:
            self.recent_sent = [entry for entry in self.recent_sent if entry[0] > day_ago]
        if self.decided_ids:
            now_s = watermark // 1000
            self.decided_ids = {k: t for k, t in self.decided_ids.items() if t >= now_s}
        if self.resolved:
            self.resolved = {i: t for i, t in self.resolved.items() if t > day_ago}


def report_zone(state: UserState, tz: str, at_ms: int) -> None:
    """The user's device reported zone ``tz`` at event time ``at_ms``: the freshest report
    wins, so an older event read late does not move a traveller back.

    >>> s = UserState("u1")
    >>> report_zone(s, "Asia/Tokyo", 2_000); report_zone(s, "Europe/Berlin", 1_000)
    >>> s.tz, s.tz_reported_ms
    ('Asia/Tokyo', 2000)
    """
    if state.tz_reported_ms is None or at_ms >= state.tz_reported_ms:
        state.tz, state.tz_reported_ms, state.tz_known = tz, at_ms, True


def observe_activity(
    state: UserState, at_ms: int, tz: str, event_type: str | None = None,
    creator_id: str | None = None,
) -> None:
    """Count one activity event at event time ``at_ms`` in the user's windows and profile; an
    event naming a creator adds to the user's affinity for that creator."""
    if creator_id is not None and event_type in AFFINITY_WEIGHTS:
        bump_affinity(state, f"c:{creator_id}", AFFINITY_WEIGHTS[event_type], at_ms)
    report_zone(state, tz, at_ms)
    state.advance(at_ms)
    for name, width, count in WINDOWS:
        bucket = at_ms // width
        if bucket > state.watermark_ms // width - count:
            window = state.buckets[name]
            window[bucket] = window.get(bucket, 0) + 1
    if state.last_active_ms is None or at_ms > state.last_active_ms:
        state.last_active_ms = at_ms
    _bump(state.activity_by_hour, local_hour(at_ms, tz))


def _bump(profile: list[float], hour: int) -> None:
    profile[hour] += 1.0
    if sum(profile) > PROFILE_LIMIT:
        profile[:] = [v / 2 for v in profile]


def window_counts(state: UserState, now_ms: int) -> tuple[int, int, int]:
    """Activity counts in the (1h, 24h, 7d) windows ending at ``now_ms``."""
    counts = []
    for name, width, count in WINDOWS:
        newest = now_ms // width
        oldest, total = newest - count, 0
        for bucket, n in state.buckets[name].items():
            if oldest < bucket <= newest:
                total += n
        counts.append(total)
    return counts[0], counts[1], counts[2]


@lru_cache(maxsize=4096)  # a candidate's key is read twice and written once while it is decided
def decided_key(candidate_id: str) -> str:
    """A short, fixed-size stand-in for a candidate id in the user's state: 64 bits of its
    BLAKE2b digest, base64url (11 characters, where an id may have 128). Two ids of one user
    share a key with probability about n**2 / 2**65 for n remembered ids: negligible.

    >>> decided_key("c-1"), len(decided_key("x" * 128))
    ('dWFHEV5NzHI', 11)
    """
    digest = hashlib.blake2b(candidate_id.encode(), digest_size=8).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def was_decided(state: UserState, candidate_id: str, now_ms: int) -> bool:
    """Whether ``candidate_id`` was decided for this user and is still remembered at ``now_ms``.

    >>> s = UserState("u1")
    >>> remember_decided(s, "c1", until_ms=10_000)
    >>> was_decided(s, "c1", 10_000), was_decided(s, "c1", 11_000), was_decided(s, "c2", 0)
    (True, False, False)
    """
    until_s = state.decided_ids.get(decided_key(candidate_id))
    return until_s is not None and now_ms // 1000 <= until_s


def remember_decided(
    state: UserState, candidate_id: str, until_ms: int, limit: int = DECIDED_LIMIT
) -> None:
    """Remember ``candidate_id`` as decided until ``until_ms`` (rounded up to the second).

    At most ``limit`` ids are kept; past it the one decided first is forgotten first (entries
    keep their insertion order, through the changelog too).

    >>> s = UserState("u1")
    >>> for n in range(3):
    ...     remember_decided(s, f"c{n}", until_ms=1_000, limit=2)
    >>> [was_decided(s, f"c{n}", 0) for n in range(3)]
    [False, True, True]
    """
    key = decided_key(candidate_id)
    state.decided_ids.pop(key, None)  # a re-decided id moves to the newest end
    state.decided_ids[key] = -(-until_ms // 1000)
    while len(state.decided_ids) > limit:
        del state.decided_ids[next(iter(state.decided_ids))]


def record_send(state: UserState, at_ms: int, candidate: Candidate) -> None:
    """Push history after an intent for ``candidate`` goes out at ``at_ms``."""
    state.sent += 1
    state.kind_sent[candidate.kind] = state.kind_sent.get(candidate.kind, 0) + 1
    state.recent_sends_ms = [*state.recent_sends_ms, at_ms][-RECENT_SENDS_LIMIT:]
    state.last_send_ms = at_ms if state.last_send_ms is None else max(state.last_send_ms, at_ms)
    state.recent_content[candidate.content_id] = at_ms
    entry = [at_ms, candidate.kind, candidate.creator_id]
    state.recent_sent = [*state.recent_sent, entry][-RECENT_SENT_LIMIT:]


def recent_sent_like(
    state: UserState, candidate: Candidate, at_ms: int, window_ms: int
) -> tuple[int, int]:
    """Sends in ``(at_ms - window_ms, at_ms]`` of the same creator, and of the same kind, as
    ``candidate`` (from ``UserState.recent_sent``: the last :data:`RECENT_SENT_LIMIT` sends
    within a day, so a window longer than a day counts as one day).

    >>> s = UserState("u1")
    >>> record_send(s, 1_000, Candidate("c1", "u1", "live", "v1", 0, 9, creator_id="ann"))
    >>> record_send(s, 2_000, Candidate("c2", "u1", "live", "v2", 0, 9, creator_id="bob"))
    >>> recent_sent_like(s, Candidate("c3", "u1", "live", "v3", 0, 9, creator_id="ann"),
    ...                  2_500, 1_000)
    (0, 1)
    """
    creator, kind = candidate.creator_id, candidate.kind
    same_creator = same_kind = 0
    for sent_at, sent_kind, sent_creator in state.recent_sent:
        if at_ms - window_ms < sent_at <= at_ms:
            same_creator += creator is not None and sent_creator == creator
            same_kind += sent_kind == kind
    return same_creator, same_kind


def record_open(state: UserState, label: PendingLabel, at_ms: int) -> None:
    state.opened += 1
    state.kind_opened[label.kind] = state.kind_opened.get(label.kind, 0) + 1
    bump_affinity(state, f"k:{label.kind}", OPEN_AFFINITY, at_ms)
    if label.creator_id is not None:
        bump_affinity(state, f"c:{label.creator_id}", OPEN_AFFINITY, at_ms)
    _bump(state.opens_by_hour, local_hour(at_ms, state.tz))


def _decayed(entry: list[float], at_ms: int) -> float:
    value, then = entry
    return value * 0.5 ** (max(0.0, at_ms - then) / AFFINITY_HALF_LIFE_MS)


def affinity(state: UserState, key: str, at_ms: int) -> float:
    """The user's affinity for ``key`` (``c:<creator>`` or ``k:<kind>``) at event time
    ``at_ms``: the weights of the events behind it, halved every 7 days.

    >>> s = UserState("u1")
    >>> bump_affinity(s, "c:alice", 4.0, 0)
    >>> week = AFFINITY_HALF_LIFE_MS
    >>> affinity(s, "c:alice", 0), affinity(s, "c:alice", week), affinity(s, "c:bob", 0)
    (4.0, 2.0, 0.0)
    """
    entry = state.affinity.get(key)
    return 0.0 if entry is None else _decayed(entry, at_ms)


def bump_affinity(
    state: UserState, key: str, weight: float, at_ms: int, limit: int = AFFINITY_LIMIT
) -> None:
    """Add ``weight`` to the user's affinity for ``key`` at event time ``at_ms``.

    At most ``limit`` keys are kept: a new key beyond it evicts the weakest (decayed to
    ``at_ms``), itself included if it is the weakest. An event older than the entry's last
    update is decayed back to it, so the order of events does not change the sum.

    >>> s = UserState("u1")
    >>> for n, key in enumerate(["c:a", "c:b", "c:c"]):
    ...     bump_affinity(s, key, 1.0 + n, 0, limit=2)
    >>> sorted(s.affinity)
    ['c:b', 'c:c']
    """
    entry = state.affinity.get(key)
    if entry is None:
        state.affinity[key] = [weight, float(at_ms)]
        if len(state.affinity) > limit:
            weakest = min(state.affinity, key=lambda k: _decayed(state.affinity[k], at_ms))
            del state.affinity[weakest]
        return
    value, then = entry
    if at_ms >= then:
        entry[0], entry[1] = _decayed(entry, at_ms) + weight, float(at_ms)
    else:
        entry[0] = value + weight * 0.5 ** ((then - at_ms) / AFFINITY_HALF_LIFE_MS)


def hashed(name: str) -> str:
    """The one-hot indicator of ``name`` (e.g. ``"creator:alice"``) in the hashed space:
    ``h=<bucket>``, CRC-32 of its UTF-8 bytes modulo :data:`HASH_BUCKETS`. Stable across
    processes and Python versions (unlike ``hash()``), so features stored with a label and
    weights in a snapshot mean the same thing everywhere.

    >>> hashed("kind:trending")
    'h=3354'
    """
    return f"h={zlib.crc32(name.encode()) % HASH_BUCKETS}"


def candidate_indicators(user_id: str, candidate: Candidate, hour: int) -> dict[str, float]:
    """Hashed one-hot indicators of what is pushed: kind, content, creator, and the crosses
    user x kind, user x creator and kind x local hour (two names sharing a bucket share it)."""
    kind = candidate.kind
    names = [f"kind:{kind}", f"content:{candidate.content_id}", f"user:{user_id}",
             f"user_kind:{user_id}:{kind}", f"kind_hour:{kind}:{hour}"]
    if candidate.creator_id is not None:
        names += [f"creator:{candidate.creator_id}",
                  f"user_creator:{user_id}:{candidate.creator_id}"]
    return {hashed(name): 1.0 for name in names}


def _log_odds(p: float) -> float:
    return math.log(p / (1.0 - p))


def sends_in_last_day(state: UserState, now_ms: int) -> int:
    return sum(1 for t in state.recent_sends_ms if now_ms - MS_DAY < t <= now_ms)


def smoothed_rate(hits: float, trials: float, prior: tuple[float, float] = OPEN_PRIOR) -> float:
    """Posterior mean of a Beta-Binomial rate.

    >>> smoothed_rate(0, 0)
    0.1
    >>> round(smoothed_rate(9, 10), 3)
    0.5
    """
    a, b = prior
    return (hits + a) / (trials + a + b)


def smoothed_hour(profile: list[float], hour: int) -> float:
    """The profile's count at local ``hour`` read with its neighbours: weights
    :data:`HOUR_KERNEL` on the hour before, the hour and the hour after (around midnight
    too). Daily activity curves are smooth, so events in the next hour are evidence about
    this one, and a profile of a few dozen events is much less noisy read this way; the
    smoothed profile has the same total.

    >>> smoothed_hour([4.0] + [0.0] * 23, 23), smoothed_hour([4.0] + [0.0] * 23, 0)
    (1.0, 2.0)
    """
    before, own, after = HOUR_KERNEL
    return before * profile[hour - 1] + own * profile[hour] + after * profile[(hour + 1) % 24]


def hour_affinity(profile: list[float], hour: int) -> float:
    """log of this hour's share of the profile (:func:`smoothed_hour`) relative to a uniform
    day (0 = average)."""
    total = sum(profile)
    return math.log((smoothed_hour(profile, hour) + 1.0) / (total + 24.0) * 24.0)


def _log_hours_since(then_ms: int | None, now_ms: int, never_h: float = 24 * 30) -> float:
    hours = never_h if then_ms is None else max(0.0, (now_ms - then_ms) / MS_HOUR)
    return math.log1p(hours)


# Features that do not move with the clock: a slot later today scores them as they are now.
TIMELESS = ("open_rate", "kind_open_rate", "dismiss_rate", "creator_affinity", "kind_affinity")


def model_features(
    state: UserState, candidate: Candidate, now_ms: int, base_rate: float = 0.1
) -> dict[str, float]:
    """The model's input for ``candidate`` at event time ``now_ms``; a fresh dict each call.

    ``base_rate`` is the open rate of all pushes so far (the model's
    :attr:`~streams.model.PushModel.base_rate`): a user's own open rate is smoothed towards
    it, and ``open_rate`` / ``kind_open_rate`` are log-odds relative to it (0 for a user the
    model has seen nothing of).
    """
    hour = local_hour(now_ms, state.tz)
    act_1h, act_24h, act_7d = window_counts(state, now_ms)
    base = min(max(base_rate, 1e-4), 1 - 1e-4)
    base_logit = _log_odds(base)
    user_prior = (base * BASE_PRIOR_WEIGHT, (1.0 - base) * BASE_PRIOR_WEIGHT)
    user_rate = smoothed_rate(state.opened, state.sent, user_prior)
    kind_prior = (user_rate * 5.0, (1.0 - user_rate) * 5.0)
    kind_rate = smoothed_rate(
        state.kind_opened.get(candidate.kind, 0), state.kind_sent.get(candidate.kind, 0), kind_prior
    )
    creator = candidate.creator_id
    features = {
        "act_1h": math.log1p(act_1h),
        "act_24h": math.log1p(act_24h),
        "act_7d": math.log1p(act_7d),
        "hours_since_active": _log_hours_since(state.last_active_ms, now_ms),
        "hour_activity": hour_affinity(state.activity_by_hour, hour),
        "hour_opens": hour_affinity(state.opens_by_hour, hour),
        "open_rate": _log_odds(user_rate) - base_logit,
        "kind_open_rate": _log_odds(kind_rate) - base_logit,
        "dismiss_rate": smoothed_rate(state.dismissed, state.sent, (1.0, 4.0)),
        "sends_24h": float(sends_in_last_day(state, now_ms)),
        "hours_since_send": _log_hours_since(state.last_send_ms, now_ms),
        "candidate_age_h": math.log1p(max(0, now_ms - candidate.created_at_ms) / MS_HOUR),
        "creator_affinity": 0.0 if creator is None
        else math.log1p(affinity(state, f"c:{creator}", now_ms)),
        "kind_affinity": math.log1p(affinity(state, f"k:{candidate.kind}", now_ms)),
    }
    features.update(candidate_indicators(state.user_id, candidate, hour))
    return features


# --- one changelog record per user ------------------------------------------------------


COMPRESS_OVER = 1024  # bytes of JSON above which a state record is stored deflated


def state_to_bytes(state: UserState) -> bytes:
    """Serialize for the changelog: orjson (int bucket keys become strings), deflated when
    over :data:`COMPRESS_OVER` bytes.

    Most records are a few hundred bytes and stay plain JSON (cheap to write, readable with
    any consumer). The large ones are users holding outputs of an uncommitted input
    (``unconfirmed``) and pending labels with their features, repetitive JSON that zlib level
    1 shrinks about threefold; they are about a tenth of the writes.
    """
    raw = orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS)
    return zlib.compress(raw, 1) if len(raw) > COMPRESS_OVER else raw


def state_from_bytes(raw: bytes) -> UserState:
    """Inverse of :func:`state_to_bytes`; a record starting with ``{`` is plain JSON, anything
    else a zlib stream (whose first byte is 0x78).

    >>> s = UserState("u1")
    >>> observe_activity(s, 1_000, "UTC")
    >>> state_from_bytes(state_to_bytes(s)) == s
    True
    >>> s.recent_content = {f"v{i}": i for i in range(100)}
    >>> packed = state_to_bytes(s)
    >>> packed[:1], state_from_bytes(packed) == s
    (b'x', True)
    """
    if raw[:1] != b"{":
        raw = zlib.decompress(raw)
    obj = orjson.loads(raw)
    if "decided" in obj:  # written before ids were hashed: remembered until their expiry
        obj.setdefault("decided_ids", {})
        for candidate_id, expires_ms in obj.pop("decided").items():
            obj["decided_ids"][decided_key(candidate_id)] = -(-expires_ms // 1000)
    obj["buckets"] = {
        name: {int(b): n for b, n in window.items()} for name, window in obj["buckets"].items()
    }
    obj["pending"] = {k: PendingLabel(**v) for k, v in obj["pending"].items()}
    return UserState(**obj)
