"""Poison pills and junk on internal topics, through a real worker on a real broker.

An input as large as the broker accepts, or a key that large, is dead-lettered once (cut to
fit the worker's producer limit, with its size and sha256) and the worker goes on deciding;
junk on ``training-examples`` is dead-lettered and later labels are still learned; a tick for
2100 on ``event-time-ticks`` expires no one's label; a dead letter the broker refuses as too
large ends as a smaller dead letter, not a commit that retries for ever.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.traffic import producer_config

from .conftest import Deployment
from .test_faults import (
    MINUTE,
    NOON,
    Feed,
    Ledger,
    Tail,
    Traffic,
    _close_clients,  # noqa: F401 - the autouse fixture closing this module's clients too
    candidate,
    event,
    gauge,
    input_counts,
    samples,
    wait_until,
)

pytestmark = pytest.mark.integration

YEAR_2100 = 4_102_444_800_000  # the latest time the tick schema allows


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def later_candidates(traffic: Traffic, tag: str) -> list[tuple[str, bytes, bytes]]:
    return [candidate(traffic.user(i), f"{traffic.user(i)}-{tag}", NOON + 2 * 3_600_000)
            for i in range(traffic.users)]


def letters_from(letters: Tail, topic: str) -> list[dict[str, Any]]:
    return [d for d in letters.records if d["source_topic"] == topic]


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)
def test_an_800_kb_value_and_a_450_kb_key_each_give_one_dead_letter(
    deployment: Deployment,
) -> None:
    worker = deployment.start_worker()
    traffic, feed = Traffic("p", users=8, rounds=1), Feed(deployment)
    feed.send(traffic.messages())
    value = b'{"user_id": "p-u1", "pad": "' + b"x" * 800_000 + b'"}'
    key = b"k" * 450_000
    _, _, body = candidate("p-u2", "p-big-key", NOON + 30 * MINUTE)
    feed.send([("user_events_topic", b"p-u1", value), ("candidates_topic", key, body)])
    poison = {(a.field, a.partition, a.offset): a for a in feed.acked[-2:]}
    after = later_candidates(traffic, "after")
    feed.send(after)
    wanted = traffic.candidate_ids() | {orjson.loads(m[2])["candidate_id"] for m in after}
    decisions = Tail(deployment, "decisions_topic")
    decided = decisions.wait(lambda r: not Ledger(r).lost(wanted), timeout=90)
    letters = Tail(deployment, "dead_letters_topic")
    by_topic = {deployment.settings.topic(f): f for f in ("user_events_topic", "candidates_topic")}
    letters.wait(lambda r: len([d for d in r if (by_topic.get(d["source_topic"]), d["partition"],
                                                 d["offset"]) in poison]) >= 2, timeout=30)
    letters.drain()
    ledger = Ledger(decisions.drain())
    found = [d for d in letters.records
             if (by_topic.get(d["source_topic"]), d["partition"], d["offset"]) in poison]
    big_value = [d for d in found if d["payload_size"] == len(value)]
    big_key = [d for d in found if d["key_size"] == len(key)]
    shown = [(d["error_code"], d["payload_size"], d["key_size"], d["payload_truncated"],
              d["key_truncated"]) for d in found]
    print(f"poison pills: dead letters {shown}, inputs {dict(input_counts(worker))}")
    assert worker.proc.poll() is None, worker.log_tail()
    assert decided, f"not decided: {sorted(Ledger(decisions.records).lost(wanted))[:5]}"
    assert not ledger.repeated(wanted) and not ledger.conflicting()
    assert len(found) == 2 and len(big_value) == 1 and len(big_key) == 1, found
    [v], [k] = big_value, big_key
    assert v["error_code"] == "too_large" and v["payload_truncated"]
    assert v["payload_sha256"] == sha256(value)
    assert value.startswith(base64.b64decode(v["payload_b64"]))
    assert k["error_code"] == "key_mismatch" and k["key_sha256"] == sha256(key)
    assert key.startswith(base64.b64decode(k["key_b64"]))


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)  # noida refuses over ~1 MB
def test_a_3_mb_input_the_broker_takes_is_dead_lettered_cut_and_the_worker_goes_on(
    deployment: Deployment,
) -> None:
    """tansu takes records far beyond Kafka's default 1 MB: whatever the broker takes, the
    worker reads, dead-letters within its own limit, and goes past."""
    worker = deployment.start_worker()
    value = b"[" * 3_000_000
    big = Producer({**producer_config(deployment.settings), "message.max.bytes": 10_000_000})
    big.produce(deployment.settings.topic("user_events_topic"), key=b"b-u1", value=value)
    assert big.flush(30) == 0
    traffic = Traffic("b", users=8, rounds=1)
    Feed(deployment).send(traffic.messages())
    decisions = Tail(deployment, "decisions_topic")
    decided = decisions.wait(lambda r: not Ledger(r).lost(traffic.candidate_ids()), timeout=90)
    letters = Tail(deployment, "dead_letters_topic")
    letters.wait(lambda r: any(d["payload_size"] == len(value) for d in r), timeout=30)
    [letter] = [d for d in letters.drain() if d["payload_size"] == len(value)]
    assert worker.proc.poll() is None, worker.log_tail()
    assert decided, "the worker stopped deciding"
    assert letter["error_code"] == "too_large" and letter["payload_truncated"]
    assert letter["payload_sha256"] == sha256(value)


TRAINING_JUNK = [
    b"\x00\xff not json",
    b'{"features": {"x": NaN}}',
    b"[]",
    b'{"intent_id": "nope", "label": "yes"}',
    b'{"pad": "' + b"y" * 800_000 + b'"}',
]


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)
def test_junk_on_training_examples_is_dead_lettered_and_later_labels_are_learned(
    deployment: Deployment,
) -> None:
    worker = deployment.start_worker()
    feed = Feed(deployment)
    feed.send(("training_topic", b"junk", raw) for raw in TRAINING_JUNK)
    traffic = Traffic("j", users=16, rounds=3)  # half the day users open their first push
    feed.send(traffic.messages())
    training = Tail(deployment, "training_topic")
    training.wait(lambda r: any("source" in e for e in r), timeout=60)
    topic = deployment.settings.topic("training_topic")
    letters = Tail(deployment, "dead_letters_topic")
    found = letters.wait(lambda r: len(letters_from(letters, topic)) >= len(TRAINING_JUNK), 60)
    examples = [e for e in training.drain() if "source" in e]
    learned = lambda: gauge(worker, "pushflow_model_examples_learned_total")  # noqa: E731
    wait_until(lambda: learned() >= len(examples), 60,
               f"the {len(examples)} labels the worker wrote are learned (learned {learned()})")
    codes = sorted(d["error_code"] for d in letters_from(letters, topic))
    print(f"training junk: dead letters {codes}, {len(examples)} labels, learned {learned()}")
    assert worker.proc.poll() is None, worker.log_tail()
    assert found and len(codes) == len(TRAINING_JUNK), codes
    assert set(codes) == {"invalid_json", "not_an_object", "schema_violation"}
    [huge] = [d for d in letters_from(letters, topic) if d["payload_size"] > 800_000]
    assert huge["payload_truncated"] and huge["payload_sha256"] == sha256(TRAINING_JUNK[-1])


def tick_offsets(deployment: Deployment, group: str | None = None) -> dict[int, int]:
    """The worker group's committed offsets on the ticks topic (or its ends, group None)."""
    settings = deployment.settings
    topic = settings.topic("ticks_topic")
    consumer = Consumer({**settings.confluent_config(), "group.id": group or "tick-ends",
                         "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        if group is None:
            return {p: consumer.get_watermark_offsets(tp, timeout=20)[1]
                    for p, tp in enumerate(parts)}
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=20)}
    finally:
        consumer.close()


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)
def test_a_tick_for_2100_expires_nothing(deployment: Deployment) -> None:
    # Each candidate comes a minute after its user's event: with active_now_s on it is held
    # to the end of that window, which nothing in this one-round stream reaches.
    worker = deployment.start_worker(PUSHFLOW_ACTIVE_NOW_S="0")
    traffic, feed = Traffic("q", users=16, rounds=1), Feed(deployment)
    feed.send(traffic.messages())
    decisions, intents = Tail(deployment, "decisions_topic"), Tail(deployment, "intents_topic")
    decisions.wait(lambda r: not Ledger(r).lost(traffic.candidate_ids()), timeout=60)
    day = {traffic.user(i) for i in traffic.day_users}
    sent = [i for i in intents.drain() if i["user_id"] in day]
    assert sent, "no push was sent to open"
    settings = deployment.settings
    forger = Producer(producer_config(settings))
    forged: dict[int, int] = {}

    def delivered(error: Any, message: Any) -> None:
        assert error is None, error
        forged[message.partition()] = message.offset()

    for partition in range(settings.partitions):
        forger.produce(settings.topic("ticks_topic"), value=orjson.dumps({"now_ms": YEAR_2100}),
                       partition=partition, on_delivery=delivered)
    assert forger.flush(30) == 0 and len(forged) == settings.partitions
    wait_until(lambda: all(offset > forged[p]
                           for p, offset in tick_offsets(deployment, settings.app_id).items()),
               60, "the worker has read and committed the forged ticks")
    feed.send(event(i["user_id"], "open", i["send_at_ms"] + 5 * MINUTE, kind="push_opened",
                    intent_id=i["intent_id"]) for i in sent)
    training = Tail(deployment, "training_topic")
    training.wait(lambda r: {i["intent_id"] for i in sent} <= {e["intent_id"] for e in r}, 60)
    outcomes = {e["intent_id"]: e["outcome"] for e in training.drain()}
    refused = sum(v for labels, v in samples(worker, "pushflow_ignored_messages_total")
                  if labels.get("reason") == "tick_ahead")
    print(f"tick for 2100: labels {outcomes}, ticks refused {refused}")
    assert {i["intent_id"]: outcomes.get(i["intent_id"]) for i in sent} == {
        i["intent_id"]: "opened" for i in sent}
    assert refused >= settings.partitions


