"""Group membership that survives a commit racing a rebalance.

When an offset commit is answered with ``ILLEGAL_GENERATION`` (the group moved to a new
generation while the commit was in flight), aiokafka forgets its member id and joins again as
a new member. The coordinator still counts the old member id in the group, so the rebalance
waits for that ghost until the rebalance timeout on Apache Kafka, and for ever on brokers that
never evict members (noida-db). The Java client keeps the member id in this case and only
rejoins; :func:`keep_member_id_on_illegal_generation` makes aiokafka do the same. A member id
the coordinator no longer knows is still answered with ``UNKNOWN_MEMBER_ID`` on the rejoin,
and aiokafka then resets it as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import errors
from aiokafka.consumer.group_coordinator import GroupCoordinator

CommitOffsets = Callable[[Any, Any, Any], Awaitable[None]]


def keeping_member_id(do_commit_offsets: CommitOffsets) -> CommitOffsets:
    """``do_commit_offsets``, but an ``IllegalGenerationError`` keeps the member id."""

    async def commit_offsets(coordinator: Any, assignment: Any, offsets: Any) -> None:
        member_id = coordinator.member_id
        try:
            await do_commit_offsets(coordinator, assignment, offsets)
        except errors.IllegalGenerationError:
            # aiokafka reset the generation and the member id and asked to rejoin, with no
            # await in between: give the member id back before anything else runs.
            coordinator.member_id = member_id
            raise

    commit_offsets.__wrapped__ = do_commit_offsets  # type: ignore[attr-defined]
    return commit_offsets


def keep_member_id_on_illegal_generation() -> None:
    """Install :func:`keeping_member_id` on aiokafka's group coordinator (once)."""
    current = GroupCoordinator._do_commit_offsets
    if not hasattr(current, "__wrapped__"):
        GroupCoordinator._do_commit_offsets = keeping_member_id(current)  # type: ignore[method-assign]
