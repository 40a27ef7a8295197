"""A fetch that comes back empty at once waits before the next one to the same broker.

A consumer's fetch asks the broker to hold the request until data arrives or
``fetch_max_wait_ms`` passes (Faust sets 1500 ms), so an idle consumer sends a request or two
a second. A broker that answers an empty fetch at once (noida-db does) turns that into a busy
loop: an idle worker then spends half a core or more sending fetches and decoding empty
answers, and the broker as much answering them. :func:`back_off_empty_fetches` makes
aiokafka's fetcher wait until ``EMPTY_FETCH_BACKOFF_S`` after it sent a request that brought
no records before the next request to that broker goes out. On a broker that holds fetches
(Apache Kafka, tansu) an empty answer takes the full wait and nothing changes; a fetch that
brings records is never delayed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.consumer.fetcher import Fetcher

# At most this many empty fetches a second to one broker; a record that arrives just after
# an empty answer waits at most this long longer.
EMPTY_FETCH_BACKOFF_S = 0.05

ProcFetch = Callable[[Any, Any, Any, Any], Awaitable[bool]]


def backing_off(proc_fetch_request: ProcFetch, backoff_s: float = EMPTY_FETCH_BACKOFF_S,
                clock: Callable[[], float] = time.monotonic) -> ProcFetch:
    """``Fetcher._proc_fetch_request``, but an answer without records that came back within
    ``backoff_s`` keeps the request's broker busy until ``backoff_s`` after it was sent (the
    fetcher sends one request per broker at a time)."""

    async def backed_off(fetcher: Any, assignment: Any, node_id: Any, request: Any) -> bool:
        sent = clock()
        has_records = await proc_fetch_request(fetcher, assignment, node_id, request)
        wait = backoff_s - (clock() - sent)
        if not has_records and wait > 0:
            try:
                await asyncio.sleep(wait)
            except asyncio.CancelledError:  # closed or unassigned meanwhile: as aiokafka does
                return False
        return has_records

    backed_off.__wrapped__ = proc_fetch_request  # type: ignore[attr-defined]
    return backed_off


def back_off_empty_fetches() -> None:
    """Install :func:`backing_off` on aiokafka's fetcher (once)."""
    current = Fetcher._proc_fetch_request
    if not hasattr(current, "__wrapped__"):
        Fetcher._proc_fetch_request = backing_off(current)  # type: ignore[method-assign]
