"""Model snapshots are data: nothing read from the snapshot topic is executed, junk of any
kind is a SnapshotError (a refusal counted by reason), and a key makes signatures required."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import snapshot_format
from streams.errors import (
    BadSignature,
    IncompatibleSnapshot,
    SnapshotError,
    SnapshotTooLarge,
    UnsignedSnapshot,
)
from streams.model import MODEL_FORMAT, PushModel
from streams.settings import Secret, Settings
from streams.snapshots import ModelHolder

from .test_model import trained

KEY = "snapshot-k3y-do-not-log"
MAGIC = snapshot_format.MAGIC
X = {"act_24h": 1.0, "kind=trending": 1.0}


class Marker:
    """Unpickling this creates a file: the proof that a payload ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (Path.touch, (self.path,))


def document(model: PushModel | None = None) -> dict[str, Any]:
    return orjson.loads(orjson.dumps((model or trained(30)).state()))


def unsigned(body: bytes) -> bytes:
    return MAGIC + b"unsigned\n" + body


def holder(key: str | None = None) -> tuple[ModelHolder, list[str]]:
    reasons: list[str] = []
    return ModelHolder(PushModel(), Secret(key) if key else None, reasons.append), reasons


def test_pickled_payloads_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Marker(marker))
    old_header = orjson.dumps({"format": 3, "river": "0.26", "version": 10**9,
                               "learning_rate": 0.05, "l2": 0.0, "open_prior": 0.1,
                               "disable_prior": 0.01})
    for raw in (payload, MAGIC + old_header + b"\n" + payload, unsigned(payload)):
        with pytest.raises(SnapshotError):
            PushModel.from_snapshot(raw)
    with pytest.raises(IncompatibleSnapshot, match="pickled"):
        PushModel.from_snapshot(MAGIC + old_header + b"\n" + payload)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is real: loading it the old way creates the marker
    assert marker.exists()


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value
    return change


