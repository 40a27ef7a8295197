"""Click options for Settings fields, shared by every command that takes them.

>>> import click
>>> @click.command()
... @setting_flags([("threshold", float, "Send threshold")])
... def show(threshold):
...     print(threshold)
>>> show.main(["--threshold", "0.2"], standalone_mode=False)
0.2
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

Flag = tuple[str, type, str]


def setting_flags(flags: Sequence[Flag]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding ``--name`` (default None, so the environment decides) per flag."""

    def decorate(fun: Callable[..., Any]) -> Callable[..., Any]:
        for name, kind, help_text in reversed(flags):
            flag = "--" + name.replace("_", "-")
            fun = click.option(flag, name, type=kind, default=None, help=help_text)(fun)
        return fun

    return decorate
