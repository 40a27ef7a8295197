"""Group membership that survives a commit racing a rebalance.

When an offset commit is answered with ``ILLEGAL_GENERATION`` (the group moved to a new
generation while the commit was in flight), aiokafka forgets its member id and joins again as
a new member. The coordinator still counts the old member id in the group, so the rebalance
waits for that ghost until the rebalance timeout on Apache Kafka, and for ever on brokers that
never evict members (noida-db). The Java client keeps the member id in this case and only
rejoins; :func:`keep_member_id_on_illegal_generation` makes aiokafka do the same. A member id
the coordinator no longer knows is still answered with ``UNKNOWN_MEMBER_ID`` on the rejoin,
and aiokafka then resets it as before.

Faust, for its part, records the offsets of a commit as committed (and drops them from its
acknowledged offsets) even when the commit failed, e.g. because the group was rebalancing: it
never sends them again, so the group's committed offsets stay behind what was processed until
more input arrives on the partition, and a restarted worker reads it all again and reports it
as lag. :func:`retry_failed_commits` keeps a failed commit's offsets acknowledged and not
committed, so the next commit sends them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import errors
from aiokafka.consumer.group_coordinator import GroupCoordinator
from faust.transport.consumer import Consumer

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


CommitTPs = Callable[..., Awaitable[bool]]


def retrying_failed_commits(commit_offsets: CommitTPs) -> CommitTPs:
    """Faust's ``Consumer._commit_offsets``, but offsets that did not reach the broker stay
    acknowledged and uncommitted for a partition still assigned (its next commit sends them);
    a revoked one is read again by its next owner, as before."""

    async def _commit_offsets(consumer: Any, offsets: Any, *args: Any, **kwargs: Any) -> bool:
        before = {tp: consumer._committed_offset.get(tp) for tp in offsets}
        did_commit = bool(await commit_offsets(consumer, offsets, *args, **kwargs))
        if not did_commit:
            assigned = consumer.assignment()
            for tp, offset in offsets.items():
                if tp in assigned:
                    restore_acked(consumer, tp, before[tp], offset)
        return did_commit

    _commit_offsets.__wrapped__ = commit_offsets  # type: ignore[attr-defined]
    return _commit_offsets


def restore_acked(consumer: Any, tp: Any, committed: int | None, offset: int) -> None:
    """Undo what a failed commit of ``offset`` did to ``tp``: its committed offset is back to
    ``committed`` and every offset it covered (from there, or only its last one when nothing
    was committed, the case in which Faust does not look for a gap) is acknowledged again."""
    if committed is None:
        consumer._committed_offset.pop(tp, None)
    else:
        consumer._committed_offset[tp] = committed
    first = committed if committed else offset - 1
    again = [o for o in range(first, offset) if o not in consumer._acked_index[tp]]
    consumer._acked[tp].extend(again)
    consumer._acked[tp].sort()
    consumer._acked_index[tp].update(again)


def retry_failed_commits() -> None:
    """Install :func:`retrying_failed_commits` on Faust's consumer (once)."""
    current = Consumer._commit_offsets
    if not hasattr(current, "__wrapped__"):
        Consumer._commit_offsets = retrying_failed_commits(current)  # type: ignore[method-assign,assignment]
