"""Same outputs, how much faster: the replay of one log by two versions of the code.

``git archive`` puts ``REV``'s ``streams/`` and ``schemas/`` in a temporary directory; each
version replays the same log (``bench/replay_speed.py``, one core) with every decision,
intent and training example written out, then the replay report. The check fails unless
both files are byte-identical; the speed of each is measured in the same run, alternating,
so the ratio is what to read on a busy machine (events per CPU-second above all: on a shared
machine the wall clock also counts the time other processes held the core).

Usage::

    python bench/replay_same.py --base main            # exit 1 if any output differs
    python bench/replay_same.py --base main --rounds 3 --input other.jsonl
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
SPEED = ROOT / "bench" / "replay_speed.py"


def export(rev: str, into: Path) -> Path:
    """``rev``'s pure core and schemas, extracted under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "streams", "schemas"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run(tree: Path, args: list[str]) -> dict[str, Any]:
    """``replay_speed.py`` with ``tree``'s ``streams`` first on the path; its JSON figures."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, str(SPEED), "--json", *args], env=env, check=True,
                          capture_output=True, text=True)
    return dict(orjson.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="the revision to compare with")
    parser.add_argument("--input", type=Path, default=None, help="replay log (default: the mix)")
    parser.add_argument("--rounds", type=int, default=2, help="timed replays of each version")
    args = parser.parse_args()
    common = [] if args.input is None else ["--input", str(args.input)]
    with tempfile.TemporaryDirectory(prefix="replay-same-") as scratch:
        base = export(args.base, Path(scratch) / "base")
        out = Path(scratch)
        trees = {"base": base, "head": ROOT}
        for name, tree in trees.items():
            run(tree, [*common, "--repeat", "0", "--outputs-out", str(out / f"{name}.jsonl"),
                       "--report-out", str(out / f"{name}.report.json")])
        same = all(filecmp.cmp(out / f"base{ext}", out / f"head{ext}", shallow=False)
                   for ext in (".jsonl", ".report.json"))
        lines = (out / "head.jsonl").read_bytes().count(b"\n")
        speed: dict[str, list[tuple[int, int]]] = {name: [] for name in trees}
        for _ in range(max(1, args.rounds)):
            for name, tree in trees.items():
                figures = run(tree, common)
                speed[name].append((figures["events_per_cpu_s"], figures["events_per_s"]))
    best = {name: max(rates) for name, rates in speed.items()}
    print(f"outputs ({lines:,} records) and report: {'identical' if same else 'DIFFERENT'}")
    for name in trees:
        rounds = ", ".join(f"{cpu:,} ({wall:,})" for cpu, wall in speed[name])
        print(f"{name:5} ({args.base if name == 'base' else 'work tree'}): {best[name][0]:,} "
              f"events per CPU-s, {best[name][1]:,} events/s (rounds: {rounds})")
    print(f"head / base: {best['head'][0] / best['base'][0]:.2f}x per CPU-s, "
          f"{best['head'][1] / best['base'][1]:.2f}x events/s")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
