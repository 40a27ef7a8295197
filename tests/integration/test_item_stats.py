"""Item statistics across workers on a real broker: each worker decides for its own users'
partitions, and sees what every user did with an item, within seconds."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from streams.demo import WorkerProcess

from .conftest import Deployment
from .test_decision_loop import MINUTE, NOON, activity, feedback

pytestmark = pytest.mark.integration

USERS = [f"items-user-{i}" for i in range(24)]
FRESHNESS_S = 10.0  # docs/item-stats.md states what is measured; this bounds it loosely
ITEM_ENV = {"PUSHFLOW_ITEM_HALF_LIFE_S": str(365 * 24 * 3600)}  # counts stay whole numbers


def candidate(user: str) -> tuple[str, bytes, bytes]:
    at = NOON + 30 * MINUTE
    return ("candidates_topic", user.encode(), json.dumps({
        "candidate_id": f"c-{user}", "user_id": user, "kind": "new_video_from_followed",
        "content_id": "v-shared", "creator_id": "cr-shared", "created_at_ms": at,
        "expires_at_ms": at + 6 * 3_600_000,
    }).encode())


def item(worker: WorkerProcess, key: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{worker.port}/items?key={key}"
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
        return dict(json.loads(response.read()))


def owned_partitions(worker: WorkerProcess) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    return {s.labels["partition"] for family in text_string_to_metric_families(
        worker.metrics_text()) for s in family.samples if s.name == "pushflow_consumer_lag"}


def all_intents(deployment: Deployment, candidates: int) -> list[dict[str, Any]]:
    """The intents, once every candidate has its final decision (sent or not)."""
    def all_final(records: list[dict[str, Any]]) -> bool:
        return len({d["candidate_id"] for d in records if d["final"]}) >= candidates

    decided = deployment.read("decisions_topic", all_final)
    sends = sum(1 for d in decided if d["final"] and d["action"] == "send")
    return deployment.read("intents_topic", lambda r: len(r) >= sends)


def seen_everywhere(workers: list[WorkerProcess], key: str, sends: int, opens: int,
                    timeout: float) -> float:
    """Seconds until every worker shows ``sends`` and ``opens`` for ``key``."""
    start = time.monotonic()
    last: list[dict[str, Any]] = []
    while time.monotonic() - start < timeout:
        last = [item(w, key) for w in workers]
        if all(r.get("known") and round(r["sends"]) == sends and round(r["opens"]) == opens
               for r in last):
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{key}: not {sends} sends and {opens} opens everywhere "
                         f"within {timeout}s: {last}")


def test_two_workers_see_each_others_item_feedback(deployment: Deployment) -> None:
    workers = [deployment.start_worker("w1", **ITEM_ENV), deployment.start_worker("w2", **ITEM_ENV)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # both own input partitions, none twice
        owned = [owned_partitions(w) for w in workers]
        if all(owned) and not owned[0] & owned[1]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the two workers did not split the partitions: {owned}")
    deployment.produce([m for u in USERS for m in (*activity(u, 20), candidate(u))])
    intents = all_intents(deployment, len(USERS))
    sent = {i["intent_id"]: i["user_id"] for i in intents}
    users_sent = set(sent.values())
    assert len(users_sent) >= len(USERS) // 2
    seen_everywhere(workers, "content:v-shared", len(sent), 0, timeout=60)

    opened = sorted(sent)[: len(sent) // 2]
    deployment.produce([feedback(sent[i], i, "push_opened", NOON + 31 * MINUTE) for i in opened])
    took = seen_everywhere(workers, "content:v-shared", len(sent), len(opened),
                           timeout=FRESHNESS_S)
    assert took < FRESHNESS_S
    print(f"item statistics fresh on both workers {took:.2f}s after the opens were produced")
    seen_everywhere(workers, "creator:cr-shared", len(sent), len(opened), timeout=FRESHNESS_S)


def test_item_statistics_survive_a_restart(deployment: Deployment) -> None:
    worker = deployment.start_worker("w1", **ITEM_ENV)
    deployment.produce([m for u in USERS[:6] for m in (*activity(u, 20), candidate(u))])
    intents = all_intents(deployment, 6)
    seen_everywhere([worker], "content:v-shared", len(intents), 0, timeout=30)
    worker.stop()
    again = deployment.start_worker("w2", **ITEM_ENV)
    seen_everywhere([again], "content:v-shared", len(intents), 0, timeout=30)
    first = intents[0]
    deployment.produce([feedback(first["user_id"], first["intent_id"], "push_opened",
                                 NOON + 31 * MINUTE)])
    seen_everywhere([again], "content:v-shared", len(intents), 1, timeout=FRESHNESS_S)
