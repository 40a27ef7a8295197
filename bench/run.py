"""Benchmark one pushflow worker against Faust's own ceilings, on one local broker.

One command starts an embedded broker on 127.0.0.1, pre-loads a realistic message mix, then
runs, one after the other and each as a subprocess with its own app id (consumer group):

1. ``noop``: a Faust agent that reads the inputs in batches and does nothing (its ceiling);
2. ``counter``: a per-event Faust agent with one Table counter per user;
3. ``pipeline``: ``python -m streams worker``, the full decision worker, then at half its
   measured maximum rate the candidate -> decision latency, then its state size (changelog)
   and its recovery time (a restart with the same app id, process start -> ``/readyz`` 200);
4. ``quix`` and ``bytewax``: the counter job (orjson parse, count per user) on Quix Streams and
   on Bytewax (``bench/peers.py``; skipped, and said so, without the ``bench`` extra);
5. optionally a second ``pipeline`` pass under py-spy (profiling slows the process, so the
   figures above never come from a profiled run).

Example::

    python bench/run.py --quick                      # ~20k events, a smoke check
    python bench/run.py --out bench/results/latest.json
    python bench/run.py --quick --peer-python /path/to/venv/bin/python   # peers elsewhere

The peers run in ``--peer-python`` (this interpreter by default), so Quix Streams' own pin of
confluent-kafka need not be the one the worker is measured with.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
from peers import NAMES as PEER_NAMES
from phases import (
    changelog_sizes,
    consume_all,
    metric_sum,
    offered_load,
    preload,
    time_to_ready,
)
from procs import BenchError, CpuProbe, Proc, Procs, free_port, wait_for, wait_until_quiet
from profile_summary import render, summarise
from workload import Workload

from streams.admin import TopicSpec, ensure_topics
from streams.broker import EmbeddedBroker
from streams.settings import Settings
from streams.topics import topic_specs

BENCH = Path(__file__).resolve().parent
STOP_TIMEOUT_S = 20.0  # SIGTERM -> exit; then SIGKILL (the stop time is reported)
PER_PASS_TOPICS = ("intents_topic", "decisions_topic", "dead_letters_topic", "training_topic",
                   "snapshots_topic")
# The worker with other settings, measured beside it in the same run (``--variants``).
VARIANTS = {
    "batch-100": {"PUSHFLOW_BATCH_MAX": "100"},  # smaller batches: more flushes, less waiting
    "wait-50ms": {"PUSHFLOW_BATCH_WAIT_S": "0.05"},  # fuller batches, more latency
    "gc-default": {"PUSHFLOW_GC_THRESHOLD": "0"},  # Python's own garbage collector thresholds
    "no-challengers": {"PUSHFLOW_CHALLENGERS": ""},  # the champion alone, nothing shadowed
    # the default challenger named: run with PUSHFLOW_CHALLENGERS= to measure the other order
    "one-challenger": {"PUSHFLOW_CHALLENGERS": "hashed-lr-fast"},
    # inputs record by record through Faust's agent, as before batched ingestion
    "faust-path": {"PUSHFLOW_INGESTION": "faust"},
}
PEERS = ("quix", "bytewax")  # the counter job on other frameworks (bench/peers.py)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=None, help="pre-loaded messages (150000)")
    parser.add_argument("--users", type=int, default=None, help="distinct users (100000)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--broker-kind", choices=("tansu", "noida"), default="tansu")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results (bench/results/latest.json; quick.json with --quick)")
    parser.add_argument("--quick", action="store_true", help="20k events, 10k users, short phases")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--span-hours", type=float, default=6.0,
                        help="event time covered by the preload, ending now")
    parser.add_argument("--latency-seconds", type=float, default=None, help="timed load (30)")
    parser.add_argument("--profile-seconds", type=float, default=None,
                        help="py-spy pass length (30); 0 = no profile")
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS),
                        help="also measure the worker with other settings (VARIANTS)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=("noop", "counter", *PEERS, "latency", "recovery", "profile"),
                        help="leave phases out (for experiments; the full run has them all)")
    parser.add_argument("--peer-python", default=os.environ.get("PUSHFLOW_BENCH_PEER_PYTHON",
                                                                sys.executable),
                        help="interpreter with the bench extra that runs bench/peers.py "
                             "(default: $PUSHFLOW_BENCH_PEER_PYTHON, else this one)")
    parser.add_argument("--log-dir", type=Path, default=BENCH / "results" / "logs")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each phase, wait up to this many seconds for other work "
                             "on the machine to stop (0 = do not wait)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.out = args.out or BENCH / "results" / ("quick.json" if quick else "latest.json")
    args.events = args.events or (20_000 if quick else 150_000)
    args.users = args.users or (10_000 if quick else 100_000)
    if args.latency_seconds is None:
        args.latency_seconds = 10.0 if quick else 30.0
    if args.profile_seconds is None:
        args.profile_seconds = 10.0 if quick else 30.0
    return args


class Bench:
    """State of one benchmark run: the broker, the processes, and the figures so far."""

    def __init__(self, args: argparse.Namespace, broker: EmbeddedBroker, procs: Procs) -> None:
        self.args = args
        self.broker = broker
        self.run_id = time.strftime("%H%M%S")
        self.settings = Settings(broker=broker.url, partitions=args.partitions)
        self.broker_url = broker.url
        self.procs = procs
        self.scratch = Path(tempfile.mkdtemp(prefix="pushflow-bench-"))
        self.log_dir = args.log_dir / self.run_id
        self.result: dict[str, Any] = {}
        # Messages in the input topics: the preload, then each latency phase adds its own.
        # Every pass reads them all, so each measures the same mix to the end.
        self.inputs = 0

    def deadline(self, rate_floor: float = 200) -> float:
        return 120 + self.inputs / rate_floor

    # --- processes --------------------------------------------------------------------------

    def baseline(self, kind: str) -> Proc:
        app_id, port = f"bench-{kind}-{self.run_id}", free_port()
        argv = [sys.executable, str(BENCH / "baselines.py"), kind, "--broker", self.broker_url,
                "--app-id", app_id, "--web-port", str(port), "--data-dir",
                str(self.scratch / app_id), "--partitions", str(self.args.partitions)]
        return Proc(kind, argv, port, self.log_dir / f"{kind}.log")

    def peer(self, kind: str) -> Proc:
        group, port = f"bench-{kind}-{self.run_id}", free_port()
        argv = [self.args.peer_python, str(BENCH / "peers.py"), kind, "--bootstrap",
                self.settings.bootstrap_servers, "--group", group, "--web-port", str(port),
                "--state-dir", str(self.scratch / group)]
        return Proc(kind, argv, port, self.log_dir / f"{kind}.log", tree=True)

    def pipeline(self, name: str, app_id: str, outputs_of: str | None = None,
                 variant: str | None = None) -> Proc:
        """``python -m streams worker``; output topics named after ``outputs_of`` (app_id)."""
        port = free_port()
        env = {"PUSHFLOW_SESSION_TIMEOUT_S": "6", "PUSHFLOW_LOG_LEVEL": "warning"}
        for field in PER_PASS_TOPICS:  # outputs per pass: passes never read each other's
            topic = getattr(self.settings, field)
            env[f"PUSHFLOW_{field.upper()}"] = f"{topic}-{outputs_of or app_id}"
        env.update(VARIANTS.get(variant or "", {}))
        argv = [sys.executable, "-m", "streams", "worker", "--broker", self.broker_url,
                "--app-id", app_id, "--web-port", str(port), "--partitions",
                str(self.args.partitions), "--data-dir", str(self.scratch / app_id)]
        return Proc(name, argv, port, self.log_dir / f"{name}.log", env)

    def pass_settings(self, app_id: str) -> Settings:
        return self.settings.replace(
            **{f: f"{getattr(self.settings, f)}-{app_id}" for f in PER_PASS_TOPICS})

    # --- phases -----------------------------------------------------------------------------

    def load(self) -> None:
        ensure_topics(self.settings.bootstrap_servers, topic_specs(self.settings),
                      client_config=self.settings.confluent_config(), timeout=60)
        workload = Workload(self.args.seed, self.args.users, id_prefix=f"p{self.run_id}-")
        end_ms = int(time.time() * 1000) - 60_000
        span_ms = int(self.args.span_hours * 3_600_000)
        self.result["preload"] = preload(self.settings, workload, self.args.events, span_ms, end_ms)
        self.inputs = self.args.events
        say(f"preloaded {self.result['preload']}")

    def run_baseline(self, kind: str) -> None:
        self.note_load(kind)
        proc = self.procs.start(self.baseline(kind))
        try:
            figures = consume_all(proc, _baseline_count, self.inputs, self.deadline(),
                                  self.pids(proc))
        finally:
            self.procs.stop(proc)
        self.result[kind] = figures
        say(f"{kind}: {figures}")

    def run_peer(self, kind: str) -> None:
        """The counter job on another framework; a skip or a failure is its row, not the run's."""
        reason = self.peer_check()["missing"].get(kind)
        if reason is not None:
            self.result.setdefault("peers_skipped", {})[kind] = reason
            say(f"{kind}: skipped: {reason}")
            return
        self.note_load(kind)
        proc = self.procs.start(self.peer(kind))
        try:
            figures = consume_all(proc, _baseline_count, self.inputs, self.deadline(),
                                  self.pids(proc))
            figures["counted"] = _peer_counts(proc)
            check_peer_counts(figures["counted"], self.inputs, self.result["preload"]["users"])
        except BenchError as exc:
            self.result[kind] = {"error": str(exc).splitlines()[0]}
            say(f"{kind}: FAILED: {exc}")
            return
        finally:
            self.procs.stop(proc, timeout=STOP_TIMEOUT_S)
        figures["stop"] = proc.stopped
        self.result[kind] = figures
        say(f"{kind}: {figures}")

    def peer_check(self) -> dict[str, Any]:
        """What each peer lacks in ``--peer-python``, and the versions there (asked once)."""
        if "peers_env" not in self.result:
            self.result["peers_env"] = peer_check(self.args.peer_python)
        return self.result["peers_env"]

    def note_load(self, phase: str) -> None:
        """Wait a little for a quiet machine; note how busy other work kept it."""
        foreign = wait_until_quiet(self.args.quiet_wait) if self.args.quiet_wait > 0 else None
        self.result.setdefault("foreign_cpu_before", {})[phase] = foreign

    def pids(self, proc: Proc) -> dict[str, int]:
        return {"worker": proc.pid, "broker": self.broker.pid or 0}

    def run_pipeline(self, variant: str | None = None) -> None:
        """The worker (or a variant of it): throughput, then latency at half that rate."""
        name = "pipeline" if variant is None else f"variant-{variant}"
        self.note_load(name)
        app_id = f"bench-{name}-{self.run_id}"
        proc = self.procs.start(self.pipeline(name, app_id, variant=variant))
        try:
            figures = consume_all(proc, _pipeline_count, self.inputs, self.deadline(50),
                                  self.pids(proc))
            figures["outcomes"] = _outcomes(proc)
            say(f"{name}: {figures}")
            if "latency" not in self.args.skip:
                workload = Workload(self.args.seed + 1, self.args.users,
                                    id_prefix=f"l{self.run_id}-{name}-")
                figures["latency"] = offered_load(
                    self.pass_settings(app_id), workload, figures["events_per_s"] / 2,
                    self.args.latency_seconds, warmup_s=5, pids=self.pids(proc))
                self.inputs += figures["latency"]["produced"]
                say(f"{name} latency: {figures['latency']}")
            figures["memory_kib_after_latency"] = proc.memory_kib()
        finally:
            self.procs.stop(proc, timeout=STOP_TIMEOUT_S if variant is None else 5)
        figures["stop"] = proc.stopped
        if variant is not None:
            self.result.setdefault("variants", {})[variant] = figures
            return
        self.result["latency"] = figures.pop("latency", None)
        self.result["pipeline"] = figures
        if "recovery" not in self.args.skip:
            self.recover(app_id)

    def recover(self, app_id: str) -> None:
        """State size, then a fresh worker restoring a copy of that changelog: start -> ready.

        A fresh app id (its own group) restores a record-for-record copy of the changelog, so
        the figure does not depend on how the first worker stopped (a SIGKILLed member is
        never evicted on noida, and a restart with the same group waits for the eviction).
        """
        restored_id = f"bench-recovery-{self.run_id}"
        copy = f"{restored_id}-user-state-changelog"
        spec = TopicSpec(copy, self.args.partitions, 1, {"cleanup.policy": "compact"})
        ensure_topics(self.settings.bootstrap_servers, {copy: spec},
                      client_config=self.settings.confluent_config(), timeout=60)
        self.result["state"] = changelog_sizes(self.settings, f"{app_id}-user-state-changelog",
                                               copy_to=copy)
        say(f"state: {self.result['state']}")
        restarted = self.procs.start(self.pipeline("recovery", restored_id, outputs_of=app_id))
        try:
            self.result["recovery"] = time_to_ready(restarted, deadline_s=300)
        finally:
            self.procs.stop(restarted, timeout=5)
        say(f"recovery: {self.result['recovery']}")

    def run_profile(self) -> None:
        seconds = self.args.profile_seconds
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if seconds <= 0 or not os.access(spy, os.X_OK):
            say("no profile (py-spy missing or --profile-seconds 0)")
            return
        self.note_load("profile")
        out = self.args.out.with_suffix(".profile.speedscope.json")
        proc = self.procs.start(self.pipeline("profiled", f"bench-profiled-{self.run_id}"))
        try:
            wait_for(lambda: (_pipeline_count(proc) or 0) > 0, 120, "the profiled worker")
            before = _pipeline_count(proc) or 0
            probe = CpuProbe(self.pids(proc))
            # --gil: only samples where a thread holds the GIL, i.e. Python CPU time; the
            # event loop waiting in select() and librdkafka threads do not count.
            subprocess.run([spy, "record", "--pid", str(proc.pid), "--duration", str(int(seconds)),
                            "--rate", "100", "--gil", "-f", "speedscope", "-o", str(out)],
                           check=True, capture_output=True, timeout=seconds + 60)
            read = (_pipeline_count(proc) or 0) - before
            cpu = probe.report()
        finally:
            self.procs.stop(proc, timeout=5)
        summary = summarise(out)
        self.result["profile"] = {"file": str(out), "events_during_profile": read,
                                  "seconds": seconds, "cpu": cpu, **summary}
        self.args.out.with_suffix(".profile.md").write_text(render(summary))