@pytest.mark.parametrize("broker", ["noida"], indirect=True)  # refuses records over ~1 MB
def test_a_dead_letter_the_broker_refuses_ends_as_a_smaller_one(deployment: Deployment) -> None:
    """The worker may write 3 MB, the broker takes 1 MB: the whole dead letter of a 1 MB
    input is refused; a dead letter of it, cut to half, takes its place, and the commit
    that waited for it goes through."""
    worker = deployment.start_worker(PUSHFLOW_MAX_OUTPUT_BYTES="3000000")
    traffic, feed = Traffic("n", users=8, rounds=1), Feed(deployment)
    value = b"{" * 990_000  # under both the broker's and the test producer's limit
    feed.send([("user_events_topic", b"n-u1", value)])
    [pill] = feed.acked
    feed.send(traffic.messages())
    decisions = Tail(deployment, "decisions_topic")
    decided = decisions.wait(lambda r: not Ledger(r).lost(traffic.candidate_ids()), timeout=90)
    letters = Tail(deployment, "dead_letters_topic")
    dead_letters = deployment.settings.topic("dead_letters_topic")
    letters.wait(lambda r: any(d["error_code"] == "output_too_large" for d in r), timeout=30)
    refused = [d for d in letters.drain() if d["error_code"] == "output_too_large"]
    print(f"refused dead letter: {[(d['source_topic'], d['payload_size']) for d in refused]}")
    assert worker.proc.poll() is None, worker.log_tail()
    assert decided, "the worker stopped deciding"
    assert len(refused) == 1 and refused[0]["source_topic"] == dead_letters
    wrapped = refused[0]["payload_preview"]
    source = deployment.settings.topic("user_events_topic")
    assert wrapped.startswith(f'{{"source_topic":"{source}","partition":{pill.partition},'
                              f'"offset":{pill.offset},')
