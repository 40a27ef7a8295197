"""Everything the decision agent writes, through one confluent-kafka producer.

librdkafka batches and sends on its own thread, so the event loop only hands records over;
:meth:`OutputProducer.flush` then waits (without blocking the loop) until the broker has
acknowledged every record handed over so far. The worker flushes before it lets Faust
acknowledge a batch's input offsets, so an offset is never committed ahead of what it caused.

A record the broker refused or that timed out is handed over again by the next flush (and
counted, and logged once per flush): a stalled broker stalls the agent, which stops reading,
so memory stays bounded and nothing is dropped. A record refused as too large (by the client's
own limit or the broker's) would be refused again for ever: it is handed to ``on_too_large``
instead, which returns a smaller record to send in its place (a dead letter) or None.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from streams.logs import client_logging

log = logging.getLogger(__name__)

Record = tuple[str, bytes | None, bytes | None, int | None]  # topic, key, value, partition
POLL_S = 0.002  # how often a flush looks at delivery reports (the event loop stays free)
TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


class OutputProducer:
    """An asynchronous, retrying front of a confluent-kafka Producer.

    Parameters
    ----------
    config
        librdkafka configuration (broker, security, batching).
    on_error
        Called once per failed delivery with the error (e.g. to count it).
    on_too_large
        Called with a record refused as too large and the reason; returns the record to send
        instead (it must be smaller, so this ends), or None to drop it (logged as an error).
    """

    def __init__(
        self,
        config: dict[str, Any],
        on_error: Callable[[Any], None],
        on_too_large: Callable[[Record, str], Record | None] | None = None,
    ) -> None:
        self._producer = Producer(client_logging(config))
        self._on_error = on_error
        self._on_too_large = on_too_large
        self._failed: list[Record] = []

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> None:
        """Hand one record over; ``partition=None`` partitions by key (murmur2)."""
        record: Record | None = (topic, key, value, partition)
        while record is not None:
            try:
                self._send(record)
                return
            except BufferError:  # librdkafka's queue is full: let it drain
                self._producer.poll(0.005)
            except KafkaException as exc:  # over message.max.bytes: refused before sending
                if exc.args[0].code() not in TOO_LARGE:
                    raise
                record = self._too_large(record, exc.args[0])

    def _too_large(self, record: Record, error: Any) -> Record | None:
        self._on_error(error)
        replacement = None if self._on_too_large is None else self._on_too_large(record, str(error))
        if replacement is None:
            topic, key, value, _ = record
            log.error("dropped a record of %d bytes for %s refused as too large: %s",
                      len(key or b"") + len(value or b""), topic, error)
        return replacement

    def _send(self, record: Record) -> None:
        topic, key, value, partition = record
        on_delivery = self._reporter(record)
        if partition is None:
            self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
        else:
            self._producer.produce(
                topic, value=value, key=key, partition=partition, on_delivery=on_delivery
            )

    def _reporter(self, record: Record) -> Callable[[Any, Any], None]:
        def delivered(error: Any, message: Any) -> None:
            if error is None:
                return
            if error.code() in TOO_LARGE:  # the broker's limit: it would refuse it again
                replacement = self._too_large(record, error)
                if replacement is not None:
                    self._failed.append(replacement)
                return
            self._failed.append(record)
            self._on_error(error)

        return delivered

    def poll(self) -> None:
        """Serve delivery reports without waiting."""
        self._producer.poll(0)

    async def flush(self) -> None:
        """Wait until every record handed over so far is acknowledged, resending failures."""
        while True:
            while len(self._producer):
                self._producer.poll(0)
                if len(self._producer):
                    await asyncio.sleep(POLL_S)
            if not self._failed:
                return
            failed, self._failed = self._failed, []
            log.warning("resending %d records the broker did not acknowledge", len(failed))
            for record in failed:
                self.produce(*record)

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is left, within ``timeout_s``."""
        try:
            left = self._producer.flush(timeout_s)
        except KafkaException as exc:  # pragma: no cover - closing on a broken client
            log.error("closing the output producer: %s", exc)
            return
        if left:
            log.error("%d output records were not delivered before shutdown", left)
