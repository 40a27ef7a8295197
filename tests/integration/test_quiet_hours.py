"""A candidate that arrives in the user's quiet hours is held on a real broker and released as
an intent at the user's local morning, carrying the original decision."""

from __future__ import annotations

import orjson
import pytest

from streams.contracts import intent_id_for, local_time

from .conftest import Deployment
from .test_decision_loop import MINUTE, NOON

pytestmark = pytest.mark.integration
HOUR = 60 * MINUTE
TZ = "Pacific/Noumea"  # UTC+11, no DST: 12:00 UTC is 23:00 local, inside 22:00-08:00


def event(user: str, n: int, at: int) -> tuple[str, bytes, bytes]:
    return ("user_events_topic", user.encode(), orjson.dumps({
        "event_id": f"{user}-q{n}", "user_id": user, "type": "app_open",
        "event_time_ms": at, "tz": TZ,
    }))


def test_a_quiet_hours_candidate_is_held_and_released_in_the_local_morning(
    deployment: Deployment,
) -> None:
    deployment.start_worker(PUSHFLOW_HOLDOUT_SHARE="0")
    candidate = ("candidates_topic", b"night-owl", orjson.dumps({
        "candidate_id": "c-night", "user_id": "night-owl", "kind": "comment_reply",
        "content_id": "v-night", "created_at_ms": NOON, "expires_at_ms": NOON + 12 * HOUR,
        "tz": TZ,
    }))
    deployment.produce([event("night-owl", 0, NOON - 30 * MINUTE), candidate])
    [held] = deployment.read("decisions_topic", lambda r: len(r) >= 1)
    assert (held["action"], held["reason"]) == ("hold", "quiet_hours")
    assert local_time(held["send_at_ms"], TZ).hour == 8

    deployment.produce([event("night-owl", 1, held["send_at_ms"] + MINUTE)])  # morning comes
    [intent] = deployment.read("intents_topic", lambda r: len(r) >= 1)  # the first intent ...
    # ... is the release: nothing went out while the user slept
    assert intent["intent_id"] == intent_id_for("night-owl", "c-night")
    assert intent["reason"] == "released"
    assert local_time(intent["send_at_ms"], TZ).hour == 8
    assert intent["decided_at_ms"] == NOON  # the original decision, sent later
    decisions = deployment.read("decisions_topic", lambda r: len(r) >= 2)
    assert [(d["action"], d["reason"]) for d in decisions] == [
        ("hold", "quiet_hours"), ("send", "released")]
