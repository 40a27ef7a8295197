"""No input of any size, and nothing on an internal topic, can crash or stall the worker.

An input as large as the broker accepts (or a key that large) gives a dead letter that fits
the worker's own producer limit, cut when it must be, with the original's size and sha256;
settings that would let a valid input's dead letter exceed that limit stop the worker at
start-up; a record refused as too large becomes a dead letter instead of being sent again
for ever; junk on ``training-examples`` is dead-lettered and learning goes on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streams.config import fresh_model
from streams.contracts import (
    DEAD_LETTER_KEY_BYTES,
    dead_letter,
    dead_letter_key,
    encode,
    validator,
    whole_dead_letter_bytes,
)
from streams.errors import ConfigError, ContractError, KeyMismatch, PayloadTooLarge
from streams.metrics import Metrics
from streams.producer import OutputProducer
from streams.settings import Settings
from streams.snapshots import ModelHolder
from streams.training import Trainer

ROOT = Path(__file__).resolve().parents[2]
LIMIT = Settings().max_output_bytes
BIG_VALUE, BIG_KEY = 800_000, 450_000


def written_size(record: dict[str, Any], key: bytes | None) -> int:
    """What the dead letter takes as a Kafka record: its own key and its value."""
    return len(dead_letter_key(key) or b"") + len(encode(record))


def letter(raw: bytes | None, key: bytes | None, max_bytes: int | None = LIMIT,
           error: ContractError | None = None) -> dict[str, Any]:
    return dead_letter(raw=raw, key=key, source_topic="user-events", partition=3, offset=9001,
                       error=error or PayloadTooLarge("too big"), failed_at_ms=1_780_315_200_000,
                       max_bytes=max_bytes)


def check_describes(record: dict[str, Any], raw: bytes, key: bytes | None) -> None:
    """Size and hash are the whole original's; the base64 holds its first bytes."""
    validator("dead-letter")(orjson.loads(encode(record)))
    kept = base64.b64decode(record["payload_b64"])
    assert raw.startswith(kept) and record["payload_truncated"] == (kept != raw)
    assert record["payload_size"] == len(raw)
    assert record["payload_sha256"] == hashlib.sha256(raw).hexdigest()
    assert record["offset"] == 9001 and record["partition"] == 3
    if key is not None:
        kept_key = base64.b64decode(record["key_b64"])
        assert key.startswith(kept_key) and record["key_truncated"] == (kept_key != key)
        assert record["key_size"] == len(key)
        assert record["key_sha256"] == hashlib.sha256(key).hexdigest()


