"""The HTML reports (``streams/report.py``): every plot present, fed by real command output."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from streams.dashboard import example_summary
from streams.evaluate import EvalOptions, evaluate, evaluate_command
from streams.obd import convert_command
from streams.pipeline import DeciderConfig
from streams.replay import replay, replay_command
from streams.report import (
    demo_report,
    evaluate_report,
    render_html,
    replay_report,
    require_plotting,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "obd"
SMALL = EvalOptions(users=40, days=1.0, warmup_days=0.5, jobs=1)


def sample_log(tmp_path: Path) -> Path:
    """The vendored Open Bandit slice, converted to a replay log."""
    out = tmp_path / "obd.jsonl"
    result = CliRunner().invoke(convert_command, ["obd", "--data", str(DATA), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def figures(page: str) -> list[str]:
    """Ids of the figures that hold an inline SVG."""
    return re.findall(r'<figure id="plot-([\w-]+)"><h2>[^<]*</h2><svg', page)


def demo_summary() -> dict:
    s = example_summary()
    rows = [{"elapsed_s": t, "simulated_hours": t / 30, "events": 100 * t, "candidates": 10 * t,
             "labels": 50 * t, "model_version": t, "rolling_auc": 0.5 + t / 100,
             "log_loss": 0.4, "calibration_error": 0.05,
             "decisions_by_reason": {"above_threshold": 3 * t, "held": 2, "below_threshold": t},
             "open_rate": {"model": 0.2, "holdout": 0.1}} for t in range(1, 6)]
    reliability = [{"low": 0.1, "n": 30, "mean_p": 0.14, "open_rate": 0.12}]
    return {**s, "history": rows, "reliability": reliability}


def test_replay_report_has_every_plot(tmp_path: Path) -> None:
    report = replay(sample_log(tmp_path).read_bytes().splitlines(), DeciderConfig())
    data = report.to_dict()
    assert data["learning_curve"] and data["timeline"]["decisions"]
    page = render_html(replay_report(data, "obd.jsonl"))
    assert figures(page) == ["reliability", "learning", "decisions", "open-rate"]
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched when opened
    assert "<script" not in page and "<link" not in page


def test_evaluate_report_has_every_plot_and_the_policy_comparison() -> None:
    result = evaluate(SMALL, ["send-everything", "full"])
    full = result["policies"]["full"]
    assert full["learning_curve"] and full["reliability"] and full["reasons_by_day"]
    page = render_html(evaluate_report(result))
    assert figures(page) == ["policies", "reliability", "learning", "decisions", "open-rate"]


def test_demo_report_has_every_plot() -> None:
    page = render_html(demo_report(demo_summary()))
    assert figures(page) == ["reliability", "learning", "decisions", "open-rate"]
    assert "no labels yet" not in page and "no decisions yet" not in page


def test_a_plot_without_data_says_so_instead_of_vanishing() -> None:
    page = render_html(demo_report({**example_summary(), "history": [], "reliability": []}))
    assert figures(page) == ["reliability", "learning", "decisions", "open-rate"]
    assert "no labels yet" in page


def test_the_commands_write_the_page(tmp_path: Path) -> None:
    log, out = sample_log(tmp_path), tmp_path / "replay.html"
    result = CliRunner().invoke(replay_command, [str(log), "--no-progress", "--html", str(out)])
    assert result.exit_code == 0, result.output
    assert len(figures(out.read_text())) == 4
    out = tmp_path / "evaluate.html"
    args = ["--users", "40", "--days", "1", "--warmup-days", "0.5", "--jobs", "1",
            "--policy", "send-everything", "--policy", "full", "--html", str(out)]
    result = CliRunner().invoke(evaluate_command, args)
    assert result.exit_code == 0, result.output
    assert len(figures(out.read_text())) == 5


def test_html_without_matplotlib_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(click.ClickException, match=r"pip install 'pushflow\[report\]'"):
        require_plotting()
    out = tmp_path / "r.html"
    result = CliRunner().invoke(
        replay_command, [str(sample_log(tmp_path)), "--no-progress", "--html", str(out)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: --html needs matplotlib, which is not installed: pip install 'pushflow[report]'"]
    assert not out.exists()
