"""Click options for Settings fields, shared by every command that takes them.

Each ``--name`` also reads ``PUSHFLOW_NAME`` (shown in ``--help``), so the help says where
a setting can come from; Settings applies the same variable when the flag is absent.

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

from streams.settings import ENV_PREFIX

Flag = tuple[str, type, str]


def setting_flags(flags: Sequence[Flag]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding ``--name`` (default None: the environment decides) per flag."""

    def decorate(fun: Callable[..., Any]) -> Callable[..., Any]:
        for name, kind, help_text in reversed(flags):
            flag = "--" + name.replace("_", "-")
            fun = click.option(flag, name, type=kind, default=None, help=help_text,
                               envvar=ENV_PREFIX + name.upper(), show_envvar=True)(fun)
        return fun

    return decorate