@pytest.mark.parametrize(("value_size", "key_size"), [
    (BIG_VALUE, 2), (1_048_000, 2), (100, BIG_KEY), (BIG_VALUE, BIG_KEY), (0, 1_048_000),
    (5_000_000, 5_000_000),
])
def test_an_oversized_dead_letter_is_cut_to_fit_and_still_names_the_original(
    value_size: int, key_size: int,
) -> None:
    raw, key = b"\x00\xff" * (value_size // 2), b"k" * key_size
    record = letter(raw, key)
    assert written_size(record, key) <= LIMIT
    check_describes(record, raw, key)
    assert record["payload_truncated"] or record["key_truncated"] or value_size + key_size < LIMIT


def test_a_dead_letter_cuts_neither_while_both_fit() -> None:
    raw, key = b"x" * 60_000, b"u" * 60_000
    record = letter(raw, key)
    assert not (record["payload_truncated"] or record["key_truncated"])
    check_describes(record, raw, key)


def test_a_long_key_gets_half_the_room_when_the_payload_needs_the_rest() -> None:
    raw, key = b"p" * 2_000_000, b"k" * 2_000_000
    record = letter(raw, key)
    kept_raw, kept_key = (len(base64.b64decode(record[f])) for f in ("payload_b64", "key_b64"))
    assert abs(kept_raw - kept_key) <= 3 and kept_raw > 0.3 * LIMIT
    assert written_size(record, key) <= LIMIT


def test_the_dead_letter_of_an_input_within_the_limit_is_whole_and_fits() -> None:
    settings = Settings()
    raw, key = b"\x01" * settings.max_message_bytes, b"k" * 1024  # escapes fill its preview
    error = KeyMismatch("\x01" * 5000)  # a long message of escaped characters
    record = letter(raw, key, whole_dead_letter_bytes(settings.max_message_bytes), error)
    assert not record["payload_truncated"] and not record["key_truncated"]
    assert written_size(record, key) <= whole_dead_letter_bytes(settings.max_message_bytes)


def test_the_dead_letter_key_is_cut_like_its_record() -> None:
    assert dead_letter_key(None) is None
    assert dead_letter_key(b"u1") == b"u1"
    assert dead_letter_key(b"k" * BIG_KEY) == b"k" * DEAD_LETTER_KEY_BYTES


# --- settings: limits from one place, checked at start-up -------------------------------------


def test_producer_limits_derive_from_the_largest_output() -> None:
    settings = Settings(max_output_bytes=2_000_000)
    assert settings.producer_max_bytes > settings.max_output_bytes
    assert whole_dead_letter_bytes(settings.max_message_bytes) <= settings.max_output_bytes


@pytest.mark.parametrize("changes", [
    {"max_message_bytes": 2_000_000},  # its whole dead letter could never be sent
    {"max_message_bytes": 800_000},  # 800 kB fits the broker, its base64 not the producer
    {"max_output_bytes": 50_000},
    {"max_output_bytes": 2_000_000_000},  # more than librdkafka can be told to send
    {"max_message_bytes": 0},
])
def test_contradictory_size_limits_are_config_errors(changes: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        Settings(**changes)


def test_the_worker_refuses_to_start_with_contradictory_limits(tmp_path: Path) -> None:
    env = {**os.environ, "PUSHFLOW_BROKER": "kafka://127.0.0.1:9", "PUSHFLOW_DATA_DIR":
           str(tmp_path), "PUSHFLOW_MAX_MESSAGE_BYTES": "2000000"}
    done = subprocess.run([sys.executable, "-m", "streams", "worker"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2, said
    assert len(said) == 1 and "max_message_bytes=2000000" in said[0], said


# --- a record refused as too large ------------------------------------------------------------


@pytest.fixture
def worker(tmp_path: Path) -> Any:
    from streams.app import PushflowWorker

    settings = Settings.from_env({}, broker="kafka://127.0.0.1:9", data_dir=str(tmp_path))
    return PushflowWorker(settings, registry=CollectorRegistry())


def test_the_worker_dead_letters_a_poison_pill_within_its_producer_limit(worker: Any) -> None:
    from streams.app import Batch

    raw, key = b"{" * BIG_VALUE, b"k" * BIG_KEY
    message = SimpleNamespace(topic="user-events", partition=3, offset=9001, key=key, value=raw)
    batch = Batch(latest_ms=0, started=0.0)
    worker._dead_letter(message, PayloadTooLarge("too big"), batch)
    [(topic_field, own_key, record)] = batch.outputs
    assert topic_field == "dead_letters_topic"
    assert len(own_key or b"") + len(encode(record)) <= worker.settings.max_output_bytes
    check_describes(record, raw, key)


def test_a_refused_record_becomes_a_smaller_dead_letter_until_none_is_left(worker: Any) -> None:
    topic = worker.topic_names["decisions_topic"]
    value = orjson.dumps({"decision_id": "d" * 900_000})
    record: Any = (topic, b"u1", value, None)
    sizes = []
    while record is not None:
        sizes.append(len(record[2]))
        record = worker._refused_as_too_large(record, "Broker: Message size too large")
        if record is not None:
            assert record[0] == worker.topic_names["dead_letters_topic"]
            validator("dead-letter")(orjson.loads(record[2]))
    assert all(later < earlier for earlier, later in zip(sizes, sizes[1:], strict=False))
    assert 2 < len(sizes) < 12


def test_a_record_over_the_producer_limit_is_replaced_not_raised() -> None:
    replaced: list[Any] = []

    def smaller(record: Any, reason: str) -> Any:
        replaced.append((len(record[2]), reason))
        return (record[0], None, b"{}", None)

    producer = OutputProducer({"bootstrap.servers": "127.0.0.1:9", "message.max.bytes": 10_000,
                               "log_level": 0}, lambda error: None, smaller)
    producer.produce("somewhere", b"k", b"x" * 50_000)
    assert [size for size, _ in replaced] == [50_000] and "too large" in replaced[0][1]
    # The replacement waits to be sent: purged, it comes back as the one undelivered record
    # (len(Producer) also counts protocol requests, so it cannot tell).
    producer._producer.purge()
    producer._producer.poll(0)
    assert [record[2] for record in producer._failed] == [b"{}"]


# --- training-examples is validated like an input ---------------------------------------------


def example(n: int) -> dict[str, Any]:
    return {"intent_id": "03f5dbb6-92ff-5c7b-8767-193a414f2e93", "user_id": f"u{n}",
            "features": {"act_1h": 0.5, "kind=live_started": 1.0}, "p_open": 0.2,
            "model_version": 0, "label": 1, "disabled": 0, "outcome": "opened",
            "decided_at_ms": 1_780_315_200_000, "resolved_at_ms": 1_780_315_260_000,
            "source": {"topic": "user-events", "partition": 0, "offset": n, "index": 0}}


JUNK = {
    "not_json": (b"\x00\xff not json", "invalid_json"),
    "nan": (orjson.dumps(example(0)).replace(b"0.5", b"NaN"), "invalid_json"),
    "not_an_object": (b"[1, 2]", "not_an_object"),
    "wrong_schema": (orjson.dumps({**example(0), "label": "yes"}), "schema_violation"),
    "unknown_field": (orjson.dumps({**example(0), "weight": 100}), "schema_violation"),
    "missing_field": (orjson.dumps({k: v for k, v in example(0).items() if k != "features"}),
                      "schema_violation"),
    "huge_feature": (orjson.dumps({**example(0), "features": {"act_1h": 1e300}}),
                     "schema_violation"),
    "many_features": (orjson.dumps({**example(0), "features": {f"f{i}": 1.0
                                                               for i in range(10_000)}}),
                      "schema_violation"),
    "huge": (b'{"pad": "' + b"x" * 2_000_000 + b'"}', "too_large"),
}


@pytest.mark.parametrize("name", sorted(JUNK))
def test_junk_on_the_training_topic_is_refused_and_learning_goes_on(name: str) -> None:
    settings = Settings()
    metrics = Metrics(CollectorRegistry())

    async def publish(snapshot: bytes) -> None:
        pass

    trainer = Trainer(ModelHolder(fresh_model(settings)), metrics, publish, 1000)
    raw, code = JUNK[name]

    async def feed() -> None:
        await trainer.on_example(0, orjson.dumps(example(1)), settings.max_output_bytes)
        with pytest.raises(ContractError) as refused:
            await trainer.on_example(1, raw, settings.max_output_bytes)
        assert refused.value.code == code
        await trainer.on_example(2, orjson.dumps(example(3)), settings.max_output_bytes)

    asyncio.run(feed())
    assert trainer.model is not None and trainer.model.version == 2  # both valid ones learned
    assert trainer.training_offset == 3  # the junk is passed over on a re-read


def test_the_train_agent_dead_letters_junk(worker: Any) -> None:
    junk = SimpleNamespace(topic=worker.settings.topic("training_topic"), partition=0, offset=4,
                           key=b"u1", value=b"not json")
    event = SimpleNamespace(message=junk, value=junk.value)

    class Stream:
        async def events(self) -> Any:
            yield event

    written: list[Any] = []

    async def write(batch: Any) -> None:
        written.extend(batch.outputs)

    worker._write = write
    acknowledged_after: list[int] = []

    async def drive() -> None:
        async for _ in worker._train_agent(Stream()):  # Faust acknowledges at each yield
            acknowledged_after.append(len(written))

    asyncio.run(drive())
    assert acknowledged_after == [1]  # the dead letter was written before the example's ack
    [(topic_field, _, record)] = written
    assert topic_field == "dead_letters_topic" and record["error_code"] == "invalid_json"
    assert record["source_topic"] == junk.topic and record["offset"] == 4


def test_a_refused_snapshot_publish_is_counted_and_learning_goes_on() -> None:
    """The broker refusing a snapshot (too large, timed out) never stops the trainer: the
    labels stay unpublished, the next attempt waits ``retry_after_s``, then succeeds."""
    settings = Settings()
    metrics = Metrics(CollectorRegistry())
    published: list[bytes] = []
    refuse = [True]

    async def publish(snapshot: bytes) -> None:
        if refuse[0]:
            raise RuntimeError("MESSAGE_TOO_LARGE")
        published.append(snapshot)

    trainer = Trainer(ModelHolder(fresh_model(settings)), metrics, publish, 2, retry_after_s=60)

    async def feed() -> None:
        for offset in range(6):
            await trainer.on_example(offset, orjson.dumps(example(offset + 1)),
                                     settings.max_output_bytes)

    asyncio.run(feed())
    assert trainer.model is not None and trainer.model.version == 6  # all learned
    assert metrics.snapshot_publish_failures._value.get() == 1  # one attempt, then it waits
    assert trainer.unpublished == 6 and not published
    refuse[0] = False
    trainer._retry_at = 0.0  # the wait is over
    assert asyncio.run(trainer.publish_snapshot()) is True
    assert trainer.unpublished == 0 and len(published) == 1
    assert metrics.snapshot_bytes._value.get() == len(published[0])
