"""The replay figures of ``docs/replay.md``, regenerated from code: ``pushflow replay-figures``.

Three logs, each replayed as ``pushflow replay`` would with the settings written next to the
tables, and summarised as markdown tables of the online model against every baseline
(:func:`streams.offpolicy.batch_baseline`) on the same test rows:

- the Open Bandit samples vendored in ``tests/data/obd`` (200 impressions per logging
  policy), converted by :mod:`streams.obd` and replayed with the Open Bandit recipe (send
  everything, guardrails off);
- a simulated log, :func:`record_log` (``seed=7, users=300, hours=168``), replayed with the
  default policy;
- with ``--obp PATH``, also the full Open Bandit samples of the ``obp`` distribution.

The tables sit between ``<!-- figures:NAME begin -->`` and ``<!-- figures:NAME end -->``
markers; ``--check`` exits 1 when the document differs from what the code gives.
Everything is seeded, so two runs on the same code give the same text.
"""

from __future__ import annotations

import csv
import functools
import math
import re
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click
import orjson

from streams.config import decider_config, fresh_model
from streams.contracts import parse_candidate, parse_user_event
from streams.features import UserState
from streams.model import PushModel
from streams.obd import convert, item_kinds, open_sample
from streams.offpolicy import BASELINES
from streams.pipeline import Decider, DeciderConfig, StepOutput
from streams.policy import PolicyConfig
from streams.replay import ReplayOptions, ReplayReport, replay, with_policy_overrides
from streams.settings import Settings
from streams.simulator import Population
from streams.world_segments import SegmentWorld

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "replay.md"
SAMPLE = ROOT / "tests" / "data" / "obd"
START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000
SIMULATED: dict[str, Any] = {"seed": 7, "users": 300, "hours": 168}

# The Open Bandit recipe of docs/replay.md: send everything the logging policy showed, no
# per-user guardrail (a "user" is a cohort), labels resolved a minute after the impression.
OBD_FLAGS: dict[str, Any] = {
    "threshold": 0.0, "disable_weight": 0.0, "daily_cap": 1_000_000, "min_gap_s": 0,
    "quiet_start_hour": 0, "quiet_end_hour": 0, "holdout_share": 0.0,
    "attribution_window_s": 60,
}
# Open Bandit's "users" are cohorts with no activity of their own: no similarity demotion, no
# active-now wait, no new-user or disable-risk cap (the log's sends are replayed as they are)
OBD_POLICY = ("send_time=false", "dismiss_weight=0", "dedupe_content=false",
              "similar_window_ms=0", "active_now_ms=0", "new_user_daily_cap=0",
              "new_user_min_gap_ms=0", "p_disable_cap_at=0")
# A simulated log replayed the same way, except that its feedback keeps its own timing: every
# model is then judged on the same rows, the logged sends, not on the sends its own scores
# chose (on those, its scores are truncated at the threshold and rank worse than a model fit
# afterwards on the same rows).
LOGGED_FLAGS = {k: v for k, v in OBD_FLAGS.items() if k != "attribution_window_s"}
OBD_COMMAND = ("--threshold 0 --disable-weight 0 --daily-cap 1000000 --min-gap-s 0 "
               "--quiet-start-hour 0 --quiet-end-hour 0 --holdout-share 0 "
               "--attribution-window-s 60 " + " ".join(f"--policy {p}" for p in OBD_POLICY))

# The recorded policy never holds (no quiet hours, no wait for the end of a session), so each
# candidate's logged action is final.
LOGGING = DeciderConfig(policy=PolicyConfig(quiet_start_hour=0, quiet_end_hour=0, send_time=False,
                                            active_now_ms=0))
Record = tuple[str, bytes | None, bytes, dict[str, Any] | None]  # topic, key, raw, logging


# --- the logs ---------------------------------------------------------------------------


