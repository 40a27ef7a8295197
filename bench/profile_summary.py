"""Summarise a py-spy speedscope profile of the worker: top functions and where time goes.

Two views of the same samples:

- **self by package**: the file of the innermost frame (who burns the CPU: Faust, aiokafka,
  asyncio, fastjsonschema, River, ...);
- **by stage**: the innermost frame that belongs to a known stage of the worker (parse,
  features, scoring, changelog write, emit, ...); for a sample outside our code, the Faust or
  aiokafka task it runs in (consumer hand-off, stream iteration, changelog publisher, sender).

Usage::

    python bench/profile_summary.py bench/results/latest.profile.speedscope.json
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

# (group, regex on "file:function"); the first rule that matches wins.
PACKAGE_RULES = [
    ("parse/validation (contracts, fastjsonschema)",
     r"streams/contracts\.py|fastjsonschema|<string>:validate"),
    ("features (streams.features, attribution)", r"streams/(features|attribution)\.py"),
    ("River scoring (river, streams.model)", r"/river/|streams/model\.py"),
    ("policy + decider", r"streams/(policy|pipeline|guardrails|outbox|sendtime|obd)\.py"),
    ("snapshot follower thread (streams.snapshots)", r"streams/snapshots\.py"),
    ("pushflow app glue (streams.app, metrics)", r"streams/(app|metrics)\.py"),
    ("prometheus_client", r"prometheus_client"),
    ("aiokafka", r"/aiokafka/|/kafka/"),
    ("Faust + mode machinery", r"/faust/|/mode/"),
    ("asyncio event loop", r"/asyncio/|selectors\.py|uvloop"),
    ("datetime / zoneinfo", r"zoneinfo|datetime"),
    ("other stdlib (incl. dataclass-generated code)", r"/lib/python3\.\d+/|<frozen|<string>"),
    ("pushflow, other modules", r"streams/"),
]
# A sample's stage: the innermost frame matching STAGE_RULES (our code, and what it calls);
# failing that, the outermost frame matching MACHINERY_RULES (the Faust or aiokafka task or
# thread it runs in, such as the one publishing buffered changelog records).
STAGE_RULES = [
    ("changelog: table set + state_to_bytes (in handle)",
     r"features\.py:state_to_bytes$|app\.py:_dumps$"
     r"|faust/tables/.*:(__setitem__|send_changelog|on_key_set|_maybe_set_key_ttl)$"),
    ("table get (+ state_from_bytes)",
     r"state_from_bytes$|app\.py:_loads$|faust/tables/.*:(get|__getitem__)$"),
    ("parse + schema validation", r"streams/contracts\.py:(parse_user_event|parse_candidate)$"),
    ("JSON encoding of outputs", r"streams/contracts\.py:encode$"),
    ("River scoring", r"streams/model\.py:(p_open|p_disable)$"),
    ("model learning + snapshots (trainer)",
     r"streams/model\.py:(learn|clone|to_snapshot)$"
     r"|streams/training\.py|streams/app\.py:_train_agent$"),
    ("features", r"streams/features\.py:(model_features|observe_activity)$"),
    ("policy", r"streams/policy\.py:decide$|streams/(guardrails|outbox|sendtime)\.py"),
    ("attribution / ticks in decider", r"streams/pipeline\.py:on_tick$|streams/attribution\.py"),
    ("decider (rest: scoring glue, records, intent ids)", r"streams/pipeline\.py"),
    ("metrics (prometheus_client)",
     r"prometheus_client|streams/app\.py:(_count_input|_count_output|_observe_decision)$"),
    ("write states and outputs (confluent-kafka produce, flush waits)",
     r"streams/app\.py:(_write|_dead_letter)$|streams/producer\.py|confluent_kafka"),
    ("redelivery bookkeeping", r"streams/redelivery\.py|streams/app\.py:(_reemit|_outputs)$"),
    ("timers: tick / gauges / snapshot",
     r"streams/app\.py:(_tick\w*|_update_gauges|_snapshot\w*)$"),
    ("handle (rest)", r"streams/app\.py:(handle_batch|_apply\w*|_track|_parse)$"),
]
MACHINERY_RULES = [
    ("changelog: publish (Faust ProducerBuffer task -> aiokafka)",
     r"faust/transport/producer\.py:(_handle_pending|_send_pending)$"),
    ("aiokafka producer sender task (batches -> socket)", r"aiokafka/producer/sender\.py"),
    ("Faust consumer -> stream hand-off (fetcher, conductor)",
     r"faust/transport/(consumer|conductor)\.py"),
    ("aiokafka consumer thread (fetch, decode)", r"mode/threads\.py|aiokafka/consumer/"),
    ("Faust stream iteration + acks", r"faust/agents/|faust/streams\.py|faust/channels\.py"),
    ("Faust monitor sensor", r"faust/sensors/"),
    ("Faust web (metrics scrapes)", r"faust/web/|aiohttp/|prometheus_client"),
    ("timers (mode)", r"mode/timers\.py"),
    ("Faust aiokafka driver (other)", r"faust/transport/drivers/aiokafka\.py"),
]


def _compile(rules: list[tuple[str, str]]) -> list[tuple[str, re.Pattern[str]]]:
    return [(name, re.compile(pattern)) for name, pattern in rules]


def _label(frame: dict[str, Any]) -> str:
    """``file:function`` without the class (py-spy names methods ``Class.method``)."""
    return f"{frame.get('file', '?')}:{str(frame['name']).rsplit('.', 1)[-1]}"


def _short_file(frame: dict[str, Any]) -> str:
    path = str(frame.get("file", "?"))
    for marker in ("site-packages/", "/main/", "/lib/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _short(frame: dict[str, Any]) -> str:
    """Function and file, without the line: py-spy makes one frame per line executed."""
    return f"{frame['name']} ({_short_file(frame)})"


def _stacks(profile: dict[str, Any]) -> list[tuple[list[int], float, str]]:
    """(frame indices root -> leaf, weight, thread) of every sample in every thread."""
    stacks = []
    for thread in profile["profiles"]:
        weights = thread.get("weights") or [1] * len(thread["samples"])
        name = thread.get("name", "?").split('"')[1] if '"' in thread.get("name", "") else "?"
        stacks += [(stack, w, name) for stack, w in zip(thread["samples"], weights, strict=True)
                   if stack]  # py-spy without --gil also records idle samples, with no frames
    return stacks


def _classify(labels: list[str], rules: list[tuple[str, re.Pattern[str]]],
              default: str) -> list[str]:
    found = []
    for label in labels:
        found.append(next((name for name, rx in rules if rx.search(label)), default))
    return found


def summarise(path: Path, top: int = 40) -> dict[str, Any]:
    """Shares (0..1) of samples by package, by stage, and the top functions."""
    profile = orjson.loads(path.read_bytes())
    frames = profile["shared"]["frames"]
    labels = [_label(f) for f in frames]
    package_of = _classify(labels, _compile(PACKAGE_RULES), "other")
    stage_of = _classify(labels, _compile(STAGE_RULES), "")
    machinery_of = _classify(labels, _compile(MACHINERY_RULES), "")
    function_of = [_short(f) for f in frames]
    stacks = _stacks(profile)
    total = sum(w for _, w, _ in stacks) or 1.0
    views: dict[str, defaultdict[Any, float]] = {
        name: defaultdict(float) for name in ("thread", "package", "file", "stage", "self", "all")
    }
    for stack, weight, thread in stacks:
        leaf = stack[-1]
        # Our stages: innermost wins (what our code was doing); Faust's and aiokafka's own
        # tasks: outermost wins (which task it is: the changelog publisher, the sender...).
        stage = next((stage_of[i] for i in reversed(stack) if stage_of[i]), "") or next(
            (machinery_of[i] for i in stack if machinery_of[i]), "")
        views["thread"][thread] += weight
        views["package"][package_of[leaf]] += weight
        views["file"][_short_file(frames[leaf])] += weight
        views["stage"][stage or f"other: {package_of[leaf]}"] += weight
        views["self"][function_of[leaf]] += weight
        for function in {function_of[i] for i in stack}:
            views["all"][function] += weight

    def shares(name: str, limit: int | None = None, key: Any = str) -> list[tuple[str, float]]:
        ranked = sorted(views[name].items(), key=lambda kv: -kv[1])[:limit]
        return [(key(k), round(v / total, 4)) for k, v in ranked]

    return {
        "sampled_seconds": round(total, 2),
        "by_thread": shares("thread"),
        "by_package_self": shares("package"),
        "by_file_self": shares("file", top),
        "by_stage": shares("stage"),
        "top_self": shares("self", top),
        "top_total": shares("all", top),
    }


def render(summary: dict[str, Any]) -> str:
    """Markdown tables of :func:`summarise`."""
    out = [f"{summary['sampled_seconds']} s of samples holding the GIL\n"]
    for title, key in (("By thread", "by_thread"),
                       ("Self time by package", "by_package_self"),
                       ("Self time by file", "by_file_self"),
                       ("Time by stage (innermost stage frame)", "by_stage"),
                       ("Top functions by self time", "top_self"),
                       ("Top functions by total time", "top_total")):
        out += [f"\n**{title}**\n", "| | share |", "|---|---:|"]
        rows = summary[key]
        if key == "top_total":  # the entry points and the event loop are in every sample
            rows = [(name, share) for name, share in rows if share < 0.9]
        out += [f"| {name} | {share:.1%} |" for name, share in rows]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Summarise a py-spy speedscope profile.")
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    print(render(summarise(args.profile, args.top)))


if __name__ == "__main__":
    main()
