"""The demo's live view: a rich layout on a terminal, short periodic lines elsewhere.

Both are drawn from the demo's summary dict (``streams.demo.summary``), so what the screen
shows is what ``--summary-json`` writes.

>>> import io
>>> from rich.console import Console
>>> console = Console(record=True, width=120, file=io.StringIO())
>>> console.print(render(example_summary()))
>>> "warming up" in console.export_text()
True
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

WARMUP_LABELS = 200  # below this many labels AUC and calibration are mostly noise


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


def header(s: dict[str, Any]) -> Text:
    """What runs, against what, how fast, for how long."""
    return Text.assemble(
        ("pushflow demo", "bold"),
        f"  broker {s['broker']}  ·  {s['users']} users  ·  speed {s['speed']:g}x  ·  "
        f"elapsed {_clock(s['elapsed_s'])} (simulated +{s['simulated_hours']:.1f} h)  ·  "
        f"metrics {s['metrics_url']}",
    )


def traffic_table(s: dict[str, Any]) -> Table:
    table = Table(title="traffic", title_justify="left", expand=True)
    table.add_column("")
    table.add_column("total", justify="right")
    table.add_column("per s now", justify="right")
    table.add_column("per s avg", justify="right")
    for name in ("events", "candidates"):
        table.add_row(name, str(s[name]), f"{s['rates_now'][name]:.0f}", f"{s['rates'][name]:.0f}")
    for name in ("intents", "opens", "dismissals", "disables", "dead_letters"):
        table.add_row(name.replace("_", " "), str(s[name]), "", "")
    return table


def decisions_table(s: dict[str, Any]) -> Table:
    """One row per final reason; held pushes are ``held`` until released or dropped."""
    decided = sum(s["decisions_by_reason"].values())
    table = Table(title="decisions (latest per candidate)", title_justify="left", expand=True)
    table.add_column("reason")
    table.add_column("candidates", justify="right")
    table.add_column("share", justify="right")
    for reason, n in sorted(s["decisions_by_reason"].items(), key=lambda kv: -kv[1]):
        table.add_row(reason, str(n), f"{n / decided:.1%}" if decided else "")
    table.add_section()
    table.add_row("decided", str(decided), "", style="bold")
    table.add_row("in flight", str(max(0, s["candidates"] - decided)), "")
    return table


def model_table(s: dict[str, Any]) -> Table:
    """Prequential figures with the labels behind them, and how the model moves."""
    table = Table(title="model (prequential)", title_justify="left", expand=True)
    table.add_column("")
    table.add_column("value", justify="right")
    m = s["model"]
    table.add_row("version", f"v{m['version']}  ({m['versions_per_min']:.1f}/min)")
    table.add_row("labels", f"{m['labels']}  (window {m['window_labels']})")
    if m["warming_up"]:
        wait = f"warming up ({m['labels']}/{WARMUP_LABELS} labels)"
        for name in ("AUC", "log loss", "calibration (ECE)"):
            table.add_row(name, wait)
    else:
        table.add_row("AUC", _num(m["rolling_auc"]))
        table.add_row("log loss", _num(m["log_loss"]))
        table.add_row("calibration (ECE)", _num(m["calibration_error"]))
    windows = " ".join(_num(w["auc"], 2) for w in m["auc_windows"][-6:]) or "-"
    table.add_row("AUC every 500 labels", windows)
    table.add_row("AUC trend", m["auc_trend"] or "-")
    return table


def groups_table(s: dict[str, Any]) -> Table:
    """Model-decided pushes against the holdout group's send-everything baseline."""
    table = Table(title="open rate: model vs holdout", title_justify="left", expand=True)
    table.add_column("group")
    table.add_column("pushes", justify="right")
    table.add_column("opens", justify="right")
    table.add_column("open rate", justify="right")
    table.add_column("95% CI", justify="right")
    for name, g in s["groups"].items():
        ci = g.get("ci95")
        interval = "-" if ci is None else f"{ci[0]:.2f}-{ci[1]:.2f}"
        table.add_row(name, str(g["pushes"]), str(g["opens"]), _num(g["open_rate"]), interval)
    lift = s["open_rate_lift"]
    table.add_section()
    table.add_row("lift", "", "", "-" if lift is None else f"{lift:.2f}x", "", style="bold")
    return table


def render(s: dict[str, Any]) -> RenderableType:
    """The whole dashboard for one summary."""
    grid = Table.grid(expand=True, padding=(0, 1))
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(traffic_table(s), decisions_table(s))
    grid.add_row(model_table(s), groups_table(s))
    return Panel(Group(header(s), grid), title="pushflow demo", border_style="blue")


def plain_line(s: dict[str, Any]) -> str:
    """One short status line, for a log or a pipe."""
    m, g = s["model"], s["groups"]
    auc = "warming up" if m["warming_up"] else _num(m["rolling_auc"])
    return (
        f"[{s['elapsed_s']:5.0f}s sim +{s['simulated_hours']:4.1f}h] "
        f"events {s['events']} ({s['rates_now']['events']:.0f}/s) "
        f"candidates {s['candidates']} ({s['rates_now']['candidates']:.0f}/s) "
        f"decided {sum(s['decisions_by_reason'].values())} intents {s['intents']} "
        f"opens {s['opens']} | open rate model {_num(g['model']['open_rate'])} "
        f"holdout {_num(g['holdout']['open_rate'])} | v{m['version']} labels {m['labels']} "
        f"auc {auc}"
    )


def example_summary() -> dict[str, Any]:
    """A summary as the demo makes it one second in: no labels yet."""
    return {
        "broker": "kafka://127.0.0.1:9092 (embedded tansu)", "users": 2000, "speed": 120.0,
        "elapsed_s": 1.0, "simulated_hours": 0.03, "metrics_url": "http://127.0.0.1:6066/metrics",
        "events": 120, "candidates": 10, "intents": 4, "opens": 0, "dismissals": 0,
        "disables": 0, "dead_letters": 0,
        "rates": {"events": 120.0, "candidates": 10.0},
        "rates_now": {"events": 120.0, "candidates": 10.0},
        "decisions_by_reason": {"above_threshold": 3, "held": 2, "holdout_send": 1},
        "groups": {"model": {"pushes": 3, "opens": 0, "open_rate": 0.0, "ci95": [0.0, 0.5615]},
                   "holdout": {"pushes": 1, "opens": 0, "open_rate": 0.0,
                               "ci95": [0.0, 0.7935]}},
        "open_rate_lift": None,
        "model": {"version": 0, "versions_per_min": 0.0, "labels": 0, "window_labels": 0,
                  "warming_up": True, "rolling_auc": None, "log_loss": None,
                  "calibration_error": None, "auc_windows": [], "auc_trend": ""},
    }