def record_log(seed: int = 3, users: int = 100, hours: int = 48,
               world: str = "simulator") -> list[Record]:
    """Kafka-like input records of a closed loop: a simulated world (``simulator`` or
    ``segments``, :mod:`streams.world_segments`) <-> logging Decider."""
    pop = (Population if world == "simulator" else SegmentWorld)(seed, users, START)
    model, states = PushModel(), dict[str, UserState]()
    decider = Decider(model, LOGGING)
    records: list[Record] = []
    for until in range(START + HOUR // 6, START + hours * HOUR + 1, HOUR // 6):
        for topic, message in pop.advance(until):
            raw, key = orjson.dumps(message), message["user_id"].encode()
            state = states.setdefault(message["user_id"], UserState(message["user_id"]))
            if topic == "notification-candidates":
                out = decider.on_candidate(state, parse_candidate(raw, key))
            else:
                out = decider.on_event(state, parse_user_event(raw, key))
            records.append((topic, key, raw, _logged(out, message)))
            for intent in out.intents:
                pop.deliver(intent)
            for ex in out.examples:
                model.learn(ex.features, opened=bool(ex.label), disabled=bool(ex.disabled))
    return records


def _logged(out: StepOutput, message: dict[str, Any]) -> dict[str, Any] | None:
    mine = [d for d in out.decisions if d["candidate_id"] == message.get("candidate_id")]
    if not mine:
        return None
    action = "send" if mine[-1]["action"] == "send" else "suppress"
    return {"logged_action": action, "logging_propensity": mine[-1]["propensity"]}


def envelope(record: Record) -> bytes:
    """One log line (``docs/replay.md``) of a recorded input."""
    topic, key, raw, logged = record
    try:
        value: Any = orjson.loads(raw)
        value = value if isinstance(value, dict) else raw.decode()
    except orjson.JSONDecodeError:
        value = raw.decode()
    line = {"topic": topic, "key": None if key is None else key.decode(), "value": value}
    return orjson.dumps({**line, **(logged or {})})


def obd_lines(data: Path, policy: str) -> list[bytes]:
    """The ``all`` campaign of an Open Bandit sample as ``pushflow convert obd`` writes it."""
    with ExitStack() as stack:
        log_file, items_file = open_sample(data, policy, "all", stack)
        kinds = item_kinds(csv.DictReader(items_file))
        return [orjson.dumps(e) for e in convert(csv.DictReader(log_file), kinds,
                                                  f"{policy}-all")]


# --- the replays ------------------------------------------------------------------------


def replay_as_cli(lines: Iterable[bytes], flags: dict[str, Any],
                  policy: Iterable[str] = ()) -> ReplayReport:
    """``pushflow replay`` with these flags and ``--policy`` overrides, no PUSHFLOW_* set."""
    settings = Settings.from_env({}, **flags)
    config = with_policy_overrides(decider_config(settings), policy)
    options = ReplayOptions(int(settings.tick_interval_s * 1000), settings.max_message_bytes,
                            user_ttl_ms=settings.user_ttl_s * 1000)
    return replay(lines, config, lambda: fresh_model(settings), options)


def sample_reports(data: Path = SAMPLE) -> dict[str, ReplayReport]:
    """The replays behind the ``obd-sample`` block: both vendored samples and the simulator."""
    reports = {f"OBD {p} (sample)": replay_as_cli(obd_lines(data, p), OBD_FLAGS, OBD_POLICY)
               for p in ("random", "bts")}
    simulated = [envelope(r) for r in record_log(**SIMULATED)]
    reports["simulated"] = replay_as_cli(simulated, {})
    reports["simulated, logged sends"] = replay_as_cli(simulated, LOGGED_FLAGS, OBD_POLICY)
    segments = [envelope(r) for r in record_log(**SIMULATED, world="segments")]
    reports["segments, logged sends"] = replay_as_cli(segments, LOGGED_FLAGS, OBD_POLICY)
    return reports


def full_reports(obp: Path) -> dict[str, ReplayReport]:
    """The replays behind the ``obd-full`` block: the full samples of the obp distribution."""
    return {f"OBD {p}": replay_as_cli(obd_lines(obp, p), OBD_FLAGS, OBD_POLICY)
            for p in ("random", "bts")}


# --- the tables -------------------------------------------------------------------------


def _f(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _cell(figures: dict[str, Any] | None) -> str:
    if figures is None:
        return "-"
    return f"{_f(figures['auc'], 3)} / {_f(figures['log_loss'], 4)} / {_f(figures['ece'], 4)}"


def summary_table(reports: dict[str, ReplayReport]) -> list[str]:
    """Per log: labels, the online model over all of them, and the off-policy estimates."""
    out = ["| log | lines | sends | labels (opened) | online AUC / log loss / ECE, all labels "
           "| SNIPS open rate [95% CI] | ESS |", "|---|---|---|---|---|---|---|"]
    for name, r in reports.items():
        p, o = r.prequential, r.off_policy or {}
        online = {"auc": p.get("auc_all_labels"), "log_loss": p.get("log_loss"),
                  "ece": p.get("calibration_error")}
        snips = "-"
        if o:
            lo, hi = o["snips_open_rate_ci95"]
            snips = f"{_f(o['snips_open_rate'], 4)} [{_f(lo, 4)}, {_f(hi, 4)}]"
        ess = _f(o.get("effective_sample_size"), 0) if o else "-"
        out.append(f"| {name} | {r.lines} | {r.intents} | {r.learned} ({r.opens_captured}) | "
                   f"{_cell(online)} | {snips} | {ess} |")
    return out


def baseline_table(reports: dict[str, ReplayReport]) -> list[str]:
    """AUC / log loss / ECE of the online model and every baseline, one column per log."""
    names = list(reports)
    out = ["| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    bases = {n: r.baseline or {} for n, r in reports.items()}
    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> str:
        return f"| {label} | " + " | ".join(cell(bases[n]) for n in names) + " |"
    out.append(row("test labels (batch models fit on)", lambda b: "skipped" if "skipped" in b
                   else f"{b['test']} ({b['train']})"))
    for model in ("online", *BASELINES):
        label = "**online (prequential)**" if model == "online" else model
        out.append(row(label, functools.partial(_model_cell, model)))
    out.append(row("best baseline (log loss; AUC)", lambda b: "-" if "best" not in b
                   else f"{b['best']['log_loss'] or '-'}; {b['best']['auc'] or '-'}"))
    out.append(row("online AUC ≥ best baseline AUC", lambda b: "-" if "verdict" not in b
                   else _yes(b["verdict"]["auc_at_least_best"])))
    out.append(row("online log loss < constants'", lambda b: "-" if "verdict" not in b
                   else _yes(b["verdict"]["log_loss_beats_constant"])))
    out.append(row("online − best AUC [95% paired bootstrap]", _gap_cell))
    return out


def _gap_cell(b: dict[str, Any]) -> str:
    gap = b.get("auc_gap")
    if not gap or not math.isfinite(gap["gap"]):
        return "-"
    low, high = gap["ci"]
    return f"{gap['gap']:+.3f} [{low:+.3f}, {high:+.3f}]"


def _model_cell(model: str, b: dict[str, Any]) -> str:
    if model in b:
        return _cell(b[model])
    return f"skipped: {b.get(model + '_skipped', b.get('skipped'))}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def block(reports: dict[str, ReplayReport], command: str, simulated: bool) -> str:
    """The markdown between a block's markers."""
    how = f"Open Bandit logs replayed as `pushflow replay LOG {OBD_COMMAND}`"
    if simulated:
        how += (f"; the simulated logs, `record_log(seed={SIMULATED['seed']}, "
                f"users={SIMULATED['users']}, hours={SIMULATED['hours']}, world=...)` of "
                "`streams/docfigures.py`: `simulated` with the default policy, `logged sends` "
                "with the same flags as Open Bandit but the default attribution window")
    lines = [f"Generated by `{command}` ({how}).", "", *summary_table(reports), "",
             "Online model against the baselines on the same test rows, the second half of "
             "the labels by decision time (AUC / log loss / ECE):", "",
             *baseline_table(reports)]
    return "\n".join(lines)


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the lines between the markers of block ``name`` replaced."""
    begin, end = f"<!-- figures:{name} begin -->", f"<!-- figures:{name} end -->"
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise click.ClickException(f"no {begin} ... {end} markers in the document")
    return pattern.sub(lambda _: f"{begin}\n{content}\n{end}", text, count=1)


def sample_block(data: Path = SAMPLE) -> str:
    return block(sample_reports(data), "pushflow replay-figures", simulated=True)


def full_block(obp: Path) -> str:
    return block(full_reports(obp), f"pushflow replay-figures --obp {obp.name}",
                 simulated=False)


@click.command("replay-figures")
@click.option("--doc", type=click.Path(dir_okay=False, path_type=Path), default=DOC,
              show_default=True, help="The document whose figure blocks are rewritten.")
@click.option("--obp", type=click.Path(exists=True, path_type=Path), default=None,
              help="obp-0.5.7.tar.gz (or obd directory): also the full Open Bandit samples.")
@click.option("--check", is_flag=True,
              help="Change nothing; exit 1 if the document differs from the code's figures.")
def replay_figures_command(doc: Path, obp: Path | None, check: bool) -> None:
    """Regenerate the replay figures of docs/replay.md (the obd-sample block; with --obp,
    the obd-full block too)."""
    if not SAMPLE.is_dir():
        raise click.UsageError(f"{SAMPLE} is missing: run from a source checkout")
    text = doc.read_text()
    new = replace_block(text, "obd-sample", sample_block())
    if obp is not None:
        new = replace_block(new, "obd-full", full_block(obp))
    if check:
        if new != text:
            raise click.ClickException(f"{doc}: figures differ from the code's; run "
                                       "pushflow replay-figures")
        click.echo(f"{doc}: figures up to date")
        return
    doc.write_text(new)
    click.echo(f"{doc}: figures {'rewritten' if new != text else 'unchanged'}")
