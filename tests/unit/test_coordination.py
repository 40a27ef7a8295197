"""A commit answered with ILLEGAL_GENERATION keeps the member id; other errors do not."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import errors
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.group import JoinGroupRequest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP

from streams.coordination import (
    keep_member_id_on_illegal_generation,
    keeping_member_id,
    retrying_failed_commits,
)


def coordinator(loop: asyncio.AbstractEventLoop) -> GroupCoordinator:
    """Just the membership fields of a real coordinator; reset_generation is aiokafka's."""
    c = GroupCoordinator.__new__(GroupCoordinator)
    c.generation = 7
    c.member_id = "aiokafka-1-abc"
    c._rejoin_needed_fut = loop.create_future()
    return c


def answered_with(error: type[errors.KafkaError]) -> Any:
    """aiokafka's handling of a commit answered with ``error``, as in _do_commit_offsets."""

    async def do_commit(c: GroupCoordinator, assignment: Any, offsets: Any) -> None:
        c.reset_generation()
        raise error("pushflow")

    return do_commit


@pytest.mark.parametrize(("error", "member_id_after"), [
    (errors.IllegalGenerationError, "aiokafka-1-abc"),  # kept: the id may still be valid
    (errors.UnknownMemberIdError, JoinGroupRequest.UNKNOWN_MEMBER_ID),  # forgotten as before
])
def test_a_failed_commit_rejoins_keeping_the_member_id_only_if_it_may_be_valid(
    error: type[errors.KafkaError], member_id_after: str,
) -> None:
    async def run() -> GroupCoordinator:
        c = coordinator(asyncio.get_running_loop())
        with pytest.raises(error):
            await keeping_member_id(answered_with(error))(c, None, {})
        return c

    c = asyncio.run(run())
    assert c.member_id == member_id_after
    assert c._rejoin_needed_fut.done()


def test_installing_twice_wraps_once() -> None:
    original = GroupCoordinator._do_commit_offsets
    try:
        keep_member_id_on_illegal_generation()
        installed = GroupCoordinator._do_commit_offsets
        keep_member_id_on_illegal_generation()
        assert GroupCoordinator._do_commit_offsets is installed
        assert not hasattr(installed.__wrapped__, "__wrapped__")
    finally:
        GroupCoordinator._do_commit_offsets = original  # type: ignore[method-assign]


class FakeFaustConsumer:
    """The fields and collaborators Faust's own commit path uses, around a commit that
    reaches the broker or not; the bookkeeping methods are Faust's own."""

    _new_offset = FaustConsumer._new_offset
    _should_commit = FaustConsumer._should_commit
    _filter_committable_offsets = FaustConsumer._filter_committable_offsets

    def __init__(self, lands: bool) -> None:
        from collections import defaultdict

        from intervaltree import IntervalTree

        self.lands = lands
        self.tp = TP("user-events", 0)
        self._committed_offset: Any = defaultdict(lambda: None)
        self._acked: Any = defaultdict(list)
        self._acked_index: Any = defaultdict(set)
        self._gap: Any = defaultdict(IntervalTree)
        self.in_transaction = False
        self.log = logging.getLogger("fake-consumer")
        self.log.dev = self.log.debug  # type: ignore[attr-defined]
        self.app = SimpleNamespace(
            producer=SimpleNamespace(flush=self._nothing),
            tables=SimpleNamespace(on_commit=lambda offsets: None),
            monitor=SimpleNamespace(on_tp_commit=lambda offsets: None),
        )
        self.sent: list[dict[Any, int]] = []

    async def _nothing(self) -> None:
        return None

    def assignment(self) -> set[Any]:
        return {self.tp}

    async def _commit(self, offsets: dict[Any, int]) -> bool:
        self.sent.append(dict(offsets))
        return self.lands

    def ack(self, *offsets: int) -> None:
        self._acked[self.tp].extend(offsets)
        self._acked_index[self.tp].update(offsets)

    def committable(self) -> dict[Any, int]:
        return self._filter_committable_offsets([self.tp])


def commit(consumer: FakeFaustConsumer) -> bool:
    wrapped = retrying_failed_commits(FaustConsumer._commit_offsets.__wrapped__  # type: ignore[attr-defined]
                                      if hasattr(FaustConsumer._commit_offsets, "__wrapped__")
                                      else FaustConsumer._commit_offsets)
    return asyncio.run(wrapped(consumer, consumer.committable()))


@pytest.mark.parametrize("committed_before", [None, 3])
def test_a_failed_commit_is_sent_again_by_the_next_commit(committed_before: int | None) -> None:
    consumer = FakeFaustConsumer(lands=False)
    if committed_before is not None:
        consumer._committed_offset[consumer.tp] = committed_before
    consumer.ack(*range(committed_before or 0, 10))
    assert commit(consumer) is False
    assert consumer._committed_offset[consumer.tp] == committed_before  # not recorded
    consumer.lands = True
    assert commit(consumer) is True  # no new input: the failed offsets are sent again
    assert consumer.sent[-1] == {consumer.tp: 10}
    assert consumer._committed_offset[consumer.tp] == 10
    consumer.ack(10, 11)
    assert commit(consumer) is True
    assert consumer.sent[-1] == {consumer.tp: 12}


def test_a_commit_that_lands_is_recorded_as_before() -> None:
    consumer = FakeFaustConsumer(lands=True)
    consumer.ack(0, 1, 2)
    assert commit(consumer) is True
    assert consumer._committed_offset[consumer.tp] == 3 and consumer._acked[consumer.tp] == []
