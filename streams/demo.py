"""``pushflow demo``: the whole loop on one machine with one command.

Starts an embedded broker (unless one is given), creates the topics, runs a worker as a child
process, and drives simulated users against it: they produce activity and candidates, receive
the intents and answer with opens, dismissals and disables drawn from their hidden truth. A
live summary is printed; the final figures can be written as JSON.
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

from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker, _free_port
from streams.errors import BrokerError
from streams.settings import Settings
from streams.simulator import Population
from streams.topics import topic_specs
from streams.traffic import TrafficDriver

log = logging.getLogger("pushflow")
REFRESH_S = 2.0


@dataclass(frozen=True)
class DemoOptions:
    duration: float | None = None
    users: int = 2000
    speed: float = 120.0
    seed: int = 7
    summary_json: Path | None = None
    broker_kind: str | None = None


class WorkerProcess:
    """A ``pushflow worker`` child process with its own log file and metrics port."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        env: dict[str, str] | None = None,
        name: str = "worker",
    ) -> None:
        self.port = _free_port()
        self.log_path = workdir / f"{name}.log"
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
    figures: dict[str, Any] = {"labeled_examples": 0.0, "learned": 0.0, "ignored": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pushflow_ignored_messages_total":
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


def summary(
    driver: TrafficDriver, worker_figures: dict[str, Any], elapsed: float
) -> dict[str, Any]:
    stats = driver.population.stats
    intents = driver.received["intents"]
    return {
        "elapsed_s": round(elapsed, 1),
        "simulated_hours": round((driver.sim_now_ms - driver.sim_start_ms) / 3_600_000, 2),
        "events": driver.sent["events"],
        "candidates": driver.sent["candidates"],
        "events_per_s": round((driver.sent["events"] + driver.sent["candidates"]) / elapsed, 1),
        "intents": intents,
        "opens": stats["opens"],
        "dismissals": stats["dismissals"],
        "disables": stats["disables"],
        "open_rate": round(stats["opens"] / intents, 4) if intents else None,
        "dead_letters": driver.received["dead_letters"],
        "labeled_examples": int(worker_figures.get("labeled_examples", 0)),
        "model_version": int(worker_figures.get("version", 0)),
        "rolling_auc": _finite(worker_figures.get("rolling_auc")),
        "log_loss": _finite(worker_figures.get("log_loss")),
        "calibration_error": _finite(worker_figures.get("calibration_error")),
        "decisions_by_reason": dict(sorted(driver.decisions_by_reason.items())),
    }


def _finite(value: Any) -> float | None:
    if value is None or value != value:  # NaN before the first labels of both classes
        return None
    return round(float(value), 4)


def status_line(s: dict[str, Any]) -> str:
    reasons = " ".join(f"{k}={v}" for k, v in s["decisions_by_reason"].items())
    auc = "-" if s["rolling_auc"] is None else f"{s['rolling_auc']:.3f}"
    return (
        f"[{s['elapsed_s']:6.0f}s | sim +{s['simulated_hours']:5.1f}h] "
        f"events {s['events']} ({s['events_per_s']:.0f}/s) candidates {s['candidates']} "
        f"intents {s['intents']} opens {s['opens']} dismissals {s['dismissals']} "
        f"disables {s['disables']} dead_letters {s['dead_letters']} "
        f"labels {s['labeled_examples']} model v{s['model_version']} auc {auc} | {reasons}"
    )


def run_demo(settings: Settings, options: DemoOptions) -> dict[str, Any]:
    """Run until ``options.duration`` passes (or Ctrl-C); return the final summary."""
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pushflow-demo-")))
        if settings.broker is None:
            broker = stack.enter_context(EmbeddedBroker(options.broker_kind))
            settings = settings.replace(broker=broker.url)
            log.info("embedded %s broker at %s", broker.kind, broker.url)
        ensure_topics(settings.bootstrap_servers, topic_specs(settings),
                      client_config=settings.confluent_config(),
                      timeout=settings.startup_timeout_s)
        worker = WorkerProcess(settings, workdir, env=_demo_env(settings))
        stack.callback(worker.stop)
        worker.wait_ready()
        log.info("worker ready; metrics on http://127.0.0.1:%d/metrics", worker.port)
        final = _drive(settings, worker, options)
    if options.summary_json is not None:
        options.summary_json.write_bytes(orjson.dumps(final, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(final, option=orjson.OPT_INDENT_2).decode())
    return final


def _demo_env(settings: Settings) -> dict[str, str]:
    # The demo compresses days into minutes: snapshot often so learning shows quickly.
    # Simulated time runs ahead of the wall clock, so the future bound is widened too.
    env = {"PUSHFLOW_SNAPSHOT_EVERY": "25", "PUSHFLOW_SNAPSHOT_INTERVAL_S": "5",
           "PUSHFLOW_TICK_INTERVAL_S": "1", "PUSHFLOW_MAX_FUTURE_S": str(10 * 365 * 86400)}
    return {k: v for k, v in env.items() if k not in os.environ}


def _drive(settings: Settings, worker: WorkerProcess, options: DemoOptions) -> dict[str, Any]:
    population = Population(seed=options.seed, n_users=options.users,
                            start_ms=int(time.time() * 1000))
    driver = TrafficDriver(settings, population, options.speed, from_beginning=True)
    started = last = time.monotonic()
    figures: dict[str, Any] = {}
    try:
        while options.duration is None or time.monotonic() - started < options.duration:
            driver.step()
            if time.monotonic() - last >= REFRESH_S:
                last = time.monotonic()
                figures = _safe_scrape(worker, figures)
                print(status_line(summary(driver, figures, last - started)), flush=True)
    except KeyboardInterrupt:
        log.info("interrupted: stopping")
    driver.close()
    figures = _safe_scrape(worker, figures)
    return summary(driver, figures, time.monotonic() - started)


def _safe_scrape(worker: WorkerProcess, previous: dict[str, Any]) -> dict[str, Any]:
    try:
        return scrape(worker.metrics_text())
    except OSError:
        return previous
