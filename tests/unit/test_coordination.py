"""A commit answered with ILLEGAL_GENERATION keeps the member id; other errors do not."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import errors
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.group import JoinGroupRequest

from streams.coordination import keep_member_id_on_illegal_generation, keeping_member_id


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
