"""Offline replay: the worker's pure core driven over a recorded JSONL log, on event time.

Each line of the log is one input message in an envelope (``docs/replay.md``)::

    {"topic": "user-events" | "notification-candidates", "key": "<user_id>", "value": {...},
     "logged_action": "send" | "suppress", "logging_propensity": 0.2, "logged_reward": 0 | 1}

The last three fields are optional and only meaningful on candidates: what the logging policy
did, with which probability, and whether the push was opened. A bare message (no envelope) is
accepted too, its type told by its fields. Lines are parsed by :mod:`streams.contracts` (bad
ones are counted as dead letters by error code), stepped through :class:`Decider` exactly as
the worker does, ticked on event time like the worker's timer, and every training example is
learned right away by one trainer, scored prequentially before it is learned.

>>> event = (b'{"topic": "user-events", "key": "u1", "value": {"event_id": "e1", "user_id": "u1",'
...          b' "type": "app_open", "event_time_ms": 1767225600000, "tz": "UTC"}}')
>>> report = replay([event, b"{oops"], DeciderConfig())
>>> report.messages, report.dead_letters
({'user-events': 1}, {'invalid_json': 1})
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import click
import orjson

from streams.attribution import TrainingExample
from streams.challengers import restore as restore_shadows
from streams.contracts import (
    DEFAULT_MAX_BYTES,
    Candidate,
    UserEvent,
    candidate_from,
    check_size,
    parse_candidate,
    parse_user_event,
    user_event_from,
)
from streams.errors import (
    ContractError,
    InvalidJSON,
    NotAnObject,
    ProcessingError,
    PushflowError,
    SchemaViolation,
)
from streams.evaluation import EPS, LearningCurve, Prequential, exact_auc
from streams.features import UserState
from streams.flags import setting_flags
from streams.garbage import tune_gc
from streams.item_stats import ItemStatsTable
from streams.model import PushModel
from streams.offpolicy import (
    BASELINES,
    RATE_STRENGTH,
    Keys,
    Labeled,
    RateBaselines,
    batch_baseline,
    ips_estimates,
)
from streams.pipeline import Decider, DeciderConfig, StepOutput
from streams.policy import in_holdout
from streams.progress import bar, check_writable, done
from streams.ticks import TickClock

EVENTS, CANDIDATES = "user-events", "notification-candidates"
HOUR_MS = 3_600_000
SEND, SUPPRESS, HOLD = "send", "suppress", "hold"


@dataclass(frozen=True, slots=True)
class LoggedAction:
    """What the logging policy did with one candidate, with its probability and the outcome."""

    action: str
    propensity: float
    reward: int | None = None


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One log line: the raw message bytes as the worker would have read them."""

    topic: str
    key: bytes | None
    raw: bytes
    logged: LoggedAction | None = None
    logging_error: str | None = None
    arrival_ms: int | None = None  # when the worker read it (the record's broker timestamp)
    # ``raw`` decoded, when the envelope held it as an object (``raw`` is then its encoding)
    value: dict[str, Any] | None = field(default=None, compare=False, repr=False)


def read_record(line: bytes) -> LogRecord:
    """An envelope or a bare message -> :class:`LogRecord`, or a ContractError.

    >>> read_record(b'{"candidate_id": "c1", "user_id": "u1"}').topic
    'notification-candidates'
    """
    return LogRecord(*_read(line))


# A log line's fields, in LogRecord's order: topic, key, raw, logged, logging_error,
# arrival_ms, value
_Fields = tuple[str, bytes | None, bytes, LoggedAction | None, str | None, int | None,
                dict[str, Any] | None]


