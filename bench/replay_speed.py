"""How fast the pure core replays the bench mix: `pushflow replay`'s loop, in-process, one core.

The mix is :mod:`bench.workload`'s (85% activity, 10% candidates, 5% feedback), written once as
a replay log of envelopes (``docs/replay.md``) with event times spread over ``--span-hours``
before a fixed end, so two runs, or two versions of the code, read the same bytes. The replay
is :class:`streams.replay.Replayer` with the default settings, as ``pushflow replay`` drives it;
the process is pinned to one core.

Usage::

    python bench/replay_speed.py                       # 150k events, 100k users: events/s
    python bench/replay_speed.py --outputs-out out.jsonl  # every step's outputs, for diffing
    python bench/replay_speed.py --profile-out replay.pstats  # cProfile, summarised by package

It imports ``streams`` from ``sys.path`` as is, so ``PYTHONPATH=<tree>`` times another tree
(``bench/replay_same.py`` does that to compare two commits).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_summary import PACKAGE_RULES  # noqa: E402
from workload import Workload, preload_times  # noqa: E402

from streams.config import decider_config, fresh_model  # noqa: E402
from streams.pipeline import StepOutput  # noqa: E402
from streams.replay import Replayer, ReplayOptions  # noqa: E402
from streams.settings import Settings  # noqa: E402

try:
    from streams.garbage import tune_gc
except ImportError:  # a revision whose replay left Python's thresholds as they were

    def tune_gc(threshold: int) -> None:
        pass

END_MS = 1_767_225_600_000 + 18 * 3_600_000  # 2026-01-01T18:00Z: a fixed end, so fixed bytes
DEFAULT_INPUT = Path(__file__).resolve().parent / "results" / "replay-mix.jsonl"


def write_mix(path: Path, events: int, users: int, seed: int, span_hours: float) -> None:
    """The bench mix as a replay log: one envelope per message, in event-time order."""
    workload = Workload(seed, users)
    span_ms = int(span_hours * 3_600_000)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for at_ms in preload_times(END_MS - span_ms, span_ms, events):
            topic, key, value = workload.next_message(at_ms)
            out.write(b'{"topic":"%s","key":"%s","value":%s}\n' % (topic.encode(), key, value))


def _output_writer(out: BinaryIO) -> Callable[[StepOutput], None]:
    """Every decision, intent and training example of a step, one JSON line each."""
    def write(step: StepOutput) -> None:
        for kind, records in (("decision", step.decisions), ("intent", step.intents),
                              ("example", step.examples)):
            for record in records:
                out.write(orjson.dumps([kind, record]) + b"\n")
    return write


def replay_lines(lines: list[bytes], outputs: BinaryIO | None = None,
                 profile: cProfile.Profile | None = None) -> dict[str, Any]:
    """Replay ``lines`` as ``pushflow replay`` does with default settings; figures and report."""
    settings = Settings()
    options = ReplayOptions(int(settings.tick_interval_s * 1000), settings.max_message_bytes,
                            user_ttl_ms=settings.user_ttl_s * 1000)
    sink = None if outputs is None else _output_writer(outputs)
    replayer = Replayer(decider_config(settings), fresh_model(settings), options, sink)
    gc.collect()
    started_cpu, started = time.process_time(), time.perf_counter()
    if profile is not None:
        profile.enable()
    for line in lines:
        replayer.feed(line)
    if profile is not None:
        profile.disable()
    fed, fed_cpu = time.perf_counter() - started, time.process_time() - started_cpu
    report = replayer.finish()
    if outputs is not None:  # and the state every user ends in
        for user_id in sorted(replayer.states):
            out = ["state", replayer.states[user_id]]
            outputs.write(orjson.dumps(out, option=orjson.OPT_NON_STR_KEYS) + b"\n")
    return {
        "lines": len(lines),
        "feed_seconds": round(fed, 3),
        "feed_cpu_seconds": round(fed_cpu, 3),
        "events_per_s": round(len(lines) / fed),
        "events_per_cpu_s": round(len(lines) / fed_cpu),
        "finish_seconds": round(time.perf_counter() - started - fed, 3),
        "report": report.to_dict(),
    }


def package_shares(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Self time by package (``bench/profile_summary.py``'s groups), as shares of the total."""
    rules = [(name, re.compile(rx)) for name, rx in PACKAGE_RULES]
    totals: defaultdict[str, float] = defaultdict(float)
    for (file, _, function), row in stats.stats.items():  # type: ignore[attr-defined]
        label = f"{file}:{function}"
        group = next((name for name, rx in rules if rx.search(label)), None)
        if group is None:
            group = "builtins (orjson, dict, ...)" if file == "~" else "other"
        totals[group] += row[2]
    whole = sum(totals.values()) or 1.0
    return sorted(((k, v / whole) for k, v in totals.items()), key=lambda kv: -kv[1])


