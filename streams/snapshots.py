"""Model snapshots on a compacted topic: the trainer publishes, every worker follows.

The follower is a plain confluent-kafka consumer outside the consumer group (every worker
must see every snapshot), assigned to the single partition of ``model-snapshots`` from the
beginning; it keeps the newest valid model. A snapshot is data (:mod:`streams.snapshot_format`),
signed when a ``snapshot_key`` is set; anything else read there is refused with a counter and
a rate-limited log line, and the follower goes on with the next record.

Only a valid snapshot's version counts: a refused record with a huge version blocks nothing.
A worker says it cannot follow snapshots (not ready, ``pushflow_model_snapshots_ok`` 0) while
the newest record it read was refused or its follower thread stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message

from streams import snapshot_format
from streams.errors import SnapshotError
from streams.follow import TopicFollower
from streams.model import MODEL_FORMAT, PushModel
from streams.settings import Secret
from streams.snapshot_format import MAX_NAME_CHARS

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0  # one log line per refusal reason per minute; the counter has them all


class ModelHolder:
    """The model a worker scores with; swapped atomically when a newer snapshot arrives.

    Parameters
    ----------
    fresh
        Served until a snapshot is taken.
    key
        The ``snapshot_key``: snapshots are signed with it and refused without its signature.
    on_refused
        Called with the reason of every refused snapshot (the metrics counter).
    """

    def __init__(
        self,
        fresh: PushModel,
        key: Secret | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.serving = fresh
        self.published_at_ms: int | None = None
        # Offset in the training-examples topic up to which ``serving`` has learned, and the
        # newest source position learned per input partition (re-emitted examples are older).
        self.training_offset = 0
        self.learned_upto: dict[str, list[int]] = {}
        # The newest snapshot's champion spec (None before one names it) and its challengers'
        # learned states, as read (checked when a trainer restores them, streams.challengers).
        self.serving_name: str | None = None
        self.challenger_states: dict[str, Any] = {}
        self.comparison: dict[str, Any] = {}
        self.refused = 0
        # Why the newest record read was refused, and what stops the follower (see status).
        self.newest_refusal: str | None = None
        self.follower_problem: str | None = None
        self._key = key
        self._on_refused = on_refused
        self._logged_at: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def key(self) -> bytes | None:
        return self._key.get().encode() if self._key else None

    def encode(self, model: PushModel, meta: Mapping[str, object]) -> bytes:
        """``model`` as a snapshot, signed with this worker's key if it has one."""
        return model.to_snapshot(meta, key=self.key)

    def offer(
        self,
        model: PushModel,
        published_at_ms: int,
        training_offset: int = 0,
        learned_upto: Mapping[str, list[int]] | None = None,
        shadows: Shadowed | None = None,
    ) -> bool:
        """Serve ``model`` if it is newer than the current one; True if it was taken.
        ``shadows`` is what the snapshot says about champion and challengers."""
        with self._lock:
            if model.version <= self.serving.version and self.published_at_ms is not None:
                return False
            self.serving = model
            self.published_at_ms = published_at_ms
            self.training_offset = training_offset
            self.learned_upto = dict(learned_upto or {})
            shadows = shadows or Shadowed()
            self.serving_name = shadows.name
            self.challenger_states = dict(shadows.states)
            self.comparison = dict(shadows.comparison)
            return True

    def offer_bytes(self, raw: bytes, published_at_ms: int) -> bool:
        """Read one record of the snapshot topic; never raises for what the record holds."""
        try:
            document = snapshot_format.decode(raw, self.key, MODEL_FORMAT)
            model = PushModel.from_state(document)
            offset, learned_upto = _position(document)
            shadows = _shadowed(document)
        except SnapshotError as exc:
            self.refuse(exc.reason, str(exc))
            return False
        except Exception as exc:  # a bug met on bad data: still one refusal, not a dead thread
            self.refuse("unexpected", f"{type(exc).__name__}: {exc}", exc_info=True)
            return False
        self.newest_refusal = None
        return self.offer(model, published_at_ms, offset, learned_upto, shadows)

    def refuse(self, reason: str, message: str, exc_info: bool = False) -> None:
        """Count and log one refused record: the worker is not ready until a valid one."""
        self.newest_refusal = reason
        self.count(reason, message, exc_info)

    def count(self, reason: str, message: str, exc_info: bool = False) -> None:
        """Count a record or a poll that gave no model; one log line per reason per minute."""
        self.refused += 1
        if self._on_refused is not None:
            self._on_refused(reason)
        now = time.monotonic()
        if now - self._logged_at.get(reason, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged_at[reason] = now
            log.error("refused model snapshot (%s, %d refused so far; one line per minute "
                      "per reason): %s", reason, self.refused, message[:300], exc_info=exc_info)

    @property
    def status(self) -> str:
        """``ok``, ``refused:<reason>`` (the newest record) or the follower's problem."""
        if self.follower_problem is not None:
            return self.follower_problem
        return "ok" if self.newest_refusal is None else f"refused:{self.newest_refusal}"

    @property
    def following(self) -> bool:
        """Whether the newest snapshot record was usable and the follower runs and reads."""
        return self.status == "ok"

    @property
    def newest_refused(self) -> bool:
        return self.newest_refusal is not None


@dataclass(frozen=True, slots=True)
class Shadowed:
    """What a snapshot holds beside its champion: the champion's spec name, the learned
    states of its challengers by spec name, and every model's figures when it was taken."""

    name: str | None = None
    states: Mapping[str, Any] = field(default_factory=dict)
    comparison: Mapping[str, Any] = field(default_factory=dict)


def _shadowed(document: Mapping[str, Any]) -> Shadowed:
    """The champion's name and the challengers of a snapshot (both optional); their shapes are
    checked here, each challenger's values when a trainer restores it."""
    name = document.get("model")
    if name is not None and not (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS):
        raise SnapshotError("snapshot.model is not a model spec name")
    shadows: dict[str, dict[str, Any]] = {}
    for part in ("challengers", "comparison"):
        found = document.get(part, {})
        if not isinstance(found, dict) or not all(
            isinstance(k, str) and len(k) <= MAX_NAME_CHARS and isinstance(v, dict)
            for k, v in found.items()
        ):
            raise SnapshotError(f"snapshot.{part} is not an object of objects by model name")
        shadows[part] = found
    return Shadowed(name, shadows["challengers"], shadows["comparison"])


def _position(document: Mapping[str, Any]) -> tuple[int, dict[str, list[int]]]:
    """Where in the example stream a snapshot's model stands (see streams.training)."""
    fields = snapshot_format.Fields(document)
    offset = fields.count("training_offset") if "training_offset" in document else 0
    upto = fields.object("learned_upto").document if "learned_upto" in document else {}
    learned_upto: dict[str, list[int]] = {}
    for where, position in upto.items():
        if not (isinstance(position, list) and len(position) == 2):
            raise SnapshotError(f"snapshot.learned_upto[{where!r}] is not [offset, index]")
        pair = snapshot_format.Fields({"offset": position[0], "index": position[1]},
                                      f"snapshot.learned_upto[{where!r}]")
        learned_upto[where] = [pair.count("offset"), pair.count("index")]
    return offset, learned_upto


class SnapshotFollower(TopicFollower):
    """Tails the snapshot topic in a daemon thread and offers each snapshot to a holder.

    Parameters
    ----------
    client_config
        confluent-kafka configuration (bootstrap servers and security).
    topic
        The snapshot topic (one partition).
    holder
        Receives every snapshot read; its ``follower_problem`` says when the follower fails.
    on_swap
        Called with the new version after the holder took a snapshot.
    """

    def __init__(
        self,
        client_config: Mapping[str, str],
        topic: str,
        holder: ModelHolder,
        on_swap: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(client_config, topic, 1, "snapshot-follower", batch=1,
                         extra={"fetch.message.max.bytes": 64 * 1024 * 1024})
        self._holder = holder
        self._on_swap = on_swap

    def report_problem(self, problem: str | None, detail: str = "") -> None:
        self._holder.follower_problem = problem
        if problem == "follower_error":
            self._holder.count(problem, detail, exc_info=True)

    def apply(self, message: Message) -> None:
        raw = message.value()
        if raw is None:  # a tombstone: nothing to serve, nothing wrong
            return
        if self._holder.offer_bytes(raw, message.timestamp()[1]):
            log.info("serving model version %d", self._holder.serving.version)
            if self._on_swap is not None:
                self._on_swap(self._holder.serving.version)