def _read(line: bytes) -> _Fields:
    """:func:`read_record`'s fields as a tuple: the replay reads every line this way, without
    the frozen record around them (building it was a tenth of reading a line)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise NotAnObject(f"expected a JSON object, got {type(obj).__name__}")
    if "topic" not in obj:
        return _topic_by_fields(obj), _key(obj.get("user_id")), line, None, None, None, None
    topic, value = str(obj["topic"]), obj.get("value")
    kind = CANDIDATES if topic.endswith(CANDIDATES) else EVENTS if topic.endswith(EVENTS) else None
    if kind is None or not isinstance(value, (dict, str)):
        raise SchemaViolation(f"envelope: unknown topic {topic!r} or value not an object/string")
    decoded = value if isinstance(value, dict) else None
    raw = orjson.dumps(value) if isinstance(value, dict) else value.encode()
    key = obj.get("key", None if decoded is None else decoded.get("user_id"))
    key = key.encode() if isinstance(key, str) else None
    arrival = obj.get("arrival_ms")
    if arrival is not None:
        arrival = _arrival(arrival)
    if kind == CANDIDATES:
        try:
            logged = _logged(obj)
        except (TypeError, ValueError) as exc:
            return kind, key, raw, None, str(exc), arrival, decoded
        return kind, key, raw, logged, None, arrival, decoded
    return kind, key, raw, None, None, arrival, decoded


def _arrival(value: Any) -> int | None:
    """The recorded arrival, or None (then event time stands in) unless a positive integer."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _topic_by_fields(obj: dict[str, Any]) -> str:
    if "candidate_id" in obj:
        return CANDIDATES
    if "event_id" in obj or "type" in obj:
        return EVENTS
    raise SchemaViolation("bare message: no candidate_id, event_id or type to tell its topic")


def _key(value: Any) -> bytes | None:
    return value.encode() if isinstance(value, str) else None


def _logged(obj: dict[str, Any]) -> LoggedAction | None:
    if "logged_action" not in obj and "logging_propensity" not in obj:
        return None
    action, propensity = obj.get("logged_action"), float(obj.get("logging_propensity", "nan"))
    reward = obj.get("logged_reward")
    if action not in (SEND, SUPPRESS) or not 0.0 < propensity <= 1.0 or reward not in (None, 0, 1):
        raise ValueError(f"bad logging fields: {action!r}, {propensity!r}, {reward!r}")
    return LoggedAction(action, propensity, None if reward is None else int(reward))


def parse_record(record: LogRecord, max_bytes: int = DEFAULT_MAX_BYTES) -> UserEvent | Candidate:
    """The typed message of a record, through the same contracts as the worker."""
    return _parse(record.topic, record.key, record.raw, record.value, max_bytes)


def _parse(topic: str, key: bytes | None, raw: bytes, value: dict[str, Any] | None,
           max_bytes: int) -> UserEvent | Candidate:
    if value is not None:  # decoded with its envelope: the same checks, one decode
        check_size(raw, max_bytes)
        if topic == CANDIDATES:
            return candidate_from(value, key)
        return user_event_from(value, key)
    if topic == CANDIDATES:
        return parse_candidate(raw, key, max_bytes)
    return parse_user_event(raw, key, max_bytes)


