"""The HTML reports rendered by a real headless browser: every plot drawn, no console message.

Skipped only when chromium is not installed (CI installs it: ``.ci/run``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from streams.evaluate import evaluate_command
from streams.replay import replay_command
from streams.report import demo_report, write_report
from tests.unit.test_report import demo_summary, sample_log

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def render(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """The DOM after load and every console message the page produced."""
    profile = tmp_path / "profile"
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        "--dump-dom", page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


def plots_drawn(dom: str) -> list[str]:
    """Figure ids whose SVG holds drawn content (a path), as the browser parsed them."""
    return [m.group(1) for m in re.finditer(
        r'<figure id="plot-([\w-]+)">.*?<svg[^>]*>(?=.*?<path).*?</svg>', dom, re.S)]


def test_the_check_sees_console_errors(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><script>console.error("boom")</script>'
                    "</body></html>")
    _, console = render(page, tmp_path)
    assert any('"boom"' in line for line in console)


def test_replay_and_evaluate_reports_render(tmp_path: Path) -> None:
    replay_page, evaluate_page = tmp_path / "replay.html", tmp_path / "evaluate.html"
    result = CliRunner().invoke(
        replay_command, [str(sample_log(tmp_path)), "--no-progress", "--html", str(replay_page)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(evaluate_command, [
        "--users", "40", "--days", "1", "--warmup-days", "0.5", "--jobs", "1",
        "--policy", "send-everything", "--policy", "full", "--html", str(evaluate_page)])
    assert result.exit_code == 0, result.output
    for page, ids in ((replay_page, ["reliability", "learning", "decisions", "open-rate"]),
                      (evaluate_page,
                       ["policies", "reliability", "learning", "decisions", "open-rate"])):
        dom, console = render(page, tmp_path)
        assert "<h1>pushflow" in dom
        assert dom.count("<svg") == len(ids)
        assert plots_drawn(dom) == ids
        assert console == []


def test_demo_report_renders(tmp_path: Path) -> None:
    page = tmp_path / "demo.html"
    write_report(page, demo_report(demo_summary()))
    dom, console = render(page, tmp_path)
    assert plots_drawn(dom) == ["reliability", "learning", "decisions", "open-rate"]
    assert console == []
