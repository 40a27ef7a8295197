"""``pushflow evaluate``: decision policies compared on one simulated population, in-process.

Each policy runs the same seeded :class:`~streams.simulator.Population` through
:class:`~streams.pipeline.Decider` as the worker would, without a broker: event time advances
in small steps, every message goes to its user's state, intents are delivered back to the
population (which answers with opens, dismissals and disables drawn from its hidden truth),
users with pending labels or held pushes are ticked, and resolved labels train one
:class:`~streams.model.PushModel` whose snapshot the scorer picks up every ``snapshot_every``
examples. The first ``warmup_days`` are for learning; pushes sent after them are measured.

Policies: ``send-everything`` (the holdout baseline for everyone: every candidate the
guardrails allow), ``fixed-threshold`` (model score against a fixed threshold, no send-time
optimisation, no volume control), ``full`` (the production policy), and three whose threshold
is steered so that their volume equals the full policy's: ``random`` (a random score),
``oracle`` (the population's true p_open when the candidate arrives) and ``oracle-sto`` (the
true p_open of every send time the full policy considers, with its send-time optimisation).
``full-volume`` (on request) is the full policy with its volume controller on, and
``inverted`` (on request) a deliberately bad one: the true p_open turned upside down at the
full policy's volume, which must score below ``random`` for the evaluation to mean anything.
``oracle-no-taste`` (on request) is the ``oracle`` without the user's own interest in what is
pushed (its kind, and in ``segments`` its creator): what everything else the world hides is
worth, i.e. how much of the oracle's lead only the user's taste explains.
All keep the guardrails (the active-now rule and the gentler cap and gap of new users among
them); the holdout group is off in every policy so each is measured on everyone, and the
similarity demotion, a score term, only in ``full`` and ``full-volume``.

Worlds (``--world``): ``simulator`` (:class:`~streams.simulator.Population`) and ``segments``
(:class:`~streams.world_segments.SegmentWorld`, hidden segments shaped unlike the first).

>>> options = EvalOptions(users=30, days=1.0, warmup_days=0.5, jobs=1)
>>> report = evaluate(options, ["send-everything"])
>>> {"disables", "opens", "opens_per_push"} <= set(report["policies"]["send-everything"])
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import os
import queue
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson

from streams import progress
from streams.config import decider_config
from streams.contracts import Candidate, UserEvent
from streams.delivery_audit import Audit
from streams.errors import PushflowError
from streams.evaluation import LearningCurve, Prequential
from streams.features import UserState
from streams.item_stats import ItemStatsTable
from streams.model import PushModel
from streams.pipeline import Decider, DeciderConfig, StepOutput
from streams.policy import PolicyConfig, Scores, unit_hash
from streams.settings import Settings
from streams.simulator import CANDIDATES, DAY_MS, Population, sigmoid
from streams.world_segments import SegmentWorld

POLICIES = ("send-everything", "random", "fixed-threshold", "full", "oracle", "oracle-sto")
CHOICES = (*POLICIES, "full-volume", "inverted", "oracle-no-taste")
# steered to the full policy's volume
MATCHED = ("random", "oracle", "oracle-sto", "inverted", "oracle-no-taste")
TRUTH = ("oracle", "oracle-sto")
HOUR_MS = 3_600_000
WORLDS = ("simulator", "segments")
START_MS = 1_772_582_400_000  # 2026-03-04T00:00Z: the run crosses the US change to DST
_CANDIDATE_FIELDS = tuple(f.name for f in dataclasses.fields(Candidate))


@dataclass(frozen=True, slots=True)
class EvalOptions:
    """How big and how long the simulated world is, and the worker configuration it runs.

    ``decider`` is the worker's configuration (``streams.config.decider_config``); the named
    policies are variants of its policy. ``threshold`` (when set) replaces its threshold.
    Same options, same numbers.

    Examples
    --------
    >>> EvalOptions(threshold=0.15).decider.policy.holdout_share  # turned off per policy
    0.05
    """

    users: int = 1000
    days: float = 6.0
    warmup_days: float = 3.0
    seed: int = 7
    step_ms: int = 5 * 60_000
    snapshot_every: int = 200
    start_ms: int = START_MS
    decider: DeciderConfig = field(default_factory=DeciderConfig)
    learning_rate: float = 0.05
    threshold: float | None = None
    volume_target: float = 1.0
    matching_gain: float = 4.0
    jobs: int = 2
    world: str = "simulator"


QUICK = EvalOptions(users=400, days=4.0, warmup_days=2.0)


def policy_config(name: str, options: EvalOptions) -> PolicyConfig:
    """The PolicyConfig each named policy runs with (holdout off everywhere)."""
    base = options.decider.policy
    threshold = base.threshold if options.threshold is None else options.threshold
    full = dataclasses.replace(base, holdout_share=0.0, threshold=threshold)
    if name == "full":
        return full
    if name == "full-volume":
        return dataclasses.replace(full, volume_target=options.volume_target)
    # the similarity demotion is a score term like the dismiss term: off where they are
    alike: dict[str, Any] = {"similar_creator_factor": 1.0, "similar_kind_factor": 1.0}
    if name == "oracle-sto":
        return dataclasses.replace(full, explore_share=0.0, dismiss_weight=0.0, disable_weight=0.0,
                                   **alike)
    if name == "send-everything":
        return dataclasses.replace(full, holdout_share=1.0)
    if name == "fixed-threshold":
        return dataclasses.replace(full, send_time=False, volume_target=0.0, dismiss_weight=0.0,
                                   **alike)
    if name in ("random", "oracle", "inverted", "oracle-no-taste"):
        return dataclasses.replace(
            full, send_time=False, volume_target=0.0, dismiss_weight=0.0, disable_weight=0.0,
            explore_share=0.0, **alike,
        )
    raise ValueError(f"unknown policy {name!r}")


World = Population | SegmentWorld


def new_world(options: EvalOptions) -> World:
    """The simulated population ``options.world`` names, seeded by ``options.seed``."""
    if options.world == "segments":
        return SegmentWorld(options.seed, options.users, options.start_ms)
    if options.world == "simulator":
        return Population(options.seed, options.users, options.start_ms)
    raise ValueError(f"unknown world {options.world!r}")


def true_p_open(world: World, candidate: Candidate, at_ms: int, taste: bool = True) -> float:
    """The world's hidden p_open of a push of ``candidate`` sent at ``at_ms``; with ``taste``
    false, without the user's own interest in what is pushed (its kind, and in ``segments``
    its creator)."""
    if isinstance(world, SegmentWorld):
        return world.candidate_p_open(candidate, at_ms, taste=taste)
    return world.true_p_open(candidate.user_id, candidate.kind, at_ms, interest=taste)


def true_zone(world: World, user_id: str, at_ms: int) -> str:
    """The zone the user really is in (quiet hours are judged in it)."""
    if isinstance(world, SegmentWorld):
        return world.true_zone(user_id, at_ms)
    return world.user(user_id).zone


class _ScoredBy(Decider):
    """A Decider whose score is not the model's: a random draw, the truth or its inverse."""

    def __init__(self, config: DeciderConfig, population: World, how: str) -> None:
        super().__init__(PushModel(), config)
        self.population = population
        self.how = how

    def score(
        self, candidate: Candidate, features: dict[str, float], at_ms: int, model: PushModel
    ) -> Scores:
        if self.how == "random":
            p_open = unit_hash("random", candidate.candidate_id)
        else:
            p_open = true_p_open(self.population, candidate, at_ms,
                                 taste=self.how != "oracle-no-taste")
        return Scores(1.0 - p_open if self.how == "inverted" else p_open, 0.0, 0)


