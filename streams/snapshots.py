"""Model snapshots on a compacted topic: the trainer publishes, every worker follows.

The follower is a plain confluent-kafka consumer outside the consumer group (every worker
must see every snapshot), assigned to the single partition of ``model-snapshots`` from the
beginning; it keeps the newest compatible model. Incompatible snapshots are refused with a
log line and a counter, never unpickled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streams.errors import SnapshotError
from streams.logs import client_logging
from streams.model import PushModel, snapshot_header

log = logging.getLogger(__name__)


class ModelHolder:
    """The model a worker scores with; swapped atomically when a newer snapshot arrives."""

    def __init__(self, fresh: PushModel) -> None:
        self.serving = fresh
        self.published_at_ms: int | None = None
        # Offset in the training-examples topic up to which ``serving`` has learned, and the
        # newest source position learned per input partition (re-emitted examples are older).
        self.training_offset = 0
        self.learned_upto: dict[str, list[int]] = {}
        self.refused = 0
        self._lock = threading.Lock()

    def offer(
        self,
        model: PushModel,
        published_at_ms: int,
        training_offset: int = 0,
        learned_upto: Mapping[str, list[int]] | None = None,
    ) -> bool:
        """Serve ``model`` if it is newer than the current one; True if it was taken."""
        with self._lock:
            if model.version <= self.serving.version and self.published_at_ms is not None:
                return False
            self.serving = model
            self.published_at_ms = published_at_ms
            self.training_offset = training_offset
            self.learned_upto = dict(learned_upto or {})
            return True

    def offer_bytes(self, raw: bytes, published_at_ms: int) -> bool:
        try:
            header = snapshot_header(raw)
            if int(header.get("version", -1)) <= self.serving.version:
                return False
            offset = int(header.get("training_offset", 0))
            learned_upto = header.get("learned_upto") or {}
            model = PushModel.from_snapshot(raw)
            return self.offer(model, published_at_ms, offset, learned_upto)
        except SnapshotError as exc:
            self.refused += 1
            log.error("refused model snapshot: %s", exc)
            return False


class SnapshotFollower:
    """Tails the snapshot topic in a daemon thread and offers each snapshot to a holder.

    Parameters
    ----------
    client_config
        confluent-kafka configuration (bootstrap servers and security).
    topic
        The snapshot topic (one partition).
    holder
        Receives every snapshot read.
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
        self._consumer = Consumer(
            client_logging({
                **client_config,
                "group.id": "pushflow-snapshot-follower",  # never commits; assign() only
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.message.max.bytes": 64 * 1024 * 1024,
            })
        )
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self._holder = holder
        self._on_swap = on_swap
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def catch_up(self, timeout: float) -> None:
        """Read until the end of the topic (or the timeout): a cold start serves the newest."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._poll_once(0.5) == "eof":
                return
        log.warning("snapshot topic not read to its end within %.0fs", timeout)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="snapshot-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll_once(0.5)

    def _poll_once(self, timeout: float) -> str | None:
        message = self._consumer.poll(timeout)
        if message is None:
            return None
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                return "eof"
            log.warning("snapshot follower: %s", error)
            return None
        raw = message.value()
        if raw and self._holder.offer_bytes(raw, message.timestamp()[1]):
            log.info("serving model version %d", self._holder.serving.version)
            if self._on_swap is not None:
                self._on_swap(self._holder.serving.version)
        return "message"
