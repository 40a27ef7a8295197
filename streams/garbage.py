"""Cyclic garbage collection for a process holding many users' states.

>>> import gc
>>> before = gc.get_threshold()
>>> tune_gc(50_000); gc.get_threshold()
(50000, 20, 20)
>>> gc.set_threshold(*before)
"""

from __future__ import annotations

import gc

GC_OLDER_EVERY = 20  # an older generation is collected every 20 collections of the one below


def tune_gc(threshold: int) -> None:
    """Collect cyclic garbage less often than Python's default (every 700 allocations).

    The worker and the replay hold hundreds of thousands of long-lived containers (a few per
    user's state); with the defaults, full collections walk all of them every few seconds.
    In the benchmark (``docs/benchmark.md``, variant ``gc-default``) the worker was about a
    quarter faster with 50000, with no higher peak RSS; ``0`` keeps Python's thresholds.
    """
    if threshold:
        gc.set_threshold(threshold, GC_OLDER_EVERY, GC_OLDER_EVERY)
