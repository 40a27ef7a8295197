"""Self-contained HTML reports of a replay, an evaluation or a demo run (``--html PATH``).

Each plot is drawn with matplotlib and embedded as inline SVG, so the page opens anywhere,
offline, with nothing else beside it. matplotlib is an optional dependency (the ``report``
extra); :func:`require_plotting` says how to install it. The plots are fed by the report
dicts the commands already make (``ReplayReport.to_dict()``, ``evaluate()``, the demo's
summary); a plot whose data is missing is drawn with a note saying so, never left out.

>>> from streams.dashboard import example_summary
>>> page = render_html(demo_report({**example_summary(), "history": [], "reliability": []}))
>>> page.count('<figure id="plot-')
4
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

INSTALL_HINT = "pip install 'pushflow[report]'"
PLOT_IDS = ("reliability", "learning", "decisions", "open-rate")
MAX_POINTS = 400  # per time series: the page stays small however long the demo ran


def require_plotting() -> None:
    """Raise a one-line ClickException when matplotlib (the ``report`` extra) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.ClickException(
            f"--html needs matplotlib, which is not installed: {INSTALL_HINT}") from None


@dataclass
class Plot:
    """One figure of a report: its id, title, caption and a function drawing it on axes."""

    id: str
    title: str
    caption: str
    draw: Callable[[Any], None]


@dataclass
class Report:
    title: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)


def write_report(path: Path, report: Report) -> None:
    path.write_text(render_html(report), encoding="utf-8")


def render_html(report: Report) -> str:
    """The whole page: a facts table and one ``<figure>`` with inline SVG per plot."""
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in report.facts)
    figures = "".join(
        f'<figure id="plot-{p.id}"><h2>{html.escape(p.title)}</h2>{_svg(p)}'
        f"<figcaption>{html.escape(p.caption)}</figcaption></figure>"
        for p in report.plots)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(report.title)}</h1><table class=\"facts\">{facts}</table>"
        f"{figures}</body></html>\n"
    )


_CSS = ("body{font-family:sans-serif;max-width:60rem;margin:2rem auto;color:#222}"
        "table.facts{border-collapse:collapse}table.facts th{text-align:left;padding-right:1rem}"
        "figure{margin:2rem 0}figure svg{max-width:100%;height:auto}"
        "figcaption{color:#555;font-size:.9rem}")


def _svg(plot: Plot) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # Fixed ids and no date: the same data gives the same page (a diffable example report).
    with matplotlib.rc_context({"svg.hashsalt": plot.id, "svg.fonttype": "none"}):
        figure = Figure(figsize=(7.5, 3.6))
        plot.draw(figure.add_subplot())
        figure.tight_layout()
        out = io.StringIO()
        figure.savefig(out, format="svg", metadata={"Date": None})
    text = out.getvalue()
    return text[text.index("<svg"):]


def _no_data(ax: Any, why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="#777")
    ax.set_xticks([])
    ax.set_yticks([])


# --- the plots ---------------------------------------------------------------------------


def reliability_plot(bins: list[dict[str, Any]], what: str) -> Plot:
    """Predicted p_open against the observed open rate, per bin; the diagonal is perfect."""

    def draw(ax: Any) -> None:
        if not bins:
            return _no_data(ax, "no labels yet")
        ax.plot([0, 1], [0, 1], ls="--", color="#999", label="perfectly calibrated")
        sizes = [20 + 200 * b["n"] / max(c["n"] for c in bins) for b in bins]
        ax.scatter([b["mean_p"] for b in bins], [b["open_rate"] for b in bins], s=sizes,
                   label="bins (area: labels)")
        ax.plot([b["mean_p"] for b in bins], [b["open_rate"] for b in bins])
        top = max(0.05, *(max(b["mean_p"], b["open_rate"]) for b in bins)) * 1.1
        ax.set_xlim(0, min(1, top))
        ax.set_ylim(0, min(1, top))
        ax.set(xlabel="predicted p_open", ylabel="observed open rate")
        ax.legend(loc="upper left")

    n = sum(b["n"] for b in bins)
    return Plot("reliability", "Reliability diagram",
                f"{what}; {n} labels in {len(bins)} bins.", draw)