def profile_summary(stats: pstats.Stats, top: int) -> str:
    """Markdown: self time by package, then the top functions by self and by total time."""
    rows = stats.stats  # type: ignore[attr-defined]
    whole = sum(r[2] for r in rows.values()) or 1.0
    out = [f"{whole:.2f} s of profiled time (cProfile)\n", "**Self time by package**\n",
           "| | share |", "|---|---:|"]
    out += [f"| {name} | {share:.1%} |" for name, share in package_shares(stats)]
    for title, column in (("Top functions by self time", 2), ("Top functions by total time", 3)):
        out += [f"\n**{title}**\n", "| | calls | share |", "|---|---:|---:|"]
        ranked = sorted(rows.items(), key=lambda kv: -kv[1][column])[:top]
        for (file, line, function), row in ranked:
            where = f"{_short(file)}:{line}" if file != "~" else "builtin"
            out.append(f"| {function} ({where}) | {row[1]:,} | {row[column] / whole:.1%} |")
    return "\n".join(out) + "\n"


def _short(file: str) -> str:
    for marker in ("site-packages/", "/streams/", "/lib/python3"):
        if marker in file:
            tail = file.split(marker, 1)[1]
            return ("streams/" if marker == "/streams/" else "") + tail
    return file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT,
                        help="the replay log (written first if absent or with --write)")
    parser.add_argument("--write", action="store_true", help="(re)write the log")
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--span-hours", type=float, default=6.0)
    parser.add_argument("--repeat", type=int, default=1, help="replays; the best is reported")
    parser.add_argument("--cpu", type=int, default=None, help="core to pin to (default: last)")
    parser.add_argument("--outputs-out", type=Path, default=None,
                        help="write every decision, intent and example here (JSONL)")
    parser.add_argument("--report-out", type=Path, default=None,
                        help="write the replay report here (JSON)")
    parser.add_argument("--profile-out", type=Path, default=None,
                        help="profile one replay with cProfile; pstats here, summary beside it")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    if args.write or not args.input.exists():
        write_mix(args.input, args.events, args.users, args.seed, args.span_hours)
    tune_gc(Settings().gc_threshold)  # as pushflow replay does
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {args.cpu if args.cpu is not None else cpus[-1]})
    lines = args.input.read_bytes().splitlines(keepends=True)

    best: dict[str, Any] | None = None
    for _ in range(max(1, args.repeat)):
        figures = replay_lines(lines)
        if best is None or figures["events_per_cpu_s"] > best["events_per_cpu_s"]:
            best = figures
    assert best is not None
    if args.outputs_out is not None:
        with args.outputs_out.open("wb") as out:
            replay_lines(lines, out)
    if args.report_out is not None:
        args.report_out.write_bytes(orjson.dumps(best["report"], option=orjson.OPT_INDENT_2))
    if args.profile_out is not None:
        profile = cProfile.Profile()
        replay_lines(lines, profile=profile)
        profile.dump_stats(args.profile_out)
        summary = profile_summary(pstats.Stats(str(args.profile_out)), args.top)
        args.profile_out.with_suffix(".md").write_text(summary)
        print(summary)
    figures = {k: v for k, v in best.items() if k != "report"}
    figures["messages"] = best["report"]["messages"]
    figures["decisions"] = sum(best["report"]["decisions"].values())
    if args.json:
        print(orjson.dumps(figures).decode())
    else:
        print(f"replay: {figures['lines']:,} lines in {figures['feed_seconds']} s: "
              f"{figures['events_per_s']:,} events/s ({figures['events_per_cpu_s']:,} per "
              f"CPU-s), report {figures['finish_seconds']} s")


if __name__ == "__main__":
    main()
