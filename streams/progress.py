"""Progress of the long commands (evaluate, simulate, replay, convert), always on stderr,
and the checks that let them fail before the long part rather than after it.

stdout stays for the figures a command prints (tables, JSON). The bar shows only on a
terminal: under ``docker compose`` or CI a bar's carriage returns make one endless log line,
so there the commands say what they did in one final line instead.

>>> with bar(total=3, desc="demo") as b:  # not a terminal under pytest: no bar
...     b.disable
True
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm


def on_terminal() -> bool:
    return sys.stderr.isatty()


def bar(total: float | None, desc: str, unit: str = "it", enabled: bool | None = None,
        **options: Any) -> tqdm:
    """A tqdm bar on stderr; ``enabled=None`` shows it only when stderr is a terminal."""
    shown = on_terminal() if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not shown,
                dynamic_ncols=True, **options)


def check_writable(path: Path | None, option: str) -> None:
    """A usage error now, not after a long run, when ``path`` cannot be written."""
    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise click.BadParameter(f"cannot write {path}: {folder} is not a writable directory",
                                 param_hint=repr(option))


def done(message: str) -> None:
    """The final line of a command: what it did."""
    print(message, file=sys.stderr, flush=True)
