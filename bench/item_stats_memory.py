"""Memory of item statistics at N items: what every worker holds (the followed table) and what
an owner holds (its table of records), measured as RSS growth in a fresh process.

    python bench/item_stats_memory.py --items 1000000

Prints one JSON line per side; docs/item-stats.md quotes it.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(side: str, items: int) -> dict[str, object]:
    from streams.item_stats import OPEN, SEND, ItemStats, ItemStatsTable

    gc.collect()
    before = rss_mib()
    start = time.perf_counter()
    if side == "follower":
        table = ItemStatsTable(max_items=items)
        for i in range(items):
            key = f"content:v-{i:09d}" if i % 5 else f"creator:cr-{i:09d}"
            table.put(key, ItemStats(1_000_000 + i, [3.0, 1.0, 0.0]))
        held = len(table)
    else:  # the owner's table: item key -> record bytes, as Faust keeps it
        owned: dict[bytes, bytes] = {}
        for i in range(items):
            stats = ItemStats(1_000_000 + i)
            stats.add(SEND, 1_000_000 + i, 6 * 3_600_000)
            stats.add(OPEN, 1_000_000 + i, 6 * 3_600_000)
            owned[f"content:v-{i:09d}".encode()] = stats.to_bytes()
        held = len(owned)
    elapsed = time.perf_counter() - start
    gc.collect()
    grown = rss_mib() - before
    return {"side": side, "items": held, "rss_growth_mib": round(grown, 1),
            "bytes_per_item": round(grown * 2**20 / held), "seconds": round(elapsed, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--side", choices=("follower", "owner"))
    args = parser.parse_args()
    if args.side:
        print(json.dumps(measure(args.side, args.items)))
        return
    for side in ("follower", "owner"):  # each in a fresh process: RSS does not shrink
        subprocess.run([sys.executable, __file__, "--items", str(args.items), "--side", side],
                       check=True)


if __name__ == "__main__":
    main()
