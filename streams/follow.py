"""Reading a whole topic in a daemon thread, outside Faust: what every worker keeps a copy of
(the model snapshots, the item statistics), read from the beginning and never committed.

:class:`TopicFollower` owns the confluent-kafka consumer, the thread and the error handling;
a subclass says what one record does (:meth:`TopicFollower.apply`) and where a problem is
reported (:meth:`TopicFollower.report_problem`). Nothing read can stop the thread: a record
that cannot be applied is the subclass's to refuse, and a client failure is reported and
retried a second later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from streams.logs import client_logging

log = logging.getLogger(__name__)


class TopicFollower:
    """Tails ``partitions`` of ``topic`` from the beginning in a daemon thread.

    Parameters
    ----------
    client_config
        confluent-kafka configuration (bootstrap servers and security).
    topic, partitions
        What is read, every partition from its beginning.
    name
        Names the thread, the consumer group (``pushflow-<name>``, never committed to:
        partitions are assigned, not subscribed) and the log lines.
    batch
        Records taken per poll.
    extra
        More consumer configuration (e.g. a larger fetch for big records).
    """

    def __init__(self, client_config: Mapping[str, str], topic: str, partitions: int,
                 name: str, batch: int = 1000, extra: Mapping[str, object] | None = None,
                 ) -> None:
        self._consumer = Consumer(client_logging({
            **client_config,
            "group.id": f"pushflow-{name}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **(extra or {}),
        }))
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self._name, self._batch = name, batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what a subclass says ---------------------------------------------------------

    def apply(self, message: Message) -> None:
        """One record read (never an error event)."""
        raise NotImplementedError

    def report_problem(self, problem: str | None, detail: str = "") -> None:
        """``follower_error`` (the client failing), ``follower_stopped`` (the thread ended
        without being stopped), or None once a poll succeeds again."""
        raise NotImplementedError

    # --- the thread -------------------------------------------------------------------

    def catch_up(self, timeout: float) -> None:
        """Read until every partition's end (or the timeout): a cold start serves the newest."""
        deadline, ends = time.monotonic() + timeout, set[int]()
        partitions = {tp.partition for tp in self._consumer.assignment()}
        while time.monotonic() < deadline and ends != partitions:
            ends |= self.poll(0.5)
        if ends != partitions:
            log.warning("%s: topic not read to its end within %.0fs", self._name, timeout)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._consumer.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.poll(0.5)
        finally:
            if not self._stop.is_set():
                self.report_problem("follower_stopped")

    def poll(self, timeout: float) -> set[int]:
        """One batch of records, applied in order; the partitions that reached their end in
        it. A failing client is reported (and waited on a second), never raised."""
        try:
            messages = self._consumer.consume(self._batch, timeout)
        except Exception as exc:  # the client itself failing: not ready while it does
            self.report_problem("follower_error", f"{type(exc).__name__}: {exc}")
            self._stop.wait(1.0)
            return set()
        self.report_problem(None)
        ends: set[int] = set()
        for message in messages:
            error = message.error()
            if error is None:
                self.apply(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                ends.add(int(message.partition() or 0))
            else:
                log.warning("%s: %s", self._name, error)
        return ends
