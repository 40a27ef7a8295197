"""Run it like production: a real Prometheus scrapes a worker on a real broker.

The first test starts a Prometheus server (Debian package ``prometheus``; .ci/run installs it)
on a free loopback port with a generated config that scrapes one worker every second and loads
the repository's alert rules, and waits until the HTTP API answers with the worker's figures.
It also lints the exposition with ``promtool check metrics`` and checks that every label value
comes from a closed set.

The other tests share one longer run (two workers, a rebalance, a restart, JSON logs) and check
what it left behind: the consumer-lag series and the log.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.admin import ensure_topics
from streams.demo import WorkerProcess
from streams.settings import Settings
from streams.topics import topic_specs

from .conftest import BROKER_KINDS, TEST_ENV, Deployment
from .test_decision_loop import activity, candidate

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
INPUT_FIELDS = ("user_events_topic", "candidates_topic")
MALFORMED = b'{"user_id": "mallory", "type": '

pytestmark = [
    pytest.mark.integration,
    # One broker kind is enough here: noida starts fastest.
    pytest.mark.parametrize("broker", [p for p in BROKER_KINDS if p.id == "noida"], indirect=True),
]
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus/promtool not on PATH (Debian package prometheus; .ci/run installs it)",
)
T = TypeVar("T")


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """The first truthy result of ``probe``, polled until the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            last = probe()
            if last:
                return last
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:.0f}s; last seen {last!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# ----------------------------------------------------------------------------- Prometheus


@dataclass
class Prometheus:
    """A Prometheus server process and its HTTP API."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = get(f"{self.url}{path}{query}")
        reply = orjson.loads(body)
        assert status == 200 and reply["status"] == "success", reply
        return reply["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return list(self.api("/api/v1/query", query=promql)["result"])

    def value(self, promql: str) -> float | None:
        """The value of a single-series query, None while it has no result."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])


@contextlib.contextmanager
def prometheus_scraping(worker: WorkerProcess, workdir: Path) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, scraping only ``worker`` every second."""
    assert PROMETHEUS is not None
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{
            "job_name": "pushflow",
            "static_configs": [{"targets": [f"127.0.0.1:{worker.port}"]}],
        }],
    }))
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
        )
    server = Prometheus(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited:\n{server.log_tail()}"
            return get(f"{server.url}/-/ready", timeout=1)[0] == 200

        eventually(ready, "prometheus ready", timeout=30)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ------------------------------------------------------------------- closed label values


def schema_enum(schema: str, prop: str) -> set[str]:
    document = orjson.loads((SCHEMAS / f"{schema}.schema.json").read_bytes())
    return set(document["properties"][prop]["enum"])


def allowed_label_values(settings: Settings) -> dict[str, Callable[[str, str], bool]]:
    """label -> check(metric name, value): every value comes from a closed set."""
    topics = {settings.topic(f) for f in INPUT_FIELDS}
    partitions = {str(p) for p in range(settings.partitions)}
    actions = schema_enum("notification-decision", "action")
    reasons = schema_enum("notification-decision", "reason")
    codes = schema_enum("dead-letter", "error_code")
    outcomes = schema_enum("training-example", "outcome") | {"processed", "ignored", "dead_letter"}
    code_like = re.compile(r"[a-z][a-z_]{0,31}")  # an ignore reason: a constant of the core
    return {
        "topic": lambda name, v: v in topics,
        "partition": lambda name, v: v in partitions,
        "action": lambda name, v: v in actions,
        "reason": lambda name, v: (
            v in reasons if "decisions" in name else bool(code_like.fullmatch(v))),
        "error_code": lambda name, v: v in codes,
        "outcome": lambda name, v: v in outcomes or (
            name.startswith("pushflow_item_feedback") and v in {"send", "open", "dismiss"}),
        "explore": lambda name, v: v in {"true", "false"},
        "clock": lambda name, v: v in {"event", "processing"},
        "table": lambda name, v: v == "user-state",
        "model": lambda name, v: v in {settings.model, *settings.challengers.split()},
        "role": lambda name, v: v in {"champion", "challenger"},
        "le": lambda name, v: bool(re.fullmatch(r"[0-9.e+-]+|\+Inf", v)),
    }


def unbounded_labels(exposition: str, settings: Settings) -> list[tuple[str, str, str]]:
    allowed = allowed_label_values(settings)
    found = []
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if not sample.name.startswith("pushflow_"):
                continue  # the client's process/runtime collectors: bounded by construction
            for label, value in sample.labels.items():
                check = allowed.get(label)
                if check is None or not check(sample.name, value):
                    found.append((sample.name, label, value))
    return found


# ------------------------------------------------------------------------ the scrape test


@needs_prometheus
def test_prometheus_scrapes_the_worker(deployment: Deployment, tmp_path: Path) -> None:
    worker = deployment.start_worker()
    users = [f"prom-user-{i}" for i in range(4)]
    deployment.produce([
        *(m for u in users for m in (*activity(u, 3), candidate(u, f"c-{u}"))),
        ("user_events_topic", b"mallory", MALFORMED),
    ])
    with prometheus_scraping(worker, tmp_path) as prom:
        def decisions() -> float | None:
            value = prom.value("sum(pushflow_decisions_total)")
            return value if value is not None and value >= len(users) else None

        decided = eventually(decisions, "Prometheus has a decision per user")
        ready = eventually(lambda: prom.query("pushflow_ready == 1"), "pushflow_ready == 1")
        by_reason = prom.query("sum by (action, reason) (pushflow_decisions_total)")
        print("query sum(pushflow_decisions_total) ->", decided)
        print("query sum by (action, reason) ->", orjson.dumps(by_reason).decode())
        print("query pushflow_ready == 1 ->", orjson.dumps(ready).decode())
        assert ready[0]["metric"]["job"] == "pushflow"
        assert ready[0]["metric"]["instance"] == f"127.0.0.1:{worker.port}"
        letters = prom.query("sum by (error_code) (pushflow_dead_letters_total)")
        assert {r["metric"]["error_code"]: float(r["value"][1]) for r in letters} == {
            "invalid_json": 1.0}

        (target,) = prom.api("/api/v1/targets", state="active")["activeTargets"]
        print("target ->", orjson.dumps(target).decode())
        assert target["health"] == "up" and target["lastError"] == ""
        assert target["scrapeUrl"] == f"http://127.0.0.1:{worker.port}/metrics"
        assert prom.value('up{job="pushflow"}') == 1.0

        def rules_evaluated() -> list[dict[str, Any]]:
            rules = [r for g in prom.api("/api/v1/rules")["groups"] for r in g["rules"]]
            return rules if all(r["health"] != "unknown" for r in rules) else []

        rules = eventually(rules_evaluated, "alert rules evaluated", timeout=30)
        unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert len(rules) >= 9 and unhealthy == []

    exposition = worker.metrics_text()
    assert PROMTOOL is not None
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition.encode(),
                          capture_output=True, timeout=60, check=False)
    print("promtool check metrics ->", lint.returncode, lint.stdout.decode(), lint.stderr.decode())
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), (
        lint.stdout.decode() + lint.stderr.decode())
    assert unbounded_labels(exposition, deployment.settings) == []
    assert not [u for u in users if u in exposition], "a user id reached /metrics"

    base = f"http://127.0.0.1:{worker.port}"
    assert get(f"{base}/healthz") == (200, orjson.dumps({"status": "ok"}))
    status, body = get(f"{base}/readyz")
    assert (status, orjson.loads(body)) == (200, {"ready": True})


# ------------------------------------------------- two workers, a rebalance and a restart

BAD_INPUTS = 20
# A mode/Faust service step (also under streams.app for the _SendErrors sensor) or a rebalance.
SERVICE_STEP = re.compile(r"\]: (Starting|Stopping)\.\.\.$|^Executing _on_partitions_assigned$")
Lag = dict[tuple[str, str], float]


@dataclass
class Run:
    """What the longer run left behind."""

    settings: Settings
    logs: dict[str, list[str]] = field(default_factory=dict)
    users: int = 0
    lag_during_rebalance: dict[str, Lag] = field(default_factory=dict)
    keys_during_rebalance: dict[str, float] = field(default_factory=dict)
    lag_after_restart: Lag = field(default_factory=dict)


def lag_of(worker: WorkerProcess) -> Lag:
    return {
        (s.labels["topic"], s.labels["partition"]): s.value
        for family in text_string_to_metric_families(worker.metrics_text())
        for s in family.samples
        if s.name == "pushflow_consumer_lag"
    }


def count(worker: WorkerProcess, name: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(worker.metrics_text())
        for s in family.samples
        if s.name == name
    )


def all_partitions(settings: Settings) -> set[tuple[str, str]]:
    return {(settings.topic(f), str(p)) for f in INPUT_FIELDS for p in range(settings.partitions)}


def last_within(probe: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
    """Poll ``probe`` until ``done`` holds or the deadline passes; the last value either way."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.5)
        value = probe()
    return value


@pytest.fixture(scope="module")
def two_worker_run(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """w1 decides (bad input included), w2 joins and leaves, both stop, w3 restarts the group.
    Every worker logs JSON."""
    workdir = tmp_path_factory.mktemp("observability")
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    env = {**TEST_ENV, "PUSHFLOW_TOPIC_PREFIX": prefix,
           "PUSHFLOW_APP_ID": f"pushflow-{prefix.rstrip('-')}", "PUSHFLOW_LOG_FORMAT": "json"}
    settings = Settings.from_env(env, broker=broker.url)
    ensure_topics(settings.bootstrap_servers, topic_specs(settings), timeout=30)
    deployment = Deployment(settings=settings, env=env, workdir=workdir)
    result = Run(settings)
    everything = all_partitions(settings)
    try:
        w1 = deployment.start_worker("w1")
        users = [f"obs-user-{i}" for i in range(10)]
        deployment.produce([
            *(m for u in users for m in (*activity(u, 3), candidate(u, f"c-{u}"))),
            *(("user_events_topic", b"mallory", MALFORMED) for _ in range(BAD_INPUTS)),
        ])
        eventually(lambda: count(w1, "pushflow_decisions_total") >= len(users)
                   and count(w1, "pushflow_dead_letters_total") >= BAD_INPUTS, "w1 decided")
        w2 = deployment.start_worker("w2")

        def both() -> dict[str, Lag]:
            return {"w1": lag_of(w1), "w2": lag_of(w2)}

        def settled(lags: dict[str, Lag]) -> bool:
            owned = [set(lag) for lag in lags.values()]
            split = all(owned) and not owned[0] & owned[1] and owned[0] | owned[1] == everything
            return split and not any(v for lag in lags.values() for v in lag.values())

        result.lag_during_rebalance = last_within(both, settled, timeout=15)
        result.users = len(users)
        result.keys_during_rebalance = last_within(
            lambda: {w.log_path.stem: count(w, "pushflow_table_keys") for w in (w1, w2)},
            lambda keys: all(keys.values()) and sum(keys.values()) == len(users), timeout=10)
        w2.stop()
        w1.stop()
        w3 = deployment.start_worker("w3")
        result.lag_after_restart = last_within(
            lambda: lag_of(w3), lambda lag: set(lag) == everything and not any(lag.values()),
            timeout=12)
        w3.stop()
    finally:
        for worker in deployment.workers:
            worker.stop()
    result.logs = {w.log_path.stem: w.log_path.read_text(errors="replace").splitlines()
                   for w in deployment.workers}
    yield result


def json_objects(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON object of every line, ignoring any bytes before its first brace."""
    return [orjson.loads(line[line.index("{"):]) for line in lines if "{" in line]


def test_every_log_record_has_ts_level_logger_message(two_worker_run: Run) -> None:
    for name, lines in two_worker_run.logs.items():
        records = json_objects(lines)
        assert records, name
        assert all({"ts", "level", "logger", "message"} <= set(r) for r in records), name
        assert {r["level"] for r in records} <= {"debug", "info", "warning", "error", "critical"}


def test_every_log_line_is_exactly_one_json_object(two_worker_run: Run) -> None:
    for name, lines in two_worker_run.logs.items():
        bad = [line for line in lines if not line.startswith("{") or not line.endswith("}")]
        assert bad == [], name


def test_bad_input_is_not_logged_once_per_message(two_worker_run: Run) -> None:
    records = json_objects(two_worker_run.logs["w1"])
    per_message = [r for r in records if r["level"] != "debug" and "dead letter" in r["message"]]
    assert len(per_message) < BAD_INPUTS // 4


def test_faust_service_steps_are_not_logged_at_info(two_worker_run: Run) -> None:
    records = json_objects(two_worker_run.logs["w1"])
    chatter = [r["message"] for r in records
               if r["level"] == "info" and SERVICE_STEP.search(r["message"])]
    assert chatter == []


def test_the_lifecycle_is_logged_by_pushflow(two_worker_run: Run) -> None:
    records = json_objects(two_worker_run.logs["w1"])
    ours = [r["message"].lower() for r in records if r["level"] == "info"
            and (r["logger"] == "pushflow" or r["logger"].startswith("streams"))
            and not SERVICE_STEP.search(r["message"])]
    missing = [event for event, pattern in (
        ("start", r"\bstart"), ("assignment", r"assign|revok"), ("ready", r"\bready\b"),
        ("stop", r"\bstop"),
    ) if not any(re.search(pattern, message) for message in ours)]
    assert missing == []


def test_each_input_partition_reports_its_lag_on_one_worker(two_worker_run: Run) -> None:
    owned = {name: set(lag) for name, lag in two_worker_run.lag_during_rebalance.items()}
    assert all(owned.values()), two_worker_run.lag_during_rebalance
    assert not owned["w1"] & owned["w2"], two_worker_run.lag_during_rebalance
    assert owned["w1"] | owned["w2"] == all_partitions(two_worker_run.settings)
    lags = two_worker_run.lag_during_rebalance
    assert not any(v for lag in lags.values() for v in lag.values()), (
        lags, log_tails(two_worker_run, "w1", "w2"))


def test_table_keys_add_up_across_workers(two_worker_run: Run) -> None:
    keys = two_worker_run.keys_during_rebalance
    assert all(keys.values()), keys
    assert sum(keys.values()) == two_worker_run.users, keys


def test_lag_is_zero_after_a_restart_with_nothing_to_do(two_worker_run: Run) -> None:
    assert set(two_worker_run.lag_after_restart) == all_partitions(two_worker_run.settings)
    assert not any(two_worker_run.lag_after_restart.values()), (
        two_worker_run.lag_after_restart, log_tails(two_worker_run, "w1", "w2", "w3"))


def log_tails(run: Run, *names: str, lines: int = 15) -> str:
    """What the workers said last: enough to tell a slow rebalance from a lost commit."""
    return "\n".join(f"--- {name}\n" + "\n".join(run.logs.get(name, [])[-lines:])
                     for name in names)
