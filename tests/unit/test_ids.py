"""Ids that cannot collide: one intent id per (user, candidate id)."""

from __future__ import annotations

from typing import Any

from streams.contracts import Candidate, intent_id_for, validator
from streams.features import MS_HOUR, UserState
from streams.model import PushModel
from streams.pipeline import Decider, DeciderConfig, StepOutput
from streams.policy import PolicyConfig

NOON = 1_781_438_400_000  # 2026-06-14T12:00Z
# no quiet hours, no holdout, no send-time holds: every candidate is decided at once
NOW_CONFIG = DeciderConfig(policy=PolicyConfig(quiet_start_hour=0, quiet_end_hour=0,
                                               holdout_share=0.0, send_time=False))


def candidate(user: str, cid: str, created: int, ttl_h: float = 2, **kw: Any) -> Candidate:
    return Candidate(cid, user, "trending", kw.pop("content_id", f"v-{cid}"), created,
                     created + int(ttl_h * MS_HOUR), **kw)


def valid(out: StepOutput) -> StepOutput:
    for record in out.decisions:
        validator("notification-decision")(record)
    for intent in out.intents:
        validator("notification-intent")(intent)
    return out


# --- one intent id per (user, candidate id) -----------------------------------------------


def test_one_candidate_id_for_two_users_gives_two_intent_ids() -> None:
    decider = Decider(PushModel(), NOW_CONFIG)
    ids = []
    for user in ("alice", "bob"):
        out = valid(decider.on_candidate(UserState(user), candidate(user, "c-1", NOON)))
        [intent] = out.intents
        assert out.decisions[0]["decision_id"] == intent["intent_id"]
        ids.append(intent["intent_id"])
    assert ids[0] != ids[1]
    assert ids == [intent_id_for("alice", "c-1"), intent_id_for("bob", "c-1")]


def test_the_id_encoding_tells_where_the_user_id_ends() -> None:
    assert intent_id_for("a:b", "c") != intent_id_for("a", "b:c")
    assert intent_id_for("1:a", "b") != intent_id_for("1", ":ab")
    assert intent_id_for("ü", "x") != intent_id_for("", "üx")