def _baseline_count(proc: Proc) -> int | None:
    answer = proc.get("/count")
    return None if answer is None or answer[0] != 200 else int(orjson.loads(answer[1])["count"])


def peer_check(python: str) -> dict[str, Any]:
    """``python bench/peers.py --check`` in ``python``: every peer missing if that fails."""
    try:
        done = subprocess.run([python, str(BENCH / "peers.py"), "--check"], capture_output=True,
                              timeout=120, check=True)
        found: dict[str, Any] = orjson.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, orjson.JSONDecodeError) as exc:
        why = f"{python} cannot run bench/peers.py: {str(exc).splitlines()[0]}"
        return {"python": python, "missing": dict.fromkeys(PEERS, why), "versions": {}}
    return {"python": python, **found}


def _peer_counts(proc: Proc) -> dict[str, int]:
    """The peer's final counts, once they have not moved for 2 s (a late duplicate shows)."""
    last: list[dict[str, int]] = []

    def settled() -> dict[str, int] | None:
        answer = proc.get("/count")
        now = orjson.loads(answer[1]) if answer and answer[0] == 200 else None
        last.append(now)
        return now if len(last) > 8 and all(c == now for c in last[-9:]) else None

    return wait_for(settled, 30, f"{proc.name}'s counts to settle", poll_s=0.25)


