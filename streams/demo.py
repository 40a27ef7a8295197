"""``pushflow demo``: the whole loop on one machine with one command.

Starts an embedded broker (unless one is given), creates the topics, runs a worker as a child
process, and drives simulated users against it: they produce activity and candidates, receive
the intents and answer with opens, dismissals and disables drawn from their hidden truth. A
live dashboard (``streams.dashboard``) shows whether the model learns: traffic, final decisions,
open rate against the holdout group, prequential figures; the final figures can be written as
JSON (``--summary-json``) and as an HTML report (``--html``). The worker's log is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live

from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker, _free_port
from streams.dashboard import WARMUP_LABELS, plain_line, render
from streams.errors import BrokerError
from streams.scoreboard import Scoreboard
from streams.settings import Settings
from streams.simulator import Population
from streams.topics import topic_specs
from streams.traffic import TrafficDriver

log = logging.getLogger("pushflow")
REFRESH_S = 5.0  # plain lines (no terminal): a log, not a screen
LIVE_REFRESH_S = 1.0
PREQUENTIAL_WINDOW = 1000  # labels behind the worker's rolling figures (training.Prequential)
AUC_EVERY = 500  # labels between two AUC readings of the trend: windows half new, half old


@dataclass(frozen=True)
class DemoOptions:
    duration: float | None = None
    users: int = 2000
    speed: float = 120.0
    seed: int = 7
    summary_json: Path | None = None
    broker_kind: str | None = None
    web_port: int | None = None  # None: any free port
    worker_log: Path | None = None  # None: a new file in the temporary directory, kept
    html: Path | None = None
    live: bool | None = None  # None: a live dashboard when stdout is a terminal


class WorkerProcess:
    """A ``pushflow worker`` child process with its own log file and metrics port."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        env: dict[str, str] | None = None,
        name: str = "worker",
        port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.port = _free_port() if port is None else port
        self.log_path = workdir / f"{name}.log" if log_path is None else log_path
        command = [
            sys.executable, "-m", "streams", "worker",
            "--broker", str(settings.broker), "--web-port", str(self.port),
            "--web-host", "127.0.0.1", "--data-dir", str(workdir / f"{name}-data"),
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    def metrics_text(self, timeout: float = 2.0) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return str(response.read().decode())

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{self.port}/readyz"
                with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310
                    if response.status == 200:
                        return
            time.sleep(0.2)
        raise BrokerError(f"worker not ready within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def scrape(text: str) -> dict[str, Any]:
    """The worker figures the summary needs, from its Prometheus exposition."""
    figures: dict[str, Any] = {"labeled_examples": 0.0, "learned": 0.0, "ignored": {},
                               "compare": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("pushflow_model_compare_"):
                model = figures["compare"].setdefault(sample.labels["model"],
                                                      {"role": sample.labels["role"]})
                model[sample.name.removeprefix("pushflow_model_compare_")] = sample.value
            elif sample.name == "pushflow_ignored_messages_total":
                reason = sample.labels["reason"]
                figures["ignored"][reason] = figures["ignored"].get(reason, 0) + sample.value
            elif sample.name == "pushflow_labeled_examples_total":
                figures["labeled_examples"] += sample.value
            elif sample.name == "pushflow_model_examples_learned_total":
                figures["learned"] += sample.value
            elif sample.name in (
                "pushflow_model_version", "pushflow_model_rolling_auc", "pushflow_model_log_loss",
                "pushflow_model_calibration_error", "pushflow_model_base_rate",
            ):
                figures[sample.name.removeprefix("pushflow_model_")] = sample.value
    return figures


TREND_WINDOWS = 3  # AUC windows compared to say whether the model is getting better


class DemoRun:
    """The demo's figures over time: traffic counts, the scoreboard, the worker's metrics."""

    def __init__(self, driver: TrafficDriver, board: Scoreboard, about: dict[str, Any]) -> None:
        self.driver, self.board, self.about = driver, board, about
        self.started = time.monotonic()
        self.worker: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.auc_windows: list[dict[str, Any]] = []

    def observe(self, worker_figures: dict[str, Any]) -> dict[str, Any]:
        """Take the worker's latest figures; return the summary of now (and keep its row)."""
        self.worker = worker_figures
        self.board.resolve(self.driver.sim_now_ms)
        s = summary(self, time.monotonic() - self.started)
        self.history.append(history_row(s))
        return s


def summary(run: DemoRun, elapsed: float) -> dict[str, Any]:
    """Every figure the dashboard shows and ``--summary-json`` writes."""
    driver, figures = run.driver, run.worker
    stats, groups = driver.population.stats, run.board.groups()
    events, candidates = driver.sent["events"], driver.sent["candidates"]
    model, hold = groups["model"]["open_rate"], groups["holdout"]["open_rate"]
    return {
        **run.about,
        "elapsed_s": round(elapsed, 1),
        "simulated_hours": round((driver.sim_now_ms - driver.sim_start_ms) / 3_600_000, 2),
        "events": events,
        "candidates": candidates,
        "events_per_s": round(events / elapsed, 1) if elapsed else 0.0,
        "rates": {"events": events / elapsed if elapsed else 0.0,
                  "candidates": candidates / elapsed if elapsed else 0.0},
        "rates_now": _rates_now(run.history, events, candidates, elapsed),
        "intents": driver.received["intents"],
        "opens": stats["opens"],
        "dismissals": stats["dismissals"],
        "disables": stats["disables"],
        "open_rate": round(stats["opens"] / driver.received["intents"], 4)
        if driver.received["intents"] else None,
        "dead_letters": driver.received["dead_letters"],
        "labeled_examples": int(figures.get("labeled_examples", 0)),
        "model_version": int(figures.get("version", 0)),
        "rolling_auc": _finite(figures.get("rolling_auc")),
        "log_loss": _finite(figures.get("log_loss")),
        "calibration_error": _finite(figures.get("calibration_error")),
        "decisions_by_reason": run.board.final_reasons(),
        "decision_records_by_reason": dict(sorted(driver.decisions_by_reason.items())),
        "groups": groups,
        "open_rate_lift": round(model / hold, 3) if model is not None and hold else None,
        "model": _model_figures(run, figures, elapsed),
        "reliability": run.board.reliability(),
    }


def _rates_now(
    history: list[dict[str, Any]], events: int, candidates: int, elapsed: float
) -> dict[str, float]:
    """Per second over the last ~5 s of rows (the whole run before there are any)."""
    then = next((r for r in reversed(history) if elapsed - r["elapsed_s"] >= 5), None)
    then = then or {"elapsed_s": 0.0, "events": 0, "candidates": 0}
    dt = elapsed - then["elapsed_s"]
    if dt <= 0:
        return {"events": 0.0, "candidates": 0.0}
    return {"events": (events - then["events"]) / dt,
            "candidates": (candidates - then["candidates"]) / dt}


def _model_figures(run: DemoRun, figures: dict[str, Any], elapsed: float) -> dict[str, Any]:
    learned, version = int(figures.get("learned", 0)), int(figures.get("version", 0))
    auc = _finite(figures.get("rolling_auc"))
    if auc is not None and learned >= AUC_EVERY * (len(run.auc_windows) + 1):
        run.auc_windows.append({"labels": learned, "auc": auc})
    minute_ago = next((r for r in run.history if elapsed - r["elapsed_s"] <= 60), None)
    per_min = 0.0
    if minute_ago is not None and elapsed - minute_ago["elapsed_s"] > 0:
        span = elapsed - minute_ago["elapsed_s"]
        per_min = (version - minute_ago["model_version"]) * 60 / span
    return {
        "version": version,
        "versions_per_min": round(per_min, 2),
        "labels": learned,
        "window_labels": min(learned, PREQUENTIAL_WINDOW),
        "warming_up": learned < WARMUP_LABELS or auc is None,
        "rolling_auc": auc,
        "log_loss": _finite(figures.get("log_loss")),
        "calibration_error": _finite(figures.get("calibration_error")),
        "auc_windows": list(run.auc_windows),
        "auc_trend": auc_trend(run.auc_windows),
    }


def auc_trend(windows: list[dict[str, Any]]) -> str:
    """Rising, falling or flat: the newest AUC window against the one TREND_WINDOWS before.

    >>> auc_trend([{"auc": 0.55}, {"auc": 0.57}, {"auc": 0.58}, {"auc": 0.61}])
    'rising (+0.060 over 3 windows)'
    >>> auc_trend([{"auc": 0.6}])
    ''
    """
    if len(windows) < 2:
        return ""
    back = min(TREND_WINDOWS, len(windows) - 1)
    delta = windows[-1]["auc"] - windows[-1 - back]["auc"]
    word = "rising" if delta > 0.01 else "falling" if delta < -0.01 else "flat"
    return f"{word} ({delta:+.3f} over {back} windows)"


def history_row(s: dict[str, Any]) -> dict[str, Any]:
    """The figures of one refresh that the HTML report plots over time."""
    return {
        "elapsed_s": s["elapsed_s"], "simulated_hours": s["simulated_hours"],
        "events": s["events"], "candidates": s["candidates"],
        "labels": s["model"]["labels"], "model_version": s["model_version"],
        "rolling_auc": s["rolling_auc"], "log_loss": s["log_loss"],
        "calibration_error": s["calibration_error"],
        "decisions_by_reason": s["decisions_by_reason"],
        "open_rate": {name: g["open_rate"] for name, g in s["groups"].items()},
    }


def _finite(value: Any) -> float | None:
    if value is None or value != value:  # NaN before the first labels of both classes
        return None
    return round(float(value), 4)


def run_demo(settings: Settings, options: DemoOptions) -> dict[str, Any]:
    """Run until ``options.duration`` passes (or Ctrl-C); return the final summary."""
    log_path = options.worker_log or _kept_log_path()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pushflow-demo-")))
        broker_text = str(settings.broker)
        if settings.broker is None:
            broker = stack.enter_context(EmbeddedBroker(options.broker_kind))
            settings = settings.replace(broker=broker.url)
            broker_text = f"{broker.url} (embedded {broker.kind})"
            log.info("embedded %s broker at %s", broker.kind, broker.url)
        ensure_topics(settings.bootstrap_servers, topic_specs(settings),
                      client_config=settings.confluent_config(),
                      timeout=settings.startup_timeout_s)
        worker = WorkerProcess(settings, workdir, env=_demo_env(settings),
                               port=options.web_port, log_path=log_path)
        stack.callback(worker.stop)
        worker.wait_ready()
        metrics_url = f"http://127.0.0.1:{worker.port}/metrics"
        log.info("worker ready; metrics on %s", metrics_url)
        about = {"broker": broker_text, "users": options.users, "speed": options.speed,
                 "seed": options.seed, "metrics_url": metrics_url, "worker_log": str(log_path)}
        final = _drive(settings, worker, options, about)
    if options.summary_json is not None:
        options.summary_json.write_bytes(orjson.dumps(final, option=orjson.OPT_INDENT_2))
    if options.html is not None:
        from streams.report import demo_report, write_report

        write_report(options.html, demo_report(final))
        print(f"report: {options.html}")
    print(f"worker log: {log_path}")
    return final


def _kept_log_path() -> Path:
    """A log file that outlives the demo, so a failure can be read after it ends."""
    fd, name = tempfile.mkstemp(prefix="pushflow-demo-worker-", suffix=".log")
    os.close(fd)
    return Path(name)


def _demo_env(settings: Settings) -> dict[str, str]:
    # The demo compresses days into minutes: snapshot often so learning shows quickly.
    # Simulated time runs ahead of the wall clock, so the future bound is widened too.
    env = {"PUSHFLOW_SNAPSHOT_EVERY": "25", "PUSHFLOW_SNAPSHOT_INTERVAL_S": "5",
           "PUSHFLOW_TICK_INTERVAL_S": "1", "PUSHFLOW_MAX_FUTURE_S": str(10 * 365 * 86400)}
    return {k: v for k, v in env.items() if k not in os.environ}


def _drive(
    settings: Settings, worker: WorkerProcess, options: DemoOptions, about: dict[str, Any]
) -> dict[str, Any]:
    population = Population(seed=options.seed, n_users=options.users,
                            start_ms=int(time.time() * 1000))
    board = Scoreboard(settings.holdout_share, settings.attribution_window_s * 1000)
    driver = TrafficDriver(settings, population, options.speed, from_beginning=True,
                           on_record=lambda kind, record: _tally(board, kind, record))
    run = DemoRun(driver, board, about)
    console = Console()
    live = console.is_terminal if options.live is None else options.live
    view = Live(console=console, auto_refresh=False) if live else contextlib.nullcontext()
    figures: dict[str, Any] = {}
    with view:
        if not live:
            print(f"pushflow demo: broker {about['broker']}, {options.users} users, speed "
                  f"{options.speed:g}x, metrics {about['metrics_url']}", flush=True)
        last = time.monotonic()
        try:
            while options.duration is None or time.monotonic() - run.started < options.duration:
                driver.step()
                if time.monotonic() - last >= (LIVE_REFRESH_S if live else REFRESH_S):
                    last = time.monotonic()
                    figures = _safe_scrape(worker, figures)
                    _show(view, run.observe(figures))
        except KeyboardInterrupt:
            log.info("interrupted: stopping")
        driver.close()
        final = run.observe(_safe_scrape(worker, figures))
        _show(view, final)
    final["history"] = run.history
    return final


def _tally(board: Scoreboard, kind: str, record: dict[str, Any]) -> None:
    if kind == "decisions":
        board.on_decision(record)
    elif kind == "intents":
        board.on_intent(record)
    elif kind == "events":
        board.on_event(record)


def _show(view: Any, s: dict[str, Any]) -> None:
    if isinstance(view, Live):
        view.update(render(s), refresh=True)
    else:
        print(plain_line(s), flush=True)


def _safe_scrape(worker: WorkerProcess, previous: dict[str, Any]) -> dict[str, Any]:
    try:
        return scrape(worker.metrics_text())
    except OSError:
        return previous