def _drop(*path: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        for key in path[:-1]:
            doc = doc[key]
        del doc[path[-1]]
    return change


CRAFTED = {
    "version not a number": _set(("version",), "abc"),
    "version negative": _set(("version",), -1),
    "version a float": _set(("version",), 1e9),
    "version a bool": _set(("version",), True),
    "version beyond 2**53": _set(("version",), 2**60),
    "no version": _drop("version"),
    "weight a string": _set(("open", "weights", "act_24h"), "1.0"),
    "weight null (NaN written by orjson)": _set(("open", "weights", "act_24h"), None),
    "weight overflowing": _set(("open", "weights", "act_24h"), 1e308),
    "weights a list": _set(("open", "weights"), [1.0, 2.0]),
    "intercept an object": _set(("disable", "intercept"), {"a": 1}),
    "negative count": _set(("open", "scaler", "counts", "act_24h"), -3),
    "negative variance": _set(("open", "scaler", "vars", "act_24h"), -1.0),
    "no scaler": _drop("open", "scaler"),
    "prior of 1": _set(("open_prior",), 1.0),
    "learning rate a string": _set(("learning_rate",), "0.05"),
    "huge feature name": _set(("open", "weights", "x" * 10_000), 1.0),
    "format as a string": _set(("format",), str(MODEL_FORMAT)),
    "another format": _set(("format",), MODEL_FORMAT + 1),
    "open a list": _set(("open",), []),
    "learned_upto junk": _set(("learned_upto",), {"t:0": "abc"}),
    "training_offset junk": _set(("training_offset",), "abc"),
}


@pytest.mark.parametrize("change", CRAFTED.values(), ids=list(CRAFTED))
def test_crafted_bodies_are_refused_with_a_snapshot_error(change: Callable[..., None]) -> None:
    doc = {**document(), "training_offset": 3, "learned_upto": {"t:0": [1, 0]}}
    change(doc)
    models, reasons = holder()
    assert not models.offer_bytes(unsigned(orjson.dumps(doc)), 1)
    assert len(reasons) == 1 and reasons[0] in ("invalid", "incompatible")
    assert models.serving.version == 0 and not models.following


@pytest.mark.parametrize("body", [
    b"", b"junk", b"[1, 2]", b'{"format": 4', b'{"weights": NaN}', b"[1e400]",
    b"[" * 100_000 + b"]" * 100_000, "\u00e9".encode("latin-1"),
], ids=["empty", "junk", "array", "truncated", "NaN", "infinite", "deep", "not utf-8"])
def test_junk_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(SnapshotError):
        PushModel.from_snapshot(unsigned(body))


def test_huge_snapshots_are_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SnapshotTooLarge):
        PushModel.from_snapshot(MAGIC + b"x" * snapshot_format.MAX_SNAPSHOT_BYTES)
    monkeypatch.setattr(snapshot_format, "MAX_ENTRIES", 10)
    doc = document()
    doc["open"]["weights"] = {f"f{i}": 0.0 for i in range(11)}
    with pytest.raises(SnapshotTooLarge):
        PushModel.from_snapshot(unsigned(orjson.dumps(doc)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_snapshot_error_or_nothing(body: bytes) -> None:
    for raw in (body, MAGIC + body, unsigned(body)):
        with pytest.raises(SnapshotError):
            PushModel.from_snapshot(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([("version",), ("l2",), ("seed",), ("open",), ("open", "weights"),
                        ("open", "iterations"), ("open", "scaler"), ("open", "scaler", "means"),
                        ("disable", "scaler", "counts"), ("learned_upto",)]), json_values)
def test_any_value_anywhere_is_refused_or_valid(path: tuple[str, ...], value: Any) -> None:
    doc = document()
    _set(path, value)(doc)
    models, reasons = holder()
    try:
        raw = unsigned(orjson.dumps(doc))
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits: nothing to send
        return
    taken = models.offer_bytes(raw, 1)
    assert taken or reasons in (["invalid"], ["incompatible"], ["too_large"])
    assert "unexpected" not in reasons


def test_signatures_are_required_when_a_key_is_set() -> None:
    model = trained(30)
    key = KEY.encode()
    signed = model.to_snapshot(key=key)
    assert PushModel.from_snapshot(signed, key=key).p_open(X) == model.p_open(X)
    with pytest.raises(UnsignedSnapshot):
        PushModel.from_snapshot(model.to_snapshot(), key=key)
    with pytest.raises(BadSignature):
        PushModel.from_snapshot(signed, key=b"another key")
    tampered = signed.replace(b'"version":30', b'"version":99999')
    assert tampered != signed
    with pytest.raises(BadSignature):
        PushModel.from_snapshot(tampered, key=key)
    forged = signed.replace(b"hmac-sha256=", b"hmac-sha256=0")
    with pytest.raises(BadSignature):
        PushModel.from_snapshot(forged, key=key)
    # without a key, a signed snapshot (a trainer with a key) is still read
    assert PushModel.from_snapshot(signed).version == 30


def test_a_holder_with_a_key_signs_and_refuses_by_reason() -> None:
    models, reasons = holder(KEY)
    assert not models.offer_bytes(trained(5).to_snapshot(), 1)
    assert not models.offer_bytes(trained(5).to_snapshot(key=b"wrong"), 1)
    assert reasons == ["unsigned", "bad_signature"]
    assert models.offer_bytes(models.encode(trained(7), {"training_offset": 4}), 1)
    assert (models.serving.version, models.training_offset) == (7, 4)


def test_a_refused_huge_version_blocks_no_later_snapshot() -> None:
    models, reasons = holder()
    doc = document()
    doc["version"] = 10**9
    doc["open"]["weights"]["act_24h"] = "junk"
    assert not models.offer_bytes(unsigned(orjson.dumps(doc)), 1)
    assert not models.following and models.newest_refused
    assert models.status == "refused:invalid"
    assert models.offer_bytes(trained(12).to_snapshot(), 2)
    assert models.serving.version == 12 and models.following
    assert not models.offer_bytes(trained(5).to_snapshot(), 3)  # older: skipped, not refused
    assert models.following and models.status == "ok" and reasons == ["invalid"]


def test_refusals_are_logged_once_per_reason_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    models, reasons = holder(KEY)
    with caplog.at_level(logging.ERROR, logger="streams.snapshots"):
        for _ in range(50):
            models.offer_bytes(b"junk", 1)
            models.offer_bytes(trained(2).to_snapshot(), 1)
    assert len(reasons) == 100 and models.refused == 100
    assert len(caplog.records) == 2
    assert KEY not in caplog.text


def test_the_snapshot_key_is_a_secret() -> None:
    for settings_ in (Settings.from_env({"PUSHFLOW_SNAPSHOT_KEY": KEY}),
                      Settings(snapshot_key=KEY),  # type: ignore[arg-type]
                      Settings().replace(snapshot_key=KEY)):
        assert isinstance(settings_.snapshot_key, Secret)
        assert settings_.snapshot_key.get() == KEY
        assert KEY not in repr(settings_) and KEY not in str(settings_)
    models, _ = holder(KEY)
    assert KEY not in repr(vars(models))
    assert KEY.encode() not in models.encode(trained(3), {})


def test_the_worker_can_send_a_snapshot_of_a_model_with_every_hashed_weight(tmp_path: Path) -> None:
    """A snapshot of a model of hashed features outgrows the outputs' 1 MB request limit (it
    did in the benchmark, and the trainer crashed the worker); Faust's producer, which sends
    only snapshots, takes the largest the format allows, and a full model fits in it."""
    from prometheus_client import CollectorRegistry

    from streams.app import PushflowWorker
    from streams.features import HASH_BUCKETS
    from streams.settings import Settings
    from streams.snapshot_format import MAX_SNAPSHOT_BYTES

    settings = Settings.from_env({}, broker="kafka://127.0.0.1:9092", data_dir=str(tmp_path))
    app = PushflowWorker(settings, registry=CollectorRegistry()).app
    model = PushModel()
    for head in (model._open, model._disable):
        for bucket in range(0, HASH_BUCKETS, 4):  # a quarter of the buckets: quick, > 1 MB
            head.regression._weights[f"h={bucket}"] = -0.012345678901234567
            head.regression.optimizer.g2[f"h={bucket}"] = 1.2345678901234567
    size = len(model.to_snapshot())
    assert size > settings.producer_max_bytes
    assert app.conf.producer_max_request_size >= MAX_SNAPSHOT_BYTES >= 4 * size