class _VolumeMatcher:
    """Steers a threshold so cumulative pushes track ``target`` per user per day.

    An integral controller on the logit of the threshold; one process sees every user here,
    so a global controller is fine for the evaluation (the worker's is per user, see
    ``docs/policy.md``).
    """

    def __init__(self, target: float, users: int, start_ms: int, gain: float) -> None:
        self.target, self.users, self.start_ms, self.gain = target, users, start_ms, gain
        self.sent = 0

    def threshold(self, now_ms: int) -> float:
        expected = self.target * self.users * (now_ms - self.start_ms) / DAY_MS
        return sigmoid(self.gain * (self.sent - expected) / self.users)


class _Run:
    """One policy over the whole simulated period."""

    def __init__(self, name: str, options: EvalOptions, target: float | None) -> None:
        self.name, self.options = name, options
        self.population = new_world(options)
        self.trainer = PushModel(learning_rate=options.learning_rate, seed=options.seed)
        self.serving = self.trainer.clone()
        config = dataclasses.replace(options.decider, policy=policy_config(name, options))
        if name in MATCHED:
            how = "truth" if name in TRUTH else name
            self.decider: Decider = _ScoredBy(config, self.population, how)
        else:
            items = ItemStatsTable(config.item_half_life_ms)
            self.decider = Decider(lambda: self.serving, config, items)
        self.matcher = None if target is None else _VolumeMatcher(
            target, options.users, options.start_ms, options.matching_gain)
        self.learns = name in ("fixed-threshold", "full", "full-volume")
        self.states: dict[str, UserState] = {}
        self.sent_at: dict[str, int] = {}
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.prequential = Prequential(window=5000)
        self.curve = LearningCurve()
        self.by_day: dict[int, list[int]] = {}  # send day -> [pushes, opens], for plots
        self.reasons_by_day: dict[int, Counter[str]] = {}
        self.measure_from = options.start_ms + int(options.warmup_days * DAY_MS)
        self.measure_until = options.start_ms + int(options.days * DAY_MS) - 3_600_000
        policy = config.policy
        self.audit = Audit(
            lambda user_id, at_ms: true_zone(self.population, user_id, at_ms),
            (policy.quiet_start_hour, policy.quiet_end_hour), self.measure_from,
            self.measure_until, options.start_ms + int(options.days * DAY_MS))

    def run(self, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """The policy's figures; ``progress`` is called with each simulated hour done."""
        started, now = time.perf_counter(), self.options.start_ms
        end = self.options.start_ms + int(self.options.days * DAY_MS)
        next_hour = now + HOUR_MS
        while now < end:
            now = min(end, now + self.options.step_ms)
            if progress is not None and now >= next_hour:
                progress((now - next_hour) // HOUR_MS + 1)
                next_hour += ((now - next_hour) // HOUR_MS + 1) * HOUR_MS
            self._steer(now)
            for topic, message in self.population.advance(now):
                self._absorb(now, self._feed(topic, message))
            for state in list(self.states.values()):
                if state.pending or state.outbox:
                    self._absorb(now, self.decider.on_tick(state, now))
        return self._report(time.perf_counter() - started)

    def _steer(self, now: int) -> None:
        if self.matcher is not None:
            policy = dataclasses.replace(
                self.decider.config.policy, threshold=self.matcher.threshold(now))
            self.decider.config = dataclasses.replace(self.decider.config, policy=policy)

    def _feed(self, topic: str, message: dict[str, Any]) -> StepOutput:
        user_id = message["user_id"]
        state = self.states.get(user_id) or self.states.setdefault(
            user_id, UserState(user_id, tz_known=False))
        self.audit.told[user_id] = message.get("tz") or self.audit.told.get(user_id, "")
        if topic == CANDIDATES:
            self.audit.arrived(message)
            candidate = Candidate(**{k: message[k] for k in _CANDIDATE_FIELDS if k in message})
            return self.decider.on_candidate(state, candidate, message.get("arrived_at_ms"))
        event = UserEvent(message["event_id"], user_id, message["type"],
                          message["event_time_ms"], message["tz"], message.get("intent_id"))
        self._count_feedback(event)
        return self.decider.on_event(state, event)

    def _count_feedback(self, event: UserEvent) -> None:
        sent_at = self.sent_at.get(event.intent_id or "")
        measured_at = self.measure_from <= event.event_time_ms < self.measure_until
        self.counts["sessions"] += event.type == "app_open" and measured_at
        if sent_at is not None and self.measure_from <= sent_at < self.measure_until:
            self.counts[event.type] += 1
            critical = event.intent_id in self.audit.critical_intents
            self.counts[f"{event.type}:critical"] += critical
        if sent_at is not None and event.type == "push_opened":
            self._day(sent_at)[1] += 1

    def _day(self, at_ms: int) -> list[int]:
        return self.by_day.setdefault((at_ms - self.options.start_ms) // DAY_MS, [0, 0])

    def _absorb(self, now: int, out: StepOutput) -> None:
        self.decider.fold(out)
        measuring = self.measure_from <= now < self.measure_until
        day = (now - 1 - self.options.start_ms) // DAY_MS  # a step ends at ``now``: its day
        for decision in out.decisions:
            self.audit.decided(decision)
            self.reasons[decision["reason"]] += measuring
            self.reasons_by_day.setdefault(day, Counter())[decision["reason"]] += 1
        for intent in out.intents:
            self.audit.sent(intent)
            self.population.deliver(intent)
            self.sent_at[intent["intent_id"]] = intent["send_at_ms"]
            self._day(intent["send_at_ms"])[0] += 1
            self.counts["pushes"] += measuring
            self.counts["pushes:critical"] += measuring and bool(intent.get("critical"))
            if self.matcher is not None:
                self.matcher.sent += 1
        for example in out.examples:
            self._learn(example, measuring)

    def _learn(self, example: Any, measuring: bool) -> None:
        if not self.learns:
            return
        if measuring and example.p_open is not None:
            self.prequential.update(example.p_open, example.label)
            self.curve.update(self.prequential)
        self.trainer.learn(example.features, opened=bool(example.label),
                           disabled=bool(example.disabled))
        if self.trainer.version - self.serving.version >= self.options.snapshot_every:
            self.serving = self.trainer.clone()

    def _curve(self) -> list[dict[str, Any]]:
        self.curve.update(self.prequential, force=True)
        return self.curve.points

    def _report(self, elapsed_s: float) -> dict[str, Any]:
        c, days = self.counts, (self.measure_until - self.measure_from) / DAY_MS
        figures = self.prequential.report()
        auc = figures["rolling_auc"] if self.learns else math.nan
        return {
            "pushes": c["pushes"],
            "pushes_per_user_day": c["pushes"] / (self.options.users * days),
            "opens": c["push_opened"],
            "opens_per_push": c["push_opened"] / c["pushes"] if c["pushes"] else 0.0,
            "noncritical_opens_per_push": _ratio(
                c["push_opened"] - c["push_opened:critical"], c["pushes"] - c["pushes:critical"]),
            "disables": c["push_disabled"],
            "dismissals": c["push_dismissed"],
            "sessions_per_user_day": c["sessions"] / (self.options.users * days),
            **self.audit.report(),
            "rolling_auc": None if math.isnan(auc) else round(auc, 4),
            "reasons": dict(sorted(self.reasons.items())),
            "runtime_s": round(elapsed_s, 1),
            # For plots (--html): the whole run by simulated day, warm-up included.
            "reliability": figures["reliability"] if self.learns else [],
            "learning_curve": self._curve(),
            "by_day": {str(d): v for d, v in sorted(self.by_day.items())},
            "reasons_by_day": {str(d): dict(c) for d, c in sorted(self.reasons_by_day.items())},
        }


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def evaluate(
    options: EvalOptions,
    names: Iterable[str] = POLICIES,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run the named policies; the full one first when a matched one needs its volume.

    ``progress`` is called with simulated hours done, summed over the policies (in this
    process, whichever process ran them).
    """
    wanted = policies_to_run(names)
    first = [n for n in wanted if n not in MATCHED]
    results = _run_all([(n, None) for n in first], options, progress)
    target = results.get("full", {}).get("pushes_per_user_day")
    results.update(_run_all([(n, target) for n in wanted if n in MATCHED], options, progress))
    results = {n: results[n] for n in wanted}
    _add_oracle_share(results)
    _add_sessions_against_holdout(results)
    return {"options": dataclasses.asdict(options), "policies": results,
            "targets": targets(results)}


def policies_to_run(names: Iterable[str]) -> list[str]:
    """The policies in running order: ``full`` added when a matched one needs its volume."""
    wanted = list(dict.fromkeys(names))
    if any(n in MATCHED for n in wanted) and "full" not in wanted:
        wanted.insert(0, "full")
    return wanted


def run_policy(
    name: str, options: EvalOptions, target: float | None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """One policy's figures (a process-pool task: top level, picklable arguments)."""
    return _Run(name, options, target).run(progress)


def _run_all(
    runs: list[tuple[str, float | None]], options: EvalOptions,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    if options.jobs <= 1 or len(runs) <= 1:
        return {name: run_policy(name, options, target, progress) for name, target in runs}
    context = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as stack:
        hours = None
        if progress is not None:  # the workers put their hours on a queue the parent reads
            hours = stack.enter_context(context.Manager()).Queue()
        pool = stack.enter_context(
            ProcessPoolExecutor(min(options.jobs, len(runs)), mp_context=context))
        reporter = None if hours is None else hours.put
        futures = {name: pool.submit(run_policy, name, options, target, reporter)
                   for name, target in runs}
        while hours is not None and progress is not None:
            finished = all(f.done() for f in futures.values())
            with contextlib.suppress(queue.Empty):
                while True:  # once all are done, drain what is left and stop
                    progress(hours.get(timeout=0.0 if finished else 0.2))
                    if not finished:
                        break
            if finished:
                break
        return {name: future.result() for name, future in futures.items()}


def _add_oracle_share(results: dict[str, dict[str, Any]]) -> None:
    """Opens as a share of the oracle's (true p_open at arrival, same volume)."""
    oracle = results.get("oracle", {}).get("opens")
    for row in results.values():
        row["oracle_share"] = row["opens"] / oracle if oracle else None


def _add_sessions_against_holdout(results: dict[str, dict[str, Any]]) -> None:
    """Sessions per user per day as a ratio to send-everything's (the holdout group's policy)."""
    holdout = results.get("send-everything", {}).get("sessions_per_user_day")
    for row in results.values():
        row["sessions_vs_holdout"] = row["sessions_per_user_day"] / holdout if holdout else None


def targets(results: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """The issue's targets for the full policy; None where a needed policy did not run."""
    full, every = results.get("full"), results.get("send-everything")
    # with no push measured there is nothing to compare: "met" would be 0 >= 2 * 0
    both = full is not None and every is not None and every["pushes"] > 0
    return {
        "opens_per_push_2x_send_everything": (
            full["opens_per_push"] >= 2 * every["opens_per_push"] if both else None),  # type: ignore[index]
        "oracle_share_at_least_0.8": (
            full["oracle_share"] >= 0.8
            if full is not None and full.get("oracle_share") is not None else None),
        "fewer_disables_than_send_everything": (
            full["disables"] < every["disables"] if both else None),  # type: ignore[index]
        **_guarantee_targets(full, results.get("random")),
    }


def _guarantee_targets(
    full: dict[str, Any] | None, random_row: dict[str, Any] | None
) -> dict[str, bool | None]:
    """Issue 15's targets: against random and the oracle, and what must never happen."""
    if full is None:
        return {}
    vs_random = random_row is not None
    share = full.get("oracle_share")
    return {
        "oracle_share_at_least_0.9": None if share is None else share >= 0.9,
        "noncritical_opens_per_push_2x_random": (
            full["noncritical_opens_per_push"] >= 2 * random_row["noncritical_opens_per_push"]  # type: ignore[index]
            if vs_random else None),
        "fewer_disables_than_random": (
            full["disables"] < random_row["disables"] if vs_random else None),  # type: ignore[index]
        "all_critical_delivered": (
            None if full["critical_delivered"] is None else full["critical_delivered"] == 1.0),
        "no_sends_after_expiry": full["sends_after_expiry"] == 0,
        "no_quiet_hour_sends_where_zone_told": full["quiet_hour_sends"] == 0,
        "no_decisions_before_arrival": full["decisions_before_arrival"] == 0,
        "one_final_decision_per_candidate": full["candidates_not_one_final"] == 0,
    }


def format_table(report: dict[str, Any]) -> str:
    """The comparison as a fixed-width text table."""
    head = (f"{'policy':<16}{'push/user/day':>14}{'pushes':>9}{'opens':>8}{'opens/push':>11}"
            f"{'disables':>10}{'oracle share':>13}{'auc':>7}")
    lines = [head, "-" * len(head)]
    for name, r in report["policies"].items():
        share = "-" if r["oracle_share"] is None else f"{r['oracle_share']:.2f}"
        auc = "-" if r["rolling_auc"] is None else f"{r['rolling_auc']:.3f}"
        lines.append(
            f"{name:<16}{r['pushes_per_user_day']:>14.2f}{r['pushes']:>9}{r['opens']:>8}"
            f"{r['opens_per_push']:>11.3f}{r['disables']:>10}{share:>13}{auc:>7}")
    lines += ["", *_guarantee_table(report)]
    lines += [f"target {k}: {'-' if v is None else 'met' if v else 'NOT met'}"
              for k, v in report["targets"].items()]
    return "\n".join(lines)


def _guarantee_table(report: dict[str, Any]) -> list[str]:
    """Sessions, non-critical opens per push and what must never happen, per policy."""
    head = (f"{'policy':<16}{'sess/user/day':>14}{'vs holdout':>11}{'nc opens/push':>14}"
            f"{'critical':>9}{'expired':>8}{'quiet':>6}{'early':>6}{'max final':>10}"
            f"{'finals!=1':>10}")
    lines = [head, "-" * len(head)]
    for name, r in report["policies"].items():
        vs = "-" if r["sessions_vs_holdout"] is None else f"{r['sessions_vs_holdout']:.3f}"
        critical = "-" if r["critical_delivered"] is None else f"{r['critical_delivered']:.3f}"
        lines.append(
            f"{name:<16}{r['sessions_per_user_day']:>14.2f}{vs:>11}"
            f"{r['noncritical_opens_per_push']:>14.3f}{critical:>9}{r['sends_after_expiry']:>8}"
            f"{r['quiet_hour_sends']:>6}{r['decisions_before_arrival']:>6}"
            f"{r['max_final_decisions']:>10}{r['candidates_not_one_final']:>10}")
    return lines


_POSITIVE = click.FloatRange(min=0.0, min_open=True)


@click.command("evaluate")
@click.option("--quick", is_flag=True, help="A small population for tests (< 60 s).")
@click.option("--users", type=click.IntRange(min=1), default=None,
              help="Simulated users  [default: 1000; --quick: 400]")
@click.option("--days", type=_POSITIVE, default=None,
              help="Simulated days, warm-up included  [default: 6; --quick: 4]")
@click.option("--warmup-days", type=click.FloatRange(min=0.0), default=None,
              help="Days learned but not measured, fewer than --days  [default: 3; --quick: 2]")
@click.option("--seed", type=int, default=None, help="Population seed  [default: 7]")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              envvar="PUSHFLOW_THRESHOLD", show_envvar=True,
              help="Send threshold of the model policies (default: the worker's, 0.08).")
@click.option("--volume-target", type=click.FloatRange(min=0.0), default=None,
              help="Pushes per user per day of the full-volume policy's controller  "
                   "[default: 1]")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Policies run in parallel processes  [default: 2]")
@click.option("--policy", "policies", multiple=True, type=click.Choice(CHOICES),
              help="Run only these (repeatable); default all but full-volume.")
@click.option("--world", type=click.Choice((*WORLDS, "both")), default="simulator",
              show_default=True, help="Simulated world: today's, hidden segments, or both.")
@click.option("--report-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report here as JSON.")
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write an HTML report with plots here (needs the 'report' extra).")
def evaluate_command(quick: bool, policies: tuple[str, ...], report_json: Path | None,
                     html: Path | None, world: str, **overrides: Any) -> None:
    """Compare decision policies on one simulated population, in-process (no broker).

    The policies are variants of the worker's, configured as the worker is (``PUSHFLOW_*``).
    Progress goes to stderr (a bar on a terminal), the table to stdout.
    """
    from streams.report import evaluate_report, require_plotting, write_report

    if html is not None:
        require_plotting()  # before the runs, not after them
    try:
        settings = Settings.from_env(os.environ)
    except PushflowError as exc:
        raise click.UsageError(str(exc)) from None
    base = dataclasses.replace(
        QUICK if quick else EvalOptions(), decider=decider_config(settings),
        learning_rate=settings.learning_rate, snapshot_every=settings.snapshot_every,
    )
    options = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if options.days - options.warmup_days <= 1 / 24:  # the last hour is not measured
        raise click.BadParameter(
            f"{options.warmup_days:g} warm-up days leave nothing of {options.days:g} days to "
            "measure (the difference must exceed one hour)", param_hint="'--warmup-days'")
    progress.check_writable(report_json, "--report-json")
    progress.check_writable(html, "--html")
    names = policies_to_run(policies or POLICIES)
    worlds = WORLDS if world == "both" else (world,)
    reports = {}
    for name in worlds:
        started = time.monotonic()
        with progress.bar(round(len(names) * options.days * 24), f"evaluate {name}",
                          "sim h") as bar:
            report = reports[name] = evaluate(dataclasses.replace(options, world=name), names,
                                              bar.update)
        progress.done(f"evaluate: {len(names)} policies, {options.users} users, "
                      f"{options.days:g} simulated days in {time.monotonic() - started:.0f} s "
                      f"({name} world)")
        if len(worlds) > 1:
            click.echo(f"world: {name}")
        click.echo(format_table(report))
        if html is not None:
            path = html if len(worlds) == 1 else html.with_stem(f"{html.stem}-{name}")
            write_report(path, evaluate_report(report))
    if report_json is not None:
        written = reports[worlds[0]] if len(worlds) == 1 else reports
        report_json.write_bytes(orjson.dumps(written, option=orjson.OPT_INDENT_2))
