"""The demo's dashboard (``streams/dashboard.py``) and its tallies (``streams/scoreboard.py``)."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from streams.dashboard import example_summary, plain_line, render
from streams.demo import auc_trend
from streams.scoreboard import Scoreboard


def text_of(summary: dict[str, Any]) -> str:
    console = Console(record=True, width=130, file=io.StringIO())
    console.print(render(summary))
    return console.export_text()


def test_dashboard_shows_header_rows_and_warming_up_before_labels() -> None:
    text = text_of(example_summary())
    assert "broker kafka://127.0.0.1:9092 (embedded tansu)" in text
    assert "2000 users" in text and "speed 120x" in text and "elapsed 0:00:01" in text
    for row in ("events", "candidates", "intents", "opens", "above_threshold", "held",
                "holdout_send", "decided", "in flight", "version", "labels", "lift"):
        assert row in text, row
    assert text.count("warming up (0/200 labels)") == 3
    assert "warming up" in plain_line(example_summary())


def test_dashboard_shows_figures_once_enough_labels() -> None:
    s = example_summary()
    windows = [{"labels": 1000 * i, "auc": a} for i, a in enumerate((0.55, 0.58, 0.6, 0.62), 1)]
    s["model"] = {**s["model"], "labels": 4200, "window_labels": 1000, "warming_up": False,
                  "rolling_auc": 0.615, "log_loss": 0.41, "calibration_error": 0.03,
                  "auc_windows": windows, "auc_trend": auc_trend(windows)}
    text = text_of(s)
    assert "warming up" not in text
    assert "0.615" in text and "0.410" in text and "rising (+0.070 over 3 windows)" in text
    assert "4200  (window 1000)" in text


def test_final_reasons_count_each_candidate_once() -> None:
    board = Scoreboard(holdout_share=0.0, attribution_window_ms=10)
    records = [("a", "hold", "quiet_hours"), ("b", "send", "above_threshold"),
               ("c", "hold", "held_for_send_time"), ("a", "send", "released"),
               ("d", "suppress", "below_threshold"), ("c", "suppress", "min_gap"),
               ("e", "hold", "quiet_hours")]
    for decision_id, action, reason in records:
        board.on_decision({"decision_id": decision_id, "action": action, "reason": reason})
    final = board.final_reasons()
    assert final == {"above_threshold": 1, "below_threshold": 1, "held": 1, "min_gap": 1,
                     "released": 1}
    assert sum(final.values()) == 5  # candidates a..e


def test_groups_split_users_as_the_worker_does_and_reliability_waits_for_the_window() -> None:
    board = Scoreboard(holdout_share=1.0, attribution_window_ms=100)
    board.on_intent({"intent_id": "i1", "user_id": "u1", "p_open": 0.3, "send_at_ms": 0})
    board.on_intent({"intent_id": "i2", "user_id": "u2", "p_open": 0.35, "send_at_ms": 0})
    board.on_event({"type": "push_opened", "user_id": "u1", "intent_id": "i1"})
    assert board.groups()["holdout"] == {"pushes": 2, "opens": 1, "open_rate": 0.5,
                                         "ci95": [0.0945, 0.9055]}
    assert board.groups()["model"]["open_rate"] is None
    board.resolve(now_ms=99)
    assert board.reliability() == []
    board.resolve(now_ms=100)
    assert board.reliability() == [{"low": 0.3, "n": 2, "mean_p": 0.325, "open_rate": 0.5}]