def learning_plot(points: list[dict[str, Any]], what: str) -> Plot:
    """Prequential AUC (left axis) and log loss (right axis) against labels seen."""

    def draw(ax: Any) -> None:
        if not points:
            return _no_data(ax, "no labels yet")
        xs = [p["labels"] for p in points]
        ax.plot(xs, [_nan(p["rolling_auc"]) for p in points], color="C0", label="AUC")
        ax.axhline(0.5, ls=":", color="#999")
        ax.set(xlabel="labels", ylabel="AUC")
        ax.set_ylim(0.3, 1.0)
        right = ax.twinx()
        right.plot(xs, [_nan(p["log_loss"]) for p in points], color="C1", label="log loss")
        right.set_ylabel("log loss")
        ax.legend(loc="upper left")
        right.legend(loc="upper right")

    return Plot("learning", "AUC and log loss over labels", what, draw)


def decisions_plot(times: list[float], by_reason: list[dict[str, int]], unit: str,
                   what: str) -> Plot:
    """Stacked decisions by reason per time step."""

    def draw(ax: Any) -> None:
        if not times:
            return _no_data(ax, "no decisions yet")
        reasons = sorted({r for row in by_reason for r in row},
                         key=lambda r: -sum(row.get(r, 0) for row in by_reason))
        ax.stackplot(times, *[[row.get(r, 0) for row in by_reason] for r in reasons],
                     labels=reasons)
        ax.set(xlabel=unit, ylabel="decisions")
        ax.legend(loc="upper left", fontsize="small", ncol=2)

    return Plot("decisions", "Decisions by reason over time", what, draw)


def open_rate_plot(times: list[float], series: dict[str, list[float | None]], unit: str,
                   what: str) -> Plot:
    """Open rate of each group (model vs holdout, or policy vs policy) over time."""

    def draw(ax: Any) -> None:
        if not times or not any(v is not None for s in series.values() for v in s):
            return _no_data(ax, "no pushes yet")
        for name, values in series.items():
            ax.plot(times, [_nan(v) for v in values], marker=".", label=name)
        ax.set(xlabel=unit, ylabel="open rate")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left")

    return Plot("open-rate", "Open rate: model vs holdout", what, draw)


def policies_plot(policies: dict[str, dict[str, Any]]) -> Plot:
    """Opens per push and pushes per user-day of each evaluated policy."""

    def draw(ax: Any) -> None:
        names = list(policies)
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [policies[n]["opens_per_push"] for n in names], 0.4,
               label="opens per push", color="C0")
        ax.set_xticks(list(xs), names, rotation=15)
        ax.set_ylabel("opens per push")
        right = ax.twinx()
        right.bar([x + 0.2 for x in xs], [policies[n]["pushes_per_user_day"] for n in names],
                  0.4, label="pushes per user-day", color="C2")
        right.set_ylabel("pushes per user-day")
        ax.legend(loc="upper left")
        right.legend(loc="upper right")

    rows = ", ".join(f"{n} {p['opens']} opens / {p['pushes']} pushes"
                     for n, p in policies.items())
    return Plot("policies", "Policy comparison", f"Measured after the warm-up: {rows}.", draw)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _rate(opens: int, pushes: int) -> float | None:
    return opens / pushes if pushes else None


# --- the three reports -------------------------------------------------------------------


def replay_report(r: dict[str, Any], source: str) -> Report:
    """From ``ReplayReport.to_dict()``."""
    p, t = r.get("prequential", {}), r.get("timeline", {})
    hours = sorted(int(h) for h in t.get("decisions", {}))
    times = [(h - hours[0]) / 24 for h in hours] if hours else []
    groups = t.get("groups", {})
    slots = sorted(int(h) for h in groups)
    rates = {name: [_rate(groups[str(h)].get(name, [0, 0])[1], groups[str(h)].get(name, [0, 0])[0])
                    for h in slots] for name in ("model", "holdout")}
    facts = [("log", source), ("lines", str(r.get("lines"))),
             ("decisions", _pairs(r.get("decisions", {}))), ("intents", str(r.get("intents"))),
             ("labels", _pairs(r.get("labels", {}))),
             ("AUC (window)", _fmt(p.get("rolling_auc"))), ("log loss", _fmt(p.get("log_loss"))),
             ("ECE", _fmt(p.get("calibration_error")))]
    return Report(f"pushflow replay: {source}", facts, [
        reliability_plot(p.get("reliability", []), f"Last {p.get('window', 0)} labels"),
        learning_plot(r.get("learning_curve", []),
                      f"Rolling over the last {p.get('window', 0)} labels, scored before learning"),
        decisions_plot(times, [t["decisions"][str(h)] for h in hours], "days (event time)",
                       "Decision records per event-time hour (a held push is counted when held "
                       "and again when released)."),
        open_rate_plot([(h - slots[0]) / 24 for h in slots] if slots else [], rates,
                       "days (event time)",
                       "Labeled pushes opened per event-time hour of decision, by the user's "
                       "group."),
    ])


