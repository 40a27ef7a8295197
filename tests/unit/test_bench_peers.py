"""The benchmark's peer helpers (bench/run.py, bench/peers.py) without a broker.

A peer that drops or double counts must fail its row, one that is not installed must be a
"skipped" row, and neither may take the table down.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import peers  # noqa: E402
import run  # noqa: E402
from procs import BenchError  # noqa: E402


@pytest.mark.parametrize("counted", [{"count": 99, "users": 10}, {"count": 101, "users": 10},
                                     {"count": 100, "users": 11}, {"count": 100, "users": 9},
                                     {}])
def test_a_peer_that_drops_or_double_counts_fails(counted: dict[str, int]) -> None:
    with pytest.raises(BenchError, match="counted"):
        run.check_peer_counts(counted, 100, 10)


def test_exact_counts_pass() -> None:
    run.check_peer_counts({"count": 100, "users": 10}, 100, 10)


def test_an_interpreter_that_cannot_run_the_peers_marks_them_all_missing(tmp_path: Path) -> None:
    found = run.peer_check(str(tmp_path / "no-python"))
    assert set(found["missing"]) == set(run.PEERS)
    assert all("cannot run bench/peers.py" in why for why in found["missing"].values())


def test_the_check_runs_in_the_given_interpreter() -> None:
    found = run.peer_check(sys.executable)
    assert found["python"] == sys.executable
    for peer in run.PEERS:
        assert found["missing"][peer] == peers.missing(peer)
    assert found["versions"]["orjson"]


def _figures(rate: int) -> dict[str, Any]:
    return {"events_per_s": rate, "events_per_worker_cpu_s": rate,
            "cpu": {"cores_worker": 1.0, "cores_broker": 0.1, "foreign_share": 0.0},
            "memory_kib": {"VmHWM": 102400}}


def test_the_table_says_which_peer_was_skipped_and_which_failed() -> None:
    pipeline = {**_figures(3000), "stop": {"seconds": 1.0}, "memory_kib_after_latency": {}}
    result = {"counter": _figures(2000), "pipeline": pipeline,
              "quix": {"error": "counted 12 events of 10 (4 users of 4)"},
              "peers_skipped": {"bytewax": "bytewax[kafka] is not installed"}}
    result["ratios"] = run.ratios(result)
    text = run.table(result)
    assert f"| {peers.NAMES['quix']} | failed: counted 12 events of 10" in text
    assert f"| {peers.NAMES['bytewax']} | skipped: bytewax[kafka] is not installed" in text
    assert "pipeline_over_quix" not in result["ratios"]


def test_the_table_compares_the_pipeline_with_a_measured_peer() -> None:
    pipeline = {**_figures(3000), "stop": {"seconds": 1.0}, "memory_kib_after_latency": {}}
    result = {"pipeline": pipeline, "quix": _figures(6000)}
    result["ratios"] = run.ratios(result)
    assert result["ratios"]["pipeline_over_quix"] == 0.5
    row = f"| pipeline / {peers.NAMES['quix']} (per CPU-s) | 0.50x (0.50x) | |"
    assert row in run.table(result)


def test_missing_names_the_extra() -> None:
    assert peers.missing("nothing-of-that-name") == "unknown peer nothing-of-that-name"
    for peer in peers.REQUIRES:
        why = peers.missing(peer)
        assert why is None or "pip install -e '.[bench]'" in why
