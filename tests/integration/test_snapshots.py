"""Hostile records on the snapshot topic: nothing runs, nothing stops, nothing is blocked.

A pickled snapshot in the old format (whose unpickling would create a marker file, with a
version of 10**9), junk bodies and a non-numeric version are written to ``model-snapshots``
of a real broker, under a running worker and before a second one starts."""

from __future__ import annotations

import builtins
import pickle
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.demo import WorkerProcess
from streams.model import MODEL_FORMAT, PushModel

from .conftest import Deployment, wait_for_metrics
from .test_model_lifecycle import send_and_open

pytestmark = pytest.mark.integration
KEY = "integration-snapshot-key"
MAGIC = b"PUSHFLOW-MODEL\n"  # the wire format's, pinned here


class Marker:
    """Unpickling this opens (creates) a file: the proof that a payload ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (builtins.open, (str(self.path), "w"))


def hostile_records(marker: Path) -> list[bytes]:
    old_header = {"format": 3, "river": "0.26", "learning_rate": 0.05, "l2": 0.0,
                  "open_prior": 0.1, "disable_prior": 0.01}
    nan_weight = {"format": MODEL_FORMAT, "version": 10**9, "open": {"weights": {"act_24h": None}}}
    return [
        MAGIC + orjson.dumps({**old_header, "version": 10**9}) + b"\n"
        + pickle.dumps(Marker(marker)),
        MAGIC + orjson.dumps({**old_header, "version": "abc"}) + b"\n" + b"junk body",
        MAGIC + b"unsigned\n" + b"\x80\x04junk that is not JSON",
        MAGIC + b"unsigned\n" + orjson.dumps({"format": MODEL_FORMAT, "version": "abc"}),
        MAGIC + b"unsigned\n" + orjson.dumps(nan_weight),
        b"not a snapshot at all",
    ]


def refusals(worker: WorkerProcess) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(worker.metrics_text()):
        for sample in family.samples:
            if sample.name == "pushflow_model_snapshots_refused_total" and sample.value:
                found[sample.labels["reason"]] = sample.value
            elif sample.name == "pushflow_model_snapshots_ok":
                found["ok"] = sample.value
    return found


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout}s")
        time.sleep(0.25)


def produce_snapshots(deployment: Deployment, records: list[bytes]) -> None:
    deployment.produce(("snapshots_topic", b"model", raw) for raw in records)


def refused_total(worker: WorkerProcess) -> float:
    return sum(v for k, v in refusals(worker).items() if k != "ok")


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)
def test_hostile_snapshots_run_nothing_and_block_no_later_model(
    deployment: Deployment, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    records = hostile_records(marker)
    first = deployment.start_worker("first", PUSHFLOW_SNAPSHOT_EVERY="1")
    produce_snapshots(deployment, records)
    wait_until(lambda: marker.exists() or refused_total(first) >= len(records)
               or first.proc.poll() is not None)
    assert not marker.exists(), "a pickled snapshot ran code in the worker"
    assert first.proc.poll() is None
    found = refusals(first)
    found.pop("ok")
    assert found == {"incompatible": 2, "invalid": 4}

    # a worker started after them: its start reads them all, and it still becomes ready
    # (the trainer writes its model over the refused records, see reliability.md)
    second = deployment.start_worker("second", PUSHFLOW_SNAPSHOT_EVERY="1")
    wait_until(lambda: refused_total(second) >= len(records), timeout=30)
    assert refused_total(second) == len(records)
    assert not marker.exists()

    # later legitimate snapshots (the trainer's, after labels) are served by both: the
    # refused version 10**9 blocks nothing
    opened = send_and_open(deployment, [f"u{i}" for i in range(4)], "after")
    for worker in (first, second):
        wait_for_metrics(worker, lambda f: f.get("version", 0) >= len(opened), timeout=60)
        wait_until(lambda w=worker: refusals(w)["ok"] == 1, timeout=15)
        assert worker.proc.poll() is None
        assert "unexpected" not in refusals(worker)
        # one line per reason per minute
        assert worker.log_path.read_text().count("refused model snapshot") <= 2
    assert not marker.exists()


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)
def test_with_a_key_only_snapshots_signed_with_it_are_served(deployment: Deployment) -> None:
    # no snapshot timer within the test: the trainer does not write over refused records, so
    # the worker stays not ready until a valid snapshot comes
    worker = deployment.start_worker("keyed", PUSHFLOW_SNAPSHOT_KEY=KEY,
                                     PUSHFLOW_SNAPSHOT_INTERVAL_S="600")
    model = PushModel()
    for i in range(60):
        model.learn({"act_24h": float(i % 3)}, opened=i % 4 == 0, disabled=False)
    model.version = 50
    unsigned = model.to_snapshot()
    model.version = 60
    wrongly_signed = model.to_snapshot(key=b"not the key")
    model.version = 40
    signed = model.to_snapshot(key=KEY.encode())
    produce_snapshots(deployment, [unsigned, wrongly_signed])
    wait_until(lambda: refused_total(worker) >= 2)
    wait_until(lambda: readyz(worker) == (503, {"ready": False,
                                                "snapshots": "refused:bad_signature"}))
    assert refusals(worker)["ok"] == 0
    produce_snapshots(deployment, [signed])
    figures = wait_for_metrics(worker, lambda f: f.get("version", 0) >= 40, timeout=30)
    assert figures["version"] == 40
    found = refusals(worker)
    assert (found["unsigned"], found["bad_signature"], refused_total(worker)) == (1, 1, 2)
    wait_until(lambda: readyz(worker) == (200, {"ready": True}), timeout=15)
    assert refusals(worker)["ok"] == 1
    assert KEY not in worker.log_path.read_text()


def readyz(worker: WorkerProcess) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/readyz", timeout=2) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())