def evaluate_report(e: dict[str, Any]) -> Report:
    """From ``evaluate()``: the full policy's learning, and every policy's figures."""
    policies = e["policies"]
    learner = next((n for n in ("full", "full-volume", "fixed-threshold") if n in policies), None)
    full = policies.get(learner or "", {})
    # Pushes held past the end of the run fall on a day after it, with no time to be opened.
    days = sorted({int(d) for row in policies.values() for d in row.get("by_day", {})
                   if int(d) < e["options"]["days"]})
    rates = {name: [_rate(*reversed(row["by_day"].get(str(d), [0, 0]))) for d in days]
             for name, row in policies.items() if name in ("full", "send-everything")}
    o = e["options"]
    facts = [("users", str(o["users"])), ("days", f"{o['days']:g} (warm-up {o['warmup_days']:g})"),
             ("seed", str(o["seed"]))]
    facts += [(f"target {k}", "-" if v is None else "met" if v else "NOT met")
              for k, v in e.get("targets", {}).items()]
    what = f"The {learner} policy after the warm-up" if learner else "no learning policy ran"
    return Report("pushflow evaluate", facts, [
        policies_plot(policies),
        reliability_plot(full.get("reliability", []), what),
        learning_plot(full.get("learning_curve", []), what + ", last 5000 labels"),
        decisions_plot([float(d) for d in days],
                       [full.get("reasons_by_day", {}).get(str(d), {}) for d in days],
                       "simulated day", f"Decisions of the {learner} policy per simulated day."),
        open_rate_plot([float(d) for d in days], rates, "simulated day",
                       "Opens per push by send day: the full policy against send-everything "
                       "(the holdout group's policy, for everyone)."),
    ])


def demo_report(s: dict[str, Any]) -> Report:
    """From the demo's final summary (with its ``history``, one row per refresh)."""
    h = _thin(s.get("history", []), MAX_POINTS)
    minutes = [row["elapsed_s"] / 60 for row in h]
    learning = [{"labels": row["labels"], "rolling_auc": row["rolling_auc"],
                 "log_loss": row["log_loss"]} for row in h if row["rolling_auc"] is not None]
    g = s.get("groups", {})
    facts = [("broker", str(s.get("broker"))), ("users", str(s.get("users"))),
             ("elapsed", f"{s.get('elapsed_s')} s (simulated +{s.get('simulated_hours')} h)"),
             ("events / candidates", f"{s.get('events')} / {s.get('candidates')}"),
             ("decisions", _pairs(s.get("decisions_by_reason", {}))),
             ("open rate model / holdout", " / ".join(
                 _fmt(g.get(n, {}).get("open_rate")) for n in ("model", "holdout"))),
             ("AUC", _fmt(s.get("rolling_auc"))), ("model version", str(s.get("model_version")))]
    return Report("pushflow demo", facts, [
        reliability_plot(s.get("reliability", []),
                         "Pushes whose attribution window ended, by predicted p_open"),
        learning_plot(learning, "The worker's prequential figures (last 1000 labels)"),
        decisions_plot(minutes, [row["decisions_by_reason"] for row in h], "minutes",
                       "Candidates decided so far, by latest decision (a held push moves from "
                       "held to released when it goes out)."),
        open_rate_plot(minutes, {n: [row["open_rate"].get(n) for row in h]
                                 for n in ("model", "holdout")},
                       "minutes", "Cumulative open rate of each group's pushes."),
    ])


def _thin(rows: list[dict[str, Any]], most: int) -> list[dict[str, Any]]:
    """At most about ``most`` evenly spaced rows, the last one kept (an hour's demo: 3600).

    >>> [r["t"] for r in _thin([{"t": t} for t in range(10)], 4)]
    [0, 3, 6, 9]
    """
    if len(rows) <= most:
        return rows
    step = math.ceil(len(rows) / most)
    return rows[::step] if (len(rows) - 1) % step == 0 else [*rows[::step], rows[-1]]


def _pairs(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.3f}"


def plot_ids(report: Report) -> Iterable[str]:
    return (p.id for p in report.plots)
