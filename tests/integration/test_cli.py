"""The ``pushflow`` commands as a new user meets them: run as subprocesses, wrong on purpose.

A mistake (a URL without ``kafka://``, a number out of range, a file that is not a log), a
broker where nothing listens (a port just bound and released on 127.0.0.1) or a host that
resolves nowhere (a name under ``.invalid``, RFC 2606) must end in one or two lines on
stderr that say what is wrong, exit code 2 (usage) or 1 (runtime), no traceback, and no
more time than the command's timeout allows. The last tests run the commands that work and
check their final line.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.settings import Settings
from streams.topics import topic_specs
from streams.traffic import DELIVERY_TIMEOUT_MS

from .conftest import Deployment

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 2.0
# Interpreter start and imports (Faust's are the slowest) on a loaded 2-core machine, on top
# of the command's own timeout; the failures this guards against took 15 to 61 s.
START_SLACK_S = 12.0


def run(*args: str, env: dict[str, str] | None = None, limit: float = 120.0
        ) -> tuple[subprocess.CompletedProcess[str], float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PUSHFLOW_")}
    environ.update(env or {})
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "streams", *args], capture_output=True,
                          text=True, env=environ, cwd=ROOT, timeout=limit)
    return done, time.monotonic() - started


def lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]


def assert_clean_failure(done: subprocess.CompletedProcess[str], code: int,
                         elapsed: float | None = None, timeout: float = TIMEOUT_S) -> str:
    """One or two stderr lines, the exit code, no traceback, within the timeout."""
    said = lines(done.stderr)
    assert done.returncode == code, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert 1 <= len(said) <= 2, f"{len(said)} lines on stderr:\n" + "\n".join(said[:20])
    if elapsed is not None:
        assert elapsed < timeout + START_SLACK_S, f"took {elapsed:.1f}s"
    return done.stderr


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A loopback port where nothing listens: bound, read and released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


BROKER_COMMANDS = {
    "worker": ["worker", "--startup-timeout-s", str(TIMEOUT_S)],
    "demo": ["demo", "--startup-timeout-s", str(TIMEOUT_S)],
    "simulate": ["simulate", "--startup-timeout-s", str(TIMEOUT_S)],
    "topics create": ["topics", "create", "--timeout", str(TIMEOUT_S)],
}


@pytest.mark.parametrize("command", ["demo", "simulate", "topics create", "worker"])
def test_a_broker_url_without_its_scheme_is_one_usage_line(command: str) -> None:
    done, _ = run(*command.split(), "--broker", "localhost:9092")
    said = assert_clean_failure(done, 2)
    assert "kafka://host:port" in said and "'localhost:9092'" in said


@pytest.mark.parametrize("command", list(BROKER_COMMANDS))
def test_a_broker_where_nothing_listens_is_one_error_within_the_timeout(
    command: str, closed_port: int, tmp_path: Path
) -> None:
    done, elapsed = run(*BROKER_COMMANDS[command], "--broker", f"kafka://127.0.0.1:{closed_port}",
                        env={"PUSHFLOW_DATA_DIR": str(tmp_path)})
    said = assert_clean_failure(done, 1, elapsed)
    assert f"127.0.0.1:{closed_port}" in lines(said)[-1]
    assert "PUSHFLOW_BROKER" in lines(said)[-1]


@pytest.mark.parametrize("command", list(BROKER_COMMANDS))
def test_a_broker_host_that_resolves_nowhere_is_one_error_within_the_timeout(
    command: str, tmp_path: Path
) -> None:
    done, elapsed = run(*BROKER_COMMANDS[command], "--broker", "kafka://pushflow.invalid:9092",
                        env={"PUSHFLOW_DATA_DIR": str(tmp_path)})
    said = assert_clean_failure(done, 1, elapsed)
    assert "'pushflow.invalid' does not resolve" in said


def test_librdkafka_lines_are_json_like_the_rest(closed_port: int) -> None:
    done, elapsed = run(*BROKER_COMMANDS["topics create"],
                        "--broker", f"kafka://127.0.0.1:{closed_port}",
                        env={"PUSHFLOW_LOG_FORMAT": "json"})
    assert_clean_failure(done, 1, elapsed)
    records = [orjson.loads(line) for line in lines(done.stderr)]
    assert {r["logger"] for r in records} == {"librdkafka", "pushflow"}, records
    assert "Connection refused" in records[0]["message"]


@pytest.mark.parametrize("args", [
    ["evaluate", "--users", "-5"],
    ["evaluate", "--days", "0"],
    ["evaluate", "--days", "2", "--warmup-days", "2"],
    ["evaluate", "--jobs", "0"],
    ["simulate", "--broker", "kafka://127.0.0.1:9", "--users", "0"],
    ["simulate", "--broker", "kafka://127.0.0.1:9", "--speed", "-1"],
    ["demo", "--duration", "0"],
    ["topics", "create", "--broker", "kafka://127.0.0.1:9", "--timeout", "0"],
    ["worker", "--partitions", "0"],
    ["worker", "--broker", "kafka://127.0.0.1:99999"],
    ["replay", "--window", "0", "-"],
    ["convert", "obd", "--limit", "0"],
], ids=" ".join)
def test_a_number_out_of_range_is_one_usage_line(args: list[str]) -> None:
    done, _ = run(*args)
    assert_clean_failure(done, 2)
    assert done.stdout == ""


def test_replay_of_a_file_that_is_not_a_log_fails(tmp_path: Path) -> None:
    log = tmp_path / "impressions.csv"
    log.write_text("timestamp,item_id,position,click\n2019-11-24,3,1,0\n2019-11-24,7,2,1\n")
    done, _ = run("replay", str(log))
    said = assert_clean_failure(done, 1)
    assert "none of its 3 lines is a pushflow message" in said and "docs/replay.md" in said


@pytest.mark.parametrize("command", [["evaluate", "--quick"], ["replay", "-"]], ids=" ".join)
def test_a_report_that_cannot_be_written_fails_before_the_run(
    command: list[str], tmp_path: Path
) -> None:
    done, _ = run(*command, "--report-json", str(tmp_path / "missing" / "report.json"))
    assert "not a writable directory" in assert_clean_failure(done, 2)


def test_replay_of_a_missing_file_is_one_usage_line(tmp_path: Path) -> None:
    done, _ = run("replay", str(tmp_path / "missing.jsonl"))
    assert "does not exist" in assert_clean_failure(done, 2)


@pytest.mark.parametrize("content", [b"not a tar archive", None], ids=["not-tar", "wrong-csv"])
def test_convert_of_a_wrong_file_is_one_usage_line(tmp_path: Path, content: bytes | None) -> None:
    if content is None:
        data = tmp_path / "obd"
        for name in ("all.csv", "item_context.csv"):
            (data / "random" / "all").mkdir(parents=True, exist_ok=True)
            (data / "random" / "all" / name).write_text("a,b\n1,2\n")
    else:
        data = tmp_path / "obd.tar.gz"
        data.write_bytes(content)
    done, _ = run("convert", "obd", "--data", str(data), "-o", str(tmp_path / "out.jsonl"))
    assert str(data) in assert_clean_failure(done, 2)


def test_evaluate_ends_with_what_it_did() -> None:
    done, _ = run("evaluate", "--users", "30", "--days", "1", "--warmup-days", "0.5",
                  "--jobs", "1", "--policy", "send-everything")
    assert done.returncode == 0, done.stderr
    assert lines(done.stderr)[-1].startswith("evaluate: 1 policies, 30 users, 1 simulated days")
    assert lines(done.stdout)[0].startswith("policy"), done.stdout


def test_simulate_against_a_running_broker_sends_and_says_so(deployment: Deployment) -> None:
    env = {**deployment.env, "PUSHFLOW_BROKER": str(deployment.settings.broker)}
    # 3 s at 600x is 30 simulated minutes from now: with 50 users some hours of the day have
    # no activity event in them at all; 500 users have at least 126 at every hour
    done, _ = run("simulate", "--duration", "3", "--users", "500", "--speed", "600", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    final = lines(done.stderr)[-1]
    assert "simulate: sent " in final and " 0 events" not in final, final


def test_simulate_exits_non_zero_when_its_broker_goes_away() -> None:
    """Traffic flows, then the broker stops: the simulator must not go on looking healthy."""
    with EmbeddedBroker("tansu") as broker:
        settings = Settings.from_env({}, broker=broker.url, partitions=1)
        ensure_topics(settings.bootstrap_servers, topic_specs(settings), timeout=30)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PUSHFLOW_")}
        sim = subprocess.Popen(
            [sys.executable, "-m", "streams", "simulate", "--broker", broker.url,
             "--users", "50", "--speed", "600"],
            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=environ)
        try:
            wait_until(lambda: sim.poll() is not None or events_on(settings) > 0, 60,
                       "the simulator's first events")
            assert sim.poll() is None, sim.communicate()[1]
            broker.stop()
            started = time.monotonic()
            code = sim.wait(timeout=DELIVERY_TIMEOUT_MS / 1000 + 60)
            elapsed = time.monotonic() - started
        finally:
            if sim.poll() is None:
                sim.kill()
                sim.wait()
    stderr = sim.stderr.read() if sim.stderr else ""
    assert code == 1, stderr[-3000:]
    assert "not being delivered" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert elapsed < DELIVERY_TIMEOUT_MS / 1000 + 30, f"took {elapsed:.0f}s"


def events_on(settings: Settings) -> int:
    """Records on the user-events topic (high watermark of its one partition)."""
    consumer = Consumer({**settings.confluent_config(), "group.id": "test-cli-watermark"})
    try:
        partition = TopicPartition(settings.topic("user_events_topic"), 0)
        return int(consumer.get_watermark_offsets(partition, timeout=5)[1])
    finally:
        consumer.close()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.2)
