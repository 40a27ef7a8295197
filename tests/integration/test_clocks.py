"""Time on a real broker: a partition's two input topics are applied in record-time order, a
candidate is decided when it arrived, and the zone the device reported wins."""

from __future__ import annotations

import orjson
import pytest

from streams.contracts import local_time

from .conftest import Deployment

pytestmark = pytest.mark.integration

NOON = 1_780_315_200_000  # 2026-06-01T12:00Z
MINUTE, HOUR = 60_000, 3_600_000
TZ = "Pacific/Auckland"  # NZST, UTC+12 in June: 12:00Z is midnight there
USERS = 24
# Every candidate the policy can score is above the threshold, so only quiet hours (i.e. the
# zone the decision used) decide between "send now" and "hold for the morning".
SCORE_EVERYTHING = {"PUSHFLOW_THRESHOLD": "0", "PUSHFLOW_DISABLE_WEIGHT": "0",
                    "PUSHFLOW_HOLDOUT_SHARE": "0", "PUSHFLOW_EXPLORE_SHARE": "0",
                    "PUSHFLOW_SEND_TIME": "false"}


def zone_event(user: str, at: int) -> tuple[str, bytes, bytes]:
    return ("user_events_topic", user.encode(), orjson.dumps({
        "event_id": f"{user}-open", "user_id": user, "type": "app_open", "event_time_ms": at,
        "tz": TZ,
    }))


def zoneless_candidate(user: str, at: int) -> tuple[str, bytes, bytes]:
    return ("candidates_topic", user.encode(), orjson.dumps({
        "candidate_id": f"{user}-c", "user_id": user, "kind": "comment_reply",
        "content_id": f"v-{user}", "created_at_ms": at, "expires_at_ms": at + 12 * HOUR,
    }))


def test_a_users_event_produced_before_a_candidate_is_applied_before_it(
    deployment: Deployment,
) -> None:
    """Each user opens the app at 23:59 in Auckland (the event names the zone), then a
    candidate without a zone comes at midnight. The candidates are written to the broker
    first, the events after them (stamped a minute earlier, as produced upstream), all
    before the worker starts, so its consumer may hand either topic's fetch over first.
    Applied in record-time order every user's zone is known at the candidate: every push is
    held for 08:00 in Auckland; none goes out at what UTC calls noon."""
    users = [f"traveller-{n}" for n in range(USERS)]
    deployment.produce([zoneless_candidate(user, NOON) for user in users])
    deployment.produce([zone_event(user, NOON - MINUTE) for user in users])
    # A long batch wait: the records of the first fetch are taken as one list, the unit in
    # which the worker merges a partition's topics.
    deployment.start_worker(PUSHFLOW_BATCH_WAIT_S="0.5", **SCORE_EVERYTHING)
    decisions = deployment.read("decisions_topic", lambda r: len(r) >= USERS)
    wrong = {d["candidate_id"]: f"{d['action']}:{d['reason']}" for d in decisions
             if (d["action"], d["reason"]) != ("hold", "quiet_hours")}
    assert not wrong, f"{len(wrong)} of {USERS} decided before their zone was known: {wrong}"
    assert {local_time(d["send_at_ms"], TZ).hour for d in decisions} == {8}