# --- the replay -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """How to replay: tick cadence (event time), limits, and the evaluation set-up.

    >>> ReplayOptions(tick_interval_ms=60_000).snapshot_every  # score with the trainer itself
    0
    """

    tick_interval_ms: int = 5_000
    max_message_bytes: int = DEFAULT_MAX_BYTES
    snapshot_every: int = 0  # 0: score with the trainer itself; N: serve a copy every N examples
    window: int = 100_000
    baseline_share: float = 0.5
    user_ttl_ms: int = 30 * 86_400_000  # forget idle users, as the worker's TTL sweep does
    rate_strength: float = RATE_STRENGTH  # prior pseudo-labels of the per-group rate baselines
    max_tracked: int = 1_000_000  # sent intents awaiting a label whose keys are kept (oldest go)
    # the champion's spec name and the specs shadowed beside it (streams.challengers), and
    # the settings every spec starts from (learning rate, seed)
    champion: str = "hashed-lr"
    challengers: tuple[str, ...] = ()
    model_defaults: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReplayReport:
    """What a replay measured; ``to_dict`` is the ``--report-json`` content.

    >>> print(ReplayReport(lines=3).format_table().splitlines()[0])
    lines        3   users 0 (expired 0)   messages: -
    """

    lines: int = 0
    messages: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    dead_letter_samples: list[dict[str, Any]] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    intents: int = 0
    explore_intents: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    opens_captured: int = 0
    unlogged_labels: int = 0
    learned: int = 0
    model_version: int = 0
    users: int = 0
    users_expired: int = 0
    pending_at_end: int = 0
    held_at_end: int = 0
    prequential: dict[str, Any] = field(default_factory=dict)
    p_disable_log_loss: float = math.nan
    off_policy: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    # For plots (``--html``): AUC and log loss as labels accrue; decisions per event-time hour;
    # labels and opens per event-time hour by group ({"model": [labels, opens], "holdout": ...}).
    learning_curve: list[dict[str, Any]] = field(default_factory=list)
    timeline: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format_table(self) -> str:
        """The figures as a plain-text table (NaN shown as ``-``)."""
        return "\n".join(_report_lines(self))


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _counts(counts: dict[str, int]) -> str:
    return "  ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _report_lines(r: ReplayReport) -> Iterator[str]:
    p = r.prequential
    yield f"lines        {r.lines}   users {r.users} (expired {r.users_expired})   " \
          f"messages: {_counts(r.messages)}"
    yield f"dead letters {_counts(r.dead_letters)}"
    yield f"ignored      {_counts(r.ignored)}"
    yield f"decisions    {_counts(r.decisions)}"
    yield f"intents      {r.intents} (explore {r.explore_intents})   pending at end " \
          f"{r.pending_at_end}   held at end {r.held_at_end}"
    yield f"labels       {_counts(r.labels)}   opens captured {r.opens_captured}   " \
          f"not in log {r.unlogged_labels}   model version {r.model_version}"
    yield f"online model (prequential, last {p.get('window', 0)} labels): AUC " \
          f"{_num(p.get('rolling_auc'))} (exact, all labels {_num(p.get('auc_all_labels'))})" \
          f"  log loss {_num(p.get('log_loss'))}  ECE " \
          f"{_num(p.get('calibration_error'))}  base rate {_num(p.get('base_rate'))}  " \
          f"p_disable log loss {_num(r.p_disable_log_loss)}"
    yield "  reliability: " + "  ".join(
        f"[{b['low']:.1f}) n={b['n']} p={b['mean_p']:.3f} obs={b['open_rate']:.3f}"
        for b in p.get("reliability", []))
    yield from _baseline_lines(r.baseline or {})
    yield from _off_policy_lines(r.off_policy)


def _baseline_lines(b: dict[str, Any]) -> Iterator[str]:
    if "skipped" in b or not b:
        yield f"baselines: skipped ({b.get('skipped', 'no labels')})"
        return
    yield f"baselines on the last {b['test']} labels by decision time (batch models fit on the " \
          f"first {b['train']}; {b['features']} features, LR l2 {b['l2']:g}; rates: prior " \
          f"{b.get('rate_strength', RATE_STRENGTH):g} labels at the running base rate)"
    yield f"  {'model':<17} {'n':>7} {'AUC':>8} {'log loss':>9} {'ECE':>8}"
    for name in ("online", *BASELINES):
        if name not in b:
            continue
        f = b[name]
        yield f"  {name:<17} {f['n']:>7} {_num(f['auc']):>8} {_num(f['log_loss']):>9} " \
              f"{_num(f['ece']):>8}"
    for name in BASELINES:
        if name + "_skipped" in b:
            yield f"  {name} skipped: {b[name + '_skipped']}"
    best, verdict = b.get("best") or {}, b.get("verdict") or {}
    if best:
        yield f"  best baseline: {best.get('log_loss') or '-'} by log loss, " \
              f"{best.get('auc') or '-'} by AUC; online AUC at least the best: " \
              f"{_yes(verdict.get('auc_at_least_best'))}; online log loss below the " \
              f"constants': {_yes(verdict.get('log_loss_beats_constant'))}"
    gap = b.get("auc_gap")
    if gap and math.isfinite(gap["gap"]):
        yield f"  online AUC - best baseline AUC: {gap['gap']:+.3f} (95% paired bootstrap " \
              f"[{gap['ci'][0]:+.3f}, {gap['ci'][1]:+.3f}], best picked per resample; online " \
              f"at least the best in {gap['p_at_least']:.0%} of resamples)"
    yield from _challenger_lines(b.get("challengers") or {})


def _challenger_lines(shadows: dict[str, Any]) -> Iterator[str]:
    """Champion and challengers on the same test rows, each scored when the label arrived."""
    if not shadows:
        return
    yield "champion and challengers on the same test rows, scored when each label arrived " \
          "(before learning it):"
    yield f"  {'model':<32} {'AUC':>8} {'log loss':>9} {'ECE':>8} {'AUC - best baseline':>20}"
    for name, f in shadows.items():
        gap = f.get("auc_gap") or {}
        ci = gap.get("ci") or [math.nan, math.nan]
        spread = f"{gap.get('gap', math.nan):+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
        yield f"  {name:<32} {_num(f['auc']):>8} {_num(f['log_loss']):>9} " \
              f"{_num(f['ece']):>8} {spread:>20}"


def _yes(flag: Any) -> str:
    return "yes" if flag else "no"


def _off_policy_lines(o: dict[str, Any] | None) -> Iterator[str]:
    if not o:
        yield "off-policy: no logging propensities in the log"
        return
    def ci(name: str) -> str:
        lo, hi = o[name + "_ci95"]
        return f"{_num(o[name])} [{_num(lo)}, {_num(hi)}]"
    yield f"off-policy ({o['n']} logged candidates, {o['logged_sends']} logged sends, " \
          f"{o['logged_opens']} opens, ESS {o['effective_sample_size']:.0f})"
    yield f"  logged open rate {_num(o['logged_open_rate'])}   replay send share " \
          f"{_num(o['replay_send_share'])}   IPS send share {_num(o['ips_send_share'])}"
    yield f"  IPS opens per candidate {ci('ips_opens_per_candidate')}"
    rate = ci("ips_open_rate") if math.isfinite(o["ips_open_rate"]) else "n/a (sends-only log)"
    yield f"  IPS open rate {rate}   SNIPS open rate {ci('snips_open_rate')}"


class Replayer:
    """Drives one :class:`Decider` over log lines as the worker would, and measures it.

    Parameters
    ----------
    config
        Policy and attribution settings (``decider_config(settings)``).
    model
        The model to start from; it learns every training example right away.
    options
        Tick cadence, limits and evaluation set-up.
    sink
        Called with every step's output (decisions, intents, examples), e.g. to write them.

    Examples
    --------
    >>> r = Replayer(DeciderConfig(), PushModel(), ReplayOptions())
    >>> r.feed(b'{"event_id": "e1", "user_id": "u1", "type": "like",'
    ...        b' "event_time_ms": 1767225600000, "tz": "UTC"}')
    >>> r.feed(b'{"candidate_id": "c1"}')  # a bare candidate without its required fields
    >>> report = r.finish()
    >>> report.users, report.dead_letters
    (1, {'schema_violation': 1})
    """

    def __init__(
        self,
        config: DeciderConfig,
        model: PushModel,
        options: ReplayOptions,
        sink: Callable[[StepOutput], None] | None = None,
    ) -> None:
        self.options, self.trainer, self.sink = options, model, sink
        self.serving = model if options.snapshot_every <= 0 else model.clone()
        items = ItemStatsTable(config.item_half_life_ms)
        self.decider = Decider(lambda: self.serving, config, items)
        self.states: dict[str, UserState] = {}
        # No user's watermark is below this (the lowest a user had when first stored; a
        # watermark only grows): while it is within the TTL, a sweep has no one to expire.
        self.lowest_ms: int | None = None
        self.due: set[str] = set()
        self.clock = TickClock()
        self.watermark_ms = self.next_tick_ms = self.next_sweep_ms = 0
        self.report = ReplayReport()
        self.counts: dict[str, Counter[str]] = {
            k: Counter() for k in ("msg", "dl", "ign", "dec", "lab")
        }
        self.prequential = Prequential(window=options.window)
        self.shadows = restore_shadows(options.champion, options.challengers, None,
                                       options.model_defaults, options.window)
        self.curve = LearningCurve()
        self.hourly: dict[int, Counter[str]] = {}
        self.by_group: dict[int, dict[str, list[int]]] = {}
        self.disable_loss = [0.0, 0]
        self.labeled: list[Labeled] = []
        self.logged: dict[str, tuple[str, LoggedAction]] = {}  # intent id -> (candidate, logged)
        self.p_send: dict[str, float] = {}
        self.p_disable: dict[str, float | None] = {}
        self.opened: set[str] = set()
        self.rates = RateBaselines(options.rate_strength)
        # intent id -> (user, content, creator, kind) and the rate baselines' p at decision
        self.tracked: dict[str, tuple[Keys, tuple[float, ...]]] = {}

    def feed(self, line: bytes) -> None:
        """One log line: parse, step its user, learn what resolved, tick if event time moved."""
        self.report.lines += 1
        if not line or line.isspace():
            return
        try:
            topic, key, raw, logged, logging_error, arrival_ms, value = _read(line)
            message = _parse(topic, key, raw, value, self.options.max_message_bytes)
        except ContractError as exc:
            return self._dead_letter(exc)
        self.counts["msg"][topic] += 1
        if logging_error is not None:
            self.counts["ign"]["invalid_logging_fields"] += 1
        if logged is not None and isinstance(message, Candidate):
            self.logged[message.intent_id] = (message.candidate_id, logged)
        opened = isinstance(message, UserEvent) and message.type == "push_opened"
        if opened and message.intent_id in self.logged:  # the reward of a logged send
            self.opened.add(message.intent_id)
        self._step(message, arrival_ms)
        if self.watermark_ms >= self.next_tick_ms:
            self._tick()
        if self.watermark_ms >= self.next_sweep_ms:
            self._sweep()

    def _step(self, message: UserEvent | Candidate, arrival_ms: int | None = None) -> None:
        user_id = message.user_id
        state = self.states.get(user_id)
        new = state is None
        if state is None:
            state = UserState(user_id)  # the keyword tz_known=False costs a third more
            state.tz_known = False
        else:
            self.clock.catch_up(user_id, state)
        try:
            if isinstance(message, Candidate):
                out = self.decider.on_candidate(state, message, arrival_ms)
            else:
                out = self.decider.on_event(state, message)
        except Exception as exc:  # a bug: dead-lettered and counted, as the worker does
            self.clock.exact = True  # the state may be half-stepped: tick every user from now on
            return self._dead_letter(ProcessingError(f"{type(exc).__name__}: {exc}"))
        self.states[user_id] = state
        if new and (self.lowest_ms is None or state.watermark_ms < self.lowest_ms):
            self.lowest_ms = state.watermark_ms
        if isinstance(message, Candidate):
            self._track(message, out)
        self._absorb(user_id, state, out)

    def _track(self, candidate: Candidate, out: StepOutput) -> None:
        """Keep a sent (or held) candidate's keys and the rate baselines' p at decision time,
        to score them on its label as the model's p_open is; bounded, oldest dropped."""
        intent_id = candidate.intent_id
        if not any(d["decision_id"] == intent_id and d["action"] in (SEND, HOLD)
                   for d in out.decisions):
            return
        keys = (candidate.user_id, candidate.content_id, candidate.creator_id or "",
                candidate.kind)
        self.tracked[intent_id] = (keys, self.rates.predict(keys))
        if len(self.tracked) > self.options.max_tracked:
            del self.tracked[next(iter(self.tracked))]

    def _tick(self) -> None:
        """The worker's timer on event time: every user with pending labels or held pushes.

        A tick moves each such user's watermark to the partition's, and changes nothing else
        until a label's window passes or a held push is due: those users are woken
        (:class:`TickClock`), in user order, and the others catch up when next touched.
        """
        now = self.watermark_ms
        woken = self.clock.tick(now, self.due)
        if self.clock.exact:  # the worker's own sweep, users in order, event time as it moves
            self.clock.catch_up_all(self.states)
            woken = sorted(self.due)
        for user_id in woken:
            state = self.states[user_id]
            self.clock.catch_up(user_id, state)
            out = self.decider.on_tick(state, self.watermark_ms)
            if out.decisions or out.intents or out.examples:  # else nothing changed: as the worker
                self._absorb(user_id, state, out)
            elif user_id in self.due:  # a push may have been rescheduled
                self.clock.schedule(user_id, state)
        interval = max(1, self.options.tick_interval_ms)
        self.next_tick_ms = self.watermark_ms - self.watermark_ms % interval + interval

    def _sweep(self) -> None:
        """The worker's TTL sweep (hourly in event time): idle users with nothing in flight."""
        self.clock.catch_up_all(self.states)
        cutoff = self.watermark_ms - self.options.user_ttl_ms
        idle = [] if self.lowest_ms is None or self.lowest_ms >= cutoff else [
            u for u, s in self.states.items()
            if s.watermark_ms < cutoff and not s.pending and not s.outbox]
        for user_id in idle:
            del self.states[user_id]
        self.report.users_expired += len(idle)
        self.next_sweep_ms = self.watermark_ms + 3_600_000

    def _absorb(self, user_id: str, state: UserState, out: StepOutput) -> None:
        if out.feedback:  # most steps have no item feedback to count
            self.decider.fold(out)
        if state.watermark_ms > self.watermark_ms:
            self.watermark_ms = state.watermark_ms
        if state.pending or state.outbox:
            self.due.add(user_id)
            self.clock.schedule(user_id, state)
        elif user_id in self.due:
            self.due.discard(user_id)
            self.clock.forget(user_id)
        if out.ignored:
            self.counts["ign"][out.ignored] += 1
        if self.sink is not None:
            self.sink(out)
        for decision in out.decisions:
            self._count_decision(decision)
        if out.intents:
            self.report.intents += len(out.intents)
            self.report.explore_intents += sum(1 for i in out.intents if i["explore"])
        for example in out.examples:
            self._learn(example)

    def _count_decision(self, decision: dict[str, Any]) -> None:
        self.counts["dec"][decision["reason"]] += 1
        self.hourly.setdefault(self.watermark_ms // HOUR_MS, Counter())[decision["reason"]] += 1
        intent_id, action = decision["decision_id"], decision["action"]
        if intent_id in self.logged and (
            decision["reason"] != "duplicate" or intent_id not in self.p_send
        ):
            propensity = decision["propensity"]
            self.p_send[intent_id] = propensity if action in (SEND, HOLD) else 1.0 - propensity
        if action == SEND:
            self.p_disable[intent_id] = decision["p_disable"]

    def _learn(self, example: TrainingExample) -> None:
        logged = self.logged.get(example.intent_id)
        p_disable = self.p_disable.pop(example.intent_id, None)
        tracked = self.tracked.pop(example.intent_id, None)
        if logged is not None and logged[1].action == SUPPRESS:
            self.report.unlogged_labels += 1  # the log cannot know this outcome: not learned
            return
        self.counts["lab"][example.outcome] += 1
        self._count_group(example)
        keys, rates = tracked if tracked is not None else ((example.user_id, "", "", ""), ())
        opened, disabled = bool(example.label), bool(example.disabled)
        shadows = {} if not self.shadows.models else self.shadows.observe(
            self.trainer, example.features, opened=opened, disabled=disabled)
        if example.p_open is not None:
            self.prequential.update(example.p_open, example.label)
            self.curve.update(self.prequential)
            self.labeled.append(Labeled(example.decided_at_ms, example.features, example.p_open,
                                        example.label, keys, rates or self.rates.predict(keys),
                                        shadows))
        self.rates.learn(keys, example.label)
        if p_disable is not None:
            p = min(max(p_disable, EPS), 1 - EPS)
            self.disable_loss[0] -= math.log(p if example.disabled else 1 - p)
            self.disable_loss[1] += 1
        self.trainer.learn(example.features, opened=opened, disabled=disabled)
        every = self.options.snapshot_every
        if every > 0 and self.trainer.version - self.serving.version >= every:
            self.serving = self.trainer.clone()

    def _count_group(self, example: TrainingExample) -> None:
        group = "holdout" if in_holdout(example.user_id, self.decider.config.policy.holdout_share) \
            else "model"
        day = self.by_group.setdefault(example.decided_at_ms // HOUR_MS, {})
        cell = day.setdefault(group, [0, 0])
        cell[0] += 1
        cell[1] += example.label

    def _dead_letter(self, error: ContractError) -> None:
        self.counts["dl"][error.code] += 1
        if len(self.report.dead_letter_samples) < 20:
            self.report.dead_letter_samples.append(
                {"line": self.report.lines, "error_code": error.code, "error": str(error)[:300]}
            )

    def finish(self) -> ReplayReport:
        """The report of everything fed so far."""
        self.clock.catch_up_all(self.states)
        r, c = self.report, self.counts
        r.messages, r.dead_letters = dict(sorted(c["msg"].items())), dict(sorted(c["dl"].items()))
        r.ignored = {k: v for k, v in sorted(c["ign"].items()) if v}
        r.decisions, r.labels = dict(sorted(c["dec"].items())), dict(sorted(c["lab"].items()))
        r.opens_captured, r.learned = c["lab"]["opened"], self.trainer.version
        r.model_version, r.users = self.trainer.version, len(self.states)
        r.pending_at_end = sum(len(s.pending) for s in self.states.values())
        r.held_at_end = sum(len(s.outbox) for s in self.states.values())
        r.prequential = self.prequential.report()
        r.prequential["auc_all_labels"] = exact_auc([e.p_open for e in self.labeled],
                                                    [e.label for e in self.labeled])
        loss, n = self.disable_loss
        r.p_disable_log_loss = loss / n if n else math.nan
        r.off_policy = self._off_policy()
        r.baseline = batch_baseline(self.labeled, self.options.baseline_share,
                                    self.options.rate_strength)
        self.curve.update(self.prequential, force=True)
        r.learning_curve = list(self.curve.points)
        r.timeline = {
            "decisions": {str(h): dict(c) for h, c in sorted(self.hourly.items())},
            "groups": {str(d): dict(g) for d, g in sorted(self.by_group.items())},
        }
        return r

    def _off_policy(self) -> dict[str, Any] | None:
        rows = [(lg.action == SEND, lg.propensity, _reward(lg, i, self.opened), self.p_send[i])
                for i, (_, lg) in self.logged.items() if i in self.p_send]
        return ips_estimates(*zip(*rows, strict=True)) if len(rows) > 1 else None


def _reward(logged: LoggedAction, intent_id: str, opened: set[str]) -> int:
    if logged.action != SEND:
        return 0
    return logged.reward if logged.reward is not None else int(intent_id in opened)


def replay(
    lines: Iterable[bytes],
    config: DeciderConfig,
    model_factory: Callable[[], PushModel] = PushModel,
    options: ReplayOptions | None = None,
    sink: Callable[[StepOutput], None] | None = None,
) -> ReplayReport:
    """Replay a JSONL log through the pure core and report model and policy figures."""
    replayer = Replayer(config, model_factory(), options or ReplayOptions(), sink)
    for line in lines:
        replayer.feed(line)
    return replayer.finish()


# --- the command ------------------------------------------------------------------------

_FLAGS: list[tuple[str, type, str]] = [
    ("threshold", float, "Send when p_open - disable_weight * p_disable reaches this"),
    ("daily_cap", int, "Sends per user in a rolling 24h"),
    ("min_gap_s", int, "Minimum seconds between two sends to a user"),
    ("quiet_start_hour", int, "Local hour quiet hours start (equal to the end: none)"),
    ("quiet_end_hour", int, "Local hour quiet hours end"),
    ("holdout_share", float, "Share of users in the holdout group"),
    ("explore_share", float, "Share of below-threshold candidates sent to explore"),
    ("disable_weight", float, "Weight of p_disable in the score"),
    ("attribution_window_s", int, "Event-time seconds a push waits for its outcome"),
    ("learning_rate", float, "SGD step of the online model"),
    ("seed", int, "Seed of the policy's draws and the model"),
    ("tick_interval_s", float, "Event-time seconds between ticks"),
]


_setting_flags = setting_flags(_FLAGS)


@click.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--report-json", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the full report here as JSON.")
@click.option("--snapshot-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Score with a copy of the model refreshed every N examples (0: at once).")
@click.option("--baseline-share", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              default=0.5, show_default=True,
              help="Share of labeled examples (by decision time) the batch baselines fit on.")
@click.option("--window", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Labels covered by the prequential figures.")
@click.option("--decisions-out", type=click.File("wb"), default=None,
              help="Write every replayed decision here as JSONL (to diff two policies).")
@click.option("--policy", "policy_overrides", multiple=True, metavar="FIELD=VALUE",
              help="Set a PolicyConfig field that Settings does not carry (repeatable).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr  [default: when stderr is a terminal]")
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write an HTML report with plots here (needs the 'report' extra).")
@click.option("--model", "model_spec", default=None, metavar="SPEC", envvar="PUSHFLOW_MODEL",
              show_envvar=True,
              help="The champion's model spec (docs/model.md)  [default: hashed-lr]")
@click.option("--challengers", "challenger_specs", multiple=True, metavar="SPEC",
              help="Shadow this model spec beside the champion, on the same labels "
                   "(repeatable; docs/model.md lists the specs).")
@_setting_flags
def replay_command(file: str, report_json: Path | None, snapshot_every: int,
                   baseline_share: float, window: int, decisions_out: BinaryIO | None,
                   policy_overrides: tuple[str, ...], progress: bool | None,
                   html: Path | None, model_spec: str | None,
                   challenger_specs: tuple[str, ...], **flags: Any) -> None:
    """Replay a JSONL log of input messages through the decision core (see docs/replay.md).

    Exits 1 when no line of FILE is a pushflow message (say, a CSV given by mistake).
    """
    from streams.challengers import parse_specs
    from streams.config import decider_config, fresh_model, model_defaults
    from streams.report import replay_report, require_plotting, write_report
    from streams.settings import Settings

    if html is not None:
        require_plotting()  # before the replay, not after it
    try:
        settings = Settings.from_env(os.environ, **flags, model=model_spec)
        config = with_policy_overrides(decider_config(settings), policy_overrides)
        shadowed = parse_specs(" ".join(challenger_specs))
    except (PushflowError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    check_writable(report_json, "--report-json")
    check_writable(html, "--html")
    tune_gc(settings.gc_threshold)  # a replay holds every user's state, as a worker does
    options = ReplayOptions(int(settings.tick_interval_s * 1000), settings.max_message_bytes,
                            snapshot_every, window, baseline_share, settings.user_ttl_s * 1000,
                            champion=settings.model, challengers=shadowed,
                            model_defaults=model_defaults(settings))
    started = time.monotonic()
    with click.open_file(file, "rb") as stream:
        lines = _with_progress(stream, _size(file), progress)
        report = replay(lines, config, lambda: fresh_model(settings), options,
                        None if decisions_out is None else _decision_writer(decisions_out))
    if report.lines and not report.messages:
        raise NotALog(file, report)
    done(f"replay: {report.lines} lines, {sum(report.messages.values())} messages, "
         f"{sum(report.dead_letters.values())} dead letters in {time.monotonic() - started:.0f} s")
    click.echo(report.format_table())
    if report_json is not None:
        report_json.write_bytes(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2))
    if html is not None:
        write_report(html, replay_report(report.to_dict(), Path(file).name))


class NotALog(click.ClickException):
    """No line of the file was a message: it is not a replay log (exit code 1)."""

    def __init__(self, file: str, report: ReplayReport) -> None:
        first = report.dead_letter_samples[0] if report.dead_letter_samples else {}
        super().__init__(
            f"{file}: none of its {report.lines} lines is a pushflow message (line "
            f"{first.get('line', '?')}: {first.get('error', '?')[:120]}); replay reads JSONL "
            "of messages or envelopes, see docs/replay.md (an Open Bandit CSV: pushflow "
            "convert obd)")

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def with_policy_overrides(config: DeciderConfig, overrides: Iterable[str]) -> DeciderConfig:
    """``config`` with ``FIELD=VALUE`` policy overrides, typed like the field's default.

    >>> with_policy_overrides(DeciderConfig(), ["daily_cap=9"]).policy.daily_cap
    9
    """
    policy = config.policy
    for override in overrides:
        name, _, text = override.partition("=")
        if name not in {f.name for f in dataclasses.fields(policy)}:
            raise ValueError(f"--policy {override!r}: PolicyConfig has no field {name!r}")
        kind = type(getattr(policy, name))
        value = text.strip().lower() in ("1", "true", "yes", "on") if kind is bool else kind(text)
        policy = dataclasses.replace(policy, **{name: value})
    return dataclasses.replace(config, policy=policy)


def _decision_writer(out: BinaryIO) -> Callable[[StepOutput], None]:
    def write(step: StepOutput) -> None:
        for decision in step.decisions:
            out.write(orjson.dumps(decision) + b"\n")

    return write


def _size(file: str) -> int | None:
    return None if file == "-" else os.path.getsize(file)


def _with_progress(
    stream: IO[bytes], total: int | None, enabled: bool | None
) -> Iterator[bytes]:
    """The stream's lines, counted in bytes on a stderr bar (``None``: on a terminal)."""
    with bar(total, "replay", "B", enabled, unit_scale=True) as shown:
        for line in stream:
            shown.update(len(line))
            yield line
