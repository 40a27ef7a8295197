"""The model outlives its workers: snapshots restore it after kill -9, and every worker in the
group serves the same version shortly after it is published."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable
from typing import Any

import orjson
import pytest

from streams.demo import scrape

from .conftest import Deployment, wait_for_metrics
from .test_decision_loop import NOON, activity, candidate, feedback

pytestmark = pytest.mark.integration
MINUTE = 60_000


def send_and_open(deployment: Deployment, users: list[str], tag: str) -> list[dict]:
    """Candidates for ``users``; every intent is opened. Returns the intents."""
    deployment.produce(
        m for u in users for m in (*activity(u, 3), candidate(u, f"c-{tag}-{u}"))
    )
    wanted = {f"c-{tag}-{u}" for u in users}
    intents = deployment.read(
        "intents_topic", lambda r: wanted <= {i["candidate_id"] for i in r}
    )
    mine = [i for i in intents if i["candidate_id"] in wanted]
    deployment.produce(
        feedback(i["user_id"], i["intent_id"], "push_opened", NOON + 40 * MINUTE) for i in mine
    )
    return mine


def distinct(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` without repeats of one content, in order of first appearance."""
    return list({orjson.dumps(r, option=orjson.OPT_SORT_KEYS): r for r in records}.values())


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)  # noida never evicts a killed member
def test_kill_9_then_restart_scores_with_the_restored_model(deployment: Deployment) -> None:
    first = deployment.start_worker("first", PUSHFLOW_SNAPSHOT_EVERY="1")
    opened = send_and_open(deployment, [f"a{i}" for i in range(6)], "one")
    before = wait_for_metrics(first, lambda f: f.get("version", 0) >= len(opened))
    first.proc.kill()
    first.proc.wait(10)

    second = deployment.start_worker("second", PUSHFLOW_SNAPSHOT_EVERY="1")
    restored = wait_for_metrics(second, lambda f: f.get("version", 0) > 0, timeout=10)
    assert restored["version"] == before["version"]
    deployment.produce([*activity("late", 2), candidate("late", "c-after-restart"),
                        candidate("a0", "c-one-a0")])  # a0's state must be restored too
    decisions = deployment.read(
        "decisions_topic", lambda r: any(d["candidate_id"] == "c-after-restart" for d in r)
    )
    # Outputs are at-least-once: a record may be written twice, but only identically
    # (docs/reliability.md), so decisions are counted by content.
    after_restart = distinct(d for d in decisions if d["candidate_id"] == "c-after-restart")
    assert len(after_restart) == 1, after_restart
    assert after_restart[0]["model_version"] == before["version"]
    # a0's restored state knows c-one-a0 was decided: no second decision, counted as ignored
    wait_for_metrics(second, lambda f: f["ignored"].get("duplicate_candidate") == 1, timeout=30)
    one_a0 = distinct(d for d in decisions if d["candidate_id"] == "c-one-a0")
    assert len(one_a0) == 1, one_a0
    assert "Crashed" not in second.log_path.read_text()


def test_two_workers_serve_the_same_version_and_learn_each_label_once(
    deployment: Deployment,
) -> None:
    workers = [deployment.start_worker(name, PUSHFLOW_SNAPSHOT_EVERY="4") for name in "ab"]
    opened = send_and_open(deployment, [f"u{i}" for i in range(16)], "two")
    figures = [
        wait_for_metrics(w, lambda f: f.get("version", 0) == len(opened), timeout=60)
        for w in workers
    ]
    assert sum(f["learned"] for f in figures) == len(opened)  # one trainer, each label once
    assert sum(f["labeled_examples"] for f in figures) == len(opened)
    # the worker that trains judges champion and challenger on the same labels; the other
    # exports no comparison at all
    trains = [w for w, f in zip(workers, figures, strict=True) if f["learned"]]
    assert len(trains) == 1
    compared = wait_for_metrics(trains[0], lambda f: all(
        m.get("labels") == len(opened) for m in f["compare"].values()) and f["compare"],
        timeout=30)["compare"]
    assert {name: m["role"] for name, m in compared.items()} == {
        "hashed-lr": "champion", "hashed-lr-fast": "challenger"}
    others = [w for w in workers if w is not trains[0]]
    assert all(not scrape(w.metrics_text())["compare"] for w in others)
    # ... but every worker shows the comparison of the newest snapshot on /models
    for worker in workers:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/models", timeout=10) as r:
            page = orjson.loads(r.read())
        assert page["serving"] == "hashed-lr" and page["version"] == len(opened)
        assert set(page["comparison"]) == {"hashed-lr", "hashed-lr-fast"}