def check_peer_counts(counted: dict[str, int], events: int, users: int) -> None:
    """BenchError unless the peer counted every event once and saw every user.

    >>> check_peer_counts({"count": 10, "users": 4}, 10, 4)
    >>> check_peer_counts({"count": 12, "users": 4}, 10, 4)
    Traceback (most recent call last):
    ...
    procs.BenchError: counted 12 events of 10 (4 users of 4)
    """
    if counted.get("count") != events or counted.get("users") != users:
        raise BenchError(f"counted {counted.get('count')} events of {events} "
                         f"({counted.get('users')} users of {users})")


def _pipeline_count(proc: Proc) -> int | None:
    total = metric_sum(proc, "pushflow_input_messages_total")
    return None if total is None else int(total)


def _outcomes(proc: Proc) -> dict[str, float]:
    """Decisions by reason, ignored inputs by reason, dead letters: is the mix realistic?"""
    answer = proc.get("/metrics")
    found: dict[str, float] = {}
    if answer is None:
        return found
    for line in answer[1].decode().splitlines():
        for name in ("pushflow_decisions_total", "pushflow_ignored_messages_total",
                     "pushflow_dead_letters_total", "pushflow_input_messages_total"):
            if line.startswith(name + "{"):
                found[line.rsplit(" ", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return found


def code_version() -> dict[str, Any]:
    """The commit and the uncommitted files of streams/: the worker is under active change."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=BENCH.parent, capture_output=True, text=True)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": git("status", "--short", "--", "streams").splitlines()}


def machine(kind: str) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "faust": version("faust-streaming"), "broker": kind}


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """Pipeline over baselines, by wall-clock rate and by rate per worker CPU-second."""
    found = {}
    for suffix, field in (("", "events_per_s"), ("_per_cpu", "events_per_worker_cpu_s")):
        full = result["pipeline"][field]
        for base in ("counter", "noop", *PEERS):
            if full and (result.get(base) or {}).get(field):
                found[f"pipeline_over_{base}{suffix}"] = round(full / result[base][field], 3)
    return found


def table(result: dict[str, Any]) -> str:
    """The results table (markdown); phases left out are left out."""
    lines = ["| system | events/s | events per worker CPU-second | worker cores | broker cores "
             "| other work on machine | peak RSS MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
    systems = [("noop", "Faust take(1000) doing nothing"),
               ("counter", "Faust per-event + Table counter"),
               *((peer, PEER_NAMES[peer]) for peer in PEERS),
               ("pipeline", "pushflow worker (full pipeline)")]
    systems += [(v, f"worker, variant `{v}`") for v in result.get("variants", {})]
    for key, name in systems:
        run = result.get(key) or result.get("variants", {}).get(key)
        skipped = result.get("peers_skipped", {}).get(key)
        if skipped or (run and "error" in run):
            why = f"skipped: {skipped}" if skipped else f"failed: {run['error']}"  # type: ignore[index]
            lines.append(f"| {name} | {why} | | | | | |")
            continue
        if run is None:
            continue
        cpu = run["cpu"]
        lines.append(f"| {name} | {run['events_per_s']:,} | {run['events_per_worker_cpu_s']:,} "
                     f"| {cpu.get('cores_worker')} | {cpu.get('cores_broker')} "
                     f"| {cpu.get('foreign_share', 0):.0%} "
                     f"| {run['memory_kib'].get('VmHWM', 0) / 1024:.0f} |")
    lines += ["", "| figure | value | target |", "|---|---:|---:|"]
    lines += [row for row in (_figure_row(result, name) for name in FIGURES) if row]
    return "\n".join(lines)


def _figure_row(result: dict[str, Any], name: str) -> str:
    """One row of the figures table, or "" when its phase was left out."""
    r, pipe = result.get("ratios", {}), result["pipeline"]
    lat, state, rec = result.get("latency"), result.get("state"), result.get("recovery")
    if name == "ratios" and "pipeline_over_counter" in r and "pipeline_over_noop" in r:
        return (f"| pipeline / per-event counter (per CPU-s) | {r['pipeline_over_counter']:.2f}x "
                f"({r.get('pipeline_over_counter_per_cpu', 0):.2f}x) | >= 10x, both |\n"
                f"| pipeline / do-nothing batched (per CPU-s) | {r['pipeline_over_noop']:.2f}x "
                f"({r.get('pipeline_over_noop_per_cpu', 0):.2f}x) | >= 5x, both |")
    if name == "peers":
        return "\n".join(
            f"| pipeline / {PEER_NAMES[p]} (per CPU-s) | {r[f'pipeline_over_{p}']:.2f}x "
            f"({r.get(f'pipeline_over_{p}_per_cpu', 0):.2f}x) | |"
            for p in PEERS if f"pipeline_over_{p}" in r)
    if name == "rate":
        return f"| pipeline events/s | {pipe['events_per_s']:,} | |"
    if name == "latency" and lat:
        rows = [f"| candidate -> decision p50 / p99 at {lat['achieved_per_s']:,} ev/s (half max), "
                f"{lat['timed_candidates']:,} candidates | {lat['p50_ms']} / {lat['p99_ms']} ms "
                f"| p99 <= 250 ms (noida) |"]
        rows += [f"| variant `{v}`: p50 / p99 at half its max ({f['latency']['achieved_per_s']:,}"
                 f" ev/s) | {f['latency']['p50_ms']} / {f['latency']['p99_ms']} ms | |"
                 for v, f in result.get("variants", {}).items() if "latency" in f]
        return "\n".join(rows)
    if name == "state" and state:
        return (f"| state bytes per user (mean / p99 of latest changelog value, "
                f"{state['users']:,} users) | {state['mean_bytes']:,} / {state['p99_bytes']:,} B "
                f"| <= 2048 B |")
    if name == "recovery" and rec and state:
        return (f"| recovery: start -> /readyz 200 ({rec['recovered_users']:,} users, "
                f"{state['records']:,} changelog records) | {rec['seconds_to_ready']} s | |")
    if name == "stop":
        stop = pipe["stop"]
        return (f"| pipeline worker stop on SIGTERM | {stop.get('seconds')} s"
                f"{' then SIGKILL' if stop.get('killed') else ''} | |")
    if name == "rss":
        return (f"| peak RSS of the pipeline worker at the end "
                f"| {pipe['memory_kib_after_latency'].get('VmHWM', 0) / 1024:.0f} MiB | |")
    return ""


FIGURES = ("ratios", "peers", "rate", "latency", "state", "recovery", "stop", "rss")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    procs = Procs()
    started = time.monotonic()
    broker = EmbeddedBroker(args.broker_kind)
    try:
        with broker:
            bench = Bench(args, broker, procs)
            bench.result["machine"] = machine(broker.kind)
            bench.result["code"] = code_version()
            bench.result["params"] = {k: str(v) if isinstance(v, Path) else v
                                      for k, v in vars(args).items()}
            say(f"{broker.kind} broker at {broker.url}; logs in {bench.log_dir}")
            bench.load()
            for kind in ("noop", "counter"):
                if kind not in args.skip:
                    bench.run_baseline(kind)
            for kind in PEERS:
                if kind not in args.skip:
                    bench.run_peer(kind)
            bench.run_pipeline()
            for variant in args.variants:
                bench.run_pipeline(variant)
            if "profile" not in args.skip:
                bench.run_profile()
            bench.result["ratios"] = ratios(bench.result)
            bench.result["wall_seconds"] = round(time.monotonic() - started)
    except BenchError as exc:
        say(f"FAILED: {exc}")
        return 1
    finally:
        procs.stop_all()
        with contextlib.suppress(NameError):
            shutil.rmtree(bench.scratch, ignore_errors=True)
    args.out.write_bytes(orjson.dumps(bench.result, option=orjson.OPT_INDENT_2))
    print("\n" + table(bench.result) + f"\n\nJSON: {args.out}  ({bench.result['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
