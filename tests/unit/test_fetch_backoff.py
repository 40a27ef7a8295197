"""An empty fetch answered at once waits out the back-off before the next one; a fetch that
brought records, or that the broker held for long enough, does not."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka.consumer.fetcher import Fetcher

from streams.fetch_backoff import EMPTY_FETCH_BACKOFF_S, back_off_empty_fetches, backing_off


def timed(has_records: bool, answer_after_s: float, backoff_s: float = 0.2) -> float:
    async def fetch(*_: Any) -> bool:
        await asyncio.sleep(answer_after_s)
        return has_records

    wrapped = backing_off(fetch, backoff_s)
    started = time.monotonic()
    assert asyncio.run(wrapped(None, None, 1, None)) is has_records
    return time.monotonic() - started


def test_an_empty_answer_given_at_once_waits_out_the_back_off() -> None:
    assert timed(False, 0.0) >= 0.19


def test_records_are_never_delayed() -> None:
    assert timed(True, 0.0) < 0.1


def test_an_empty_answer_the_broker_held_is_not_delayed_again() -> None:
    assert timed(False, 0.25) < 0.4


def test_a_cancelled_back_off_ends_the_fetch_as_aiokafka_does() -> None:
    async def fetch(*_: Any) -> bool:
        return False

    async def cancel_during_back_off() -> Any:
        task = asyncio.create_task(backing_off(fetch, 10.0)(None, None, 1, None))
        await asyncio.sleep(0.05)
        task.cancel()
        return await task

    assert asyncio.run(cancel_during_back_off()) is False


def test_installed_once_on_aiokafkas_fetcher() -> None:
    back_off_empty_fetches()
    installed = Fetcher._proc_fetch_request
    back_off_empty_fetches()
    assert Fetcher._proc_fetch_request is installed
    assert not hasattr(installed.__wrapped__, "__wrapped__")  # type: ignore[attr-defined]
    assert EMPTY_FETCH_BACKOFF_S <= 0.1  # a record arriving meanwhile waits at most this
