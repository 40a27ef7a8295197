"""Batched ingestion: the records of a fetched batch go to the worker in one call.

Faust hands every record to its agents one at a time: the consumer's drain loop awaits the
conductor's callback for each, which decodes it, puts it on the channel's queue, and the
agent's stream takes it off again and acknowledges it. On the worker's inputs that hand-off
costs more than deciding them. :class:`BatchedConsumer` is Faust's own aiokafka consumer
with one change in that loop (``_drain_messages``): of each batch :meth:`getmany` fetches,
the records of the topics in the app's ``batched_inputs`` are collected and handed to the
``on_batch`` coroutine once, after the whole fetched batch has been read; every other record
(changelogs during recovery, training examples, anything an agent reads) still goes to
Faust's callback, record by record, exactly as before.

Faust still owns the group, the assignment, flow control around rebalances and recovery,
the read offsets it keeps per partition, and the commits: ``on_batch`` acknowledges the
records it was handed (:meth:`BatchedConsumer.ack_all`) once what they did is written, so
Faust commits their offsets as it commits an agent's. One thing moves to the worker: when the
offsets of a batched topic jump, Faust's loop would mark the skipped ones as a gap (done, so
a commit could pass them although they were never applied); here the worker reads them again
and tells Faust of a gap only where the re-read jumps the same way (offsets holding no
records, e.g. transaction markers).

>>> from faust.transport.drivers.aiokafka import Consumer
>>> issubclass(BatchedConsumer, Consumer)
True
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer

OnBatch = Callable[[list[Any]], Awaitable[None]]


class BatchedConsumer(Consumer):
    """Faust's aiokafka consumer, handing the batched topics' records over per fetch."""

    # Faust's service steps log at info: under "faust", which pushflow keeps at warning
    # (streams.logs), not under this module's name.
    logger = logging.getLogger("faust.transport.batched")

    @property
    def batched(self) -> dict[str, OnBatch]:
        """Topic name -> the coroutine its fetched records go to: the app's
        ``batched_inputs`` (set by the worker; none, and this is Faust's consumer)."""
        return cast(dict[str, OnBatch], getattr(self.app, "batched_inputs", None) or {})

    def ack_all(self, messages: Iterable[Any]) -> None:
        """Acknowledge records handed to ``on_batch`` (Faust commits up to the acknowledged)."""
        for message in messages:
            self.ack(message)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's loop
        """Faust's drain loop (``faust.transport.consumer.Consumer._drain_messages``: the
        same read offsets, and gaps for every topic but the batched ones), with the batched
        topics' records of each fetch handed to their coroutine together, in fetch order,
        once the fetch has been read."""
        if not self.batched:
            await super()._drain_messages(fetcher)
            return
        batched = self.batched
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        unacked = cast(set[Any], self._unacked_messages)
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                await self.sleep(0)
                taken: dict[OnBatch, list[Any]] = {}
                if not self.should_stop:
                    async for tp, message in self.getmany(timeout=1.0):
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is not None and offset < r_offset:
                            continue  # read already (Faust drops these too)
                        on_batch = batched.get(tp.topic)
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and on_batch is None \
                                and acks_enabled_for(message.topic):
                            # A batched topic's jump is not a gap yet: the worker reads the
                            # skipped offsets again and says which hold no records.
                            await self._add_gap(tp, r_offset + 1, offset)
                        if self._commit_every is not None and self._n_acked >= self._commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if on_batch is None:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        else:
                            unacked.add(message)  # not acknowledged yet: shutdown waits for it
                            taken.setdefault(on_batch, []).append(message)
                        set_read_offset(tp, offset)
                    self.diag.unset_flag(CONSUMER_FETCHING)
                for on_batch, messages in taken.items():
                    await on_batch(messages)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)
