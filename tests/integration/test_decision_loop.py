"""The whole decision loop on a real broker: the worker runs as a subprocess, messages go in
with confluent-kafka, and the assertions read the output topics and /metrics."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

import orjson
import pytest

from streams.contracts import intent_id_for

from .conftest import Deployment, wait_for_metrics

pytestmark = pytest.mark.integration

NOON = 1_780_315_200_000  # 2026-06-01T12:00:00Z: daytime in UTC, outside quiet hours
MINUTE = 60_000
SEND_REASONS = {"above_threshold", "explore", "holdout_send", "critical", "released"}


def activity(user: str, n: int, start: int = NOON) -> list[tuple[str, bytes, bytes]]:
    return [
        ("user_events_topic", user.encode(), orjson.dumps({
            "event_id": f"{user}-a{i}", "user_id": user, "type": "video_view",
            "event_time_ms": start + i * MINUTE, "tz": "UTC",
        }))
        for i in range(n)
    ]


def candidate(user: str, cid: str, at: int = NOON + 30 * MINUTE) -> tuple[str, bytes, bytes]:
    return ("candidates_topic", user.encode(), orjson.dumps({
        "candidate_id": cid, "user_id": user, "kind": "new_video_from_followed",
        "content_id": f"v-{cid}", "created_at_ms": at, "expires_at_ms": at + 6 * 3_600_000,
    }))


def feedback(user: str, intent_id: str, kind: str, at: int) -> tuple[str, bytes, bytes]:
    return ("user_events_topic", user.encode(), orjson.dumps({
        "event_id": f"fb-{intent_id}-{kind}", "user_id": user, "type": kind,
        "event_time_ms": at, "tz": "UTC", "intent_id": intent_id,
    }))


def test_engaged_user_gets_an_intent(deployment: Deployment) -> None:
    deployment.start_worker()
    deployment.produce([*activity("alice", 20), candidate("alice", "c-alice-1")])
    intents = deployment.read("intents_topic", lambda r: len(r) >= 1)
    assert intents[0]["intent_id"] == intent_id_for("alice", "c-alice-1")
    assert intents[0]["user_id"] == "alice" and intents[0]["reason"] in SEND_REASONS
    decisions = deployment.read("decisions_topic", lambda r: any(d["final"] for d in r))
    assert {d["decision_id"] for d in decisions} == {intents[0]["intent_id"]}
    [final] = [d for d in decisions if d["final"]]
    assert final["action"] == "send"
    # The two input topics are merged in event-time order within each list the worker takes
    # (docs/policy.md); when the consumer hands the candidate over in an earlier list than
    # alice's events, her zone is not known yet and the push is held, then released once
    # her first event names it (policy.md, "An unknown zone is taken as quiet hours").
    assert [(d["action"], d["reason"]) for d in decisions if not d["final"]] in (
        [], [("hold", "quiet_hours")])


def test_bad_input_is_dead_lettered_and_later_messages_are_decided(
    deployment: Deployment,
) -> None:
    deployment.start_worker()
    malformed = b'{"user_id": "bob", "type": '
    invalid = orjson.dumps({"event_id": "e1", "user_id": "bob", "type": "video_view",
                            "event_time_ms": "yesterday", "tz": "UTC"})
    deployment.produce([
        ("user_events_topic", b"bob", malformed),
        ("candidates_topic", b"bob", invalid),
        *activity("bob", 5),
        candidate("bob", "c-bob-1"),
    ])
    letters = deployment.read("dead_letters_topic", lambda r: len(r) >= 2)
    by_code = {letter["error_code"]: letter for letter in letters}
    assert set(by_code) == {"invalid_json", "schema_violation"}
    assert base64.b64decode(by_code["invalid_json"]["payload_b64"]) == malformed
    assert by_code["invalid_json"]["source_topic"] == deployment.settings.topic("user_events_topic")
    assert by_code["schema_violation"]["offset"] >= 0
    decisions = deployment.read("decisions_topic", lambda r: len(r) >= 1)
    assert decisions[0]["candidate_id"] == "c-bob-1"


def test_opens_are_learned_and_change_the_model_version(deployment: Deployment) -> None:
    worker = deployment.start_worker(PUSHFLOW_SNAPSHOT_EVERY="1")
    users = [f"user{i}" for i in range(8)]
    deployment.produce([m for u in users for m in (*activity(u, 3), candidate(u, f"c-{u}"))])
    intents = deployment.read("intents_topic", lambda r: len(r) >= len(users))
    opened_at = NOON + 40 * MINUTE
    deployment.produce(
        feedback(i["user_id"], i["intent_id"], "push_opened", opened_at) for i in intents
    )
    figures = wait_for_metrics(
        worker, lambda f: f["learned"] >= len(intents) and f.get("version", 0) >= len(intents)
    )
    assert figures["learned"] == figures["labeled_examples"] == len(intents)
    examples = deployment.read("training_topic", lambda r: len(r) >= len(intents))
    assert {e["outcome"] for e in examples} == {"opened"}
    assert {e["intent_id"] for e in examples} == {i["intent_id"] for i in intents}


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_the_web_server_serves_only_our_pages(deployment: Deployment) -> None:
    """Faust's own pages (cluster topology, table contents, statistics) are not served."""
    base = f"http://127.0.0.1:{deployment.start_worker().port}"
    assert {path: status_of(base + path) for path in ("/metrics", "/healthz", "/readyz")} == {
        "/metrics": 200, "/healthz": 200, "/readyz": 200}
    faust_pages = ["/router/", "/router/topics", "/table/", "/table/user-state/", "/",
                   "/graph/", "/assignment/", "/performance/", "/no/such/page"]
    assert {path: status_of(base + path) for path in faust_pages} == dict.fromkeys(faust_pages, 404)


def _input_batches(text: str) -> tuple[float, float]:
    """(fetches handed over, records in them) from the worker's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    count = total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pushflow_input_batch_records_count":
                count = sample.value
            elif sample.name == "pushflow_input_batch_records_sum":
                total = sample.value
    return count, total


@pytest.mark.parametrize("ingestion", ["batched", "faust"])
def test_both_ingestion_paths_decide_every_candidate(
    deployment: Deployment, ingestion: str
) -> None:
    """Batched ingestion (the default) hands each fetch over at once, and decides what the
    record-by-record path decides: every candidate once, for users whose inputs of both topics
    arrive together."""
    users = [f"u{n:02d}" for n in range(20)]
    messages = [m for u in users for m in activity(u, 15)]
    messages += [candidate(u, f"c-{u}") for u in users]
    deployment.produce(messages)
    worker = deployment.start_worker(PUSHFLOW_INGESTION=ingestion)
    finals = deployment.read(
        "decisions_topic", lambda r: len({d["candidate_id"] for d in r if d["final"]}) >= 20)
    assert {d["candidate_id"] for d in finals if d["final"]} == {f"c-{u}" for u in users}
    count, total = _input_batches(worker.metrics_text())
    if ingestion == "faust":
        assert (count, total) == (0, 0)
    else:  # every input in a handed-over fetch, most fetches of more than one record
        assert total >= len(messages) and count < total
