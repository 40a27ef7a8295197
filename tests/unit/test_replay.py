"""Unit tests of the offline replay (``streams/replay.py``).

The log comes from the seeded simulator driven in closed loop by a logging Decider, so it
holds real feedback for what was sent and the logging policy's propensities.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from streams.contracts import (
    Candidate,
    ContractError,
    UserEvent,
    parse_candidate,
    parse_user_event,
)
from streams.docfigures import LOGGING, START, envelope, record_log  # noqa: F401
from streams.evaluation import exact_auc
from streams.features import UserState
from streams.model import PushModel
from streams.offpolicy import L2_GRID, Labeled, batch_baseline, ips_estimates
from streams.pipeline import Decider, DeciderConfig, StepOutput
from streams.policy import PolicyConfig
from streams.replay import (
    CANDIDATES,
    EVENTS,
    ReplayOptions,
    read_record,
    replay,
    replay_command,
)

HOUR = 3_600_000
OPTIONS = ReplayOptions(tick_interval_ms=60_000)  # a coarser timer keeps the tests fast
Record = tuple[str, bytes | None, bytes, dict[str, Any] | None]  # topic, key, raw, logging


BAD_RECORDS: list[Record] = [
    (EVENTS, b"u000001", b"{not json", None),
    (CANDIDATES, b"u000001", b"[1, 2]", None),
    (EVENTS, b"u000002", b'{"event_id": "x", "user_id": "u000002", "type": "like", "tz": "UTC"}',
     None),
    (EVENTS, b"someone-else", orjson.dumps({"event_id": "y", "user_id": "u000003",
                                            "type": "like", "event_time_ms": START,
                                            "tz": "UTC"}), None),
    (CANDIDATES, b"u000004", orjson.dumps({"candidate_id": "bad-tz", "user_id": "u000004",
                                           "kind": "trending", "content_id": "v",
                                           "created_at_ms": START, "expires_at_ms": START,
                                           "tz": "Mars/Olympus_Mons"}), None),
    (CANDIDATES, b"u000005", orjson.dumps({"candidate_id": "bad-time", "user_id": "u000005",
                                           "kind": "trending", "content_id": "v",
                                           "created_at_ms": START + 10,
                                           "expires_at_ms": START}), None),
]
EXPECTED_DEAD = {"bad_time": 1, "invalid_json": 2, "key_mismatch": 1, "not_an_object": 1,
                 "schema_violation": 2, "unknown_time_zone": 1}


@pytest.fixture(scope="module")
def records() -> list[Record]:
    # 200 users give the batch baseline about 200 held-out labels: with 100 (about 100
    # labels) its AUC moved by +-0.1 from one seed of the outcome draws to the next
    good = record_log(users=200)
    mixed = list(good)
    for n, bad in enumerate(BAD_RECORDS):  # spread the bad ones through the log
        mixed.insert((n + 1) * len(good) // (len(BAD_RECORDS) + 1), bad)
    return mixed


@pytest.fixture(scope="module")
def lines(records: list[Record]) -> list[bytes]:
    out = [envelope(r) for r in records]
    out.insert(len(out) // 3, b"garbage that is no JSON")
    out.insert(len(out) // 2, b"   ")
    out.append(orjson.dumps({"topic": "other-topic", "key": "u1", "value": {}}))
    return out


@pytest.fixture(scope="module")
def report(lines: list[bytes]) -> dict[str, Any]:
    return replay(lines, DeciderConfig(), options=OPTIONS).to_dict()


# ------------------------------------------------------------------ the replay itself


def test_replay_is_deterministic_and_counts_dead_letters(lines: list[bytes], report: dict) -> None:
    again = replay(lines, DeciderConfig(), options=OPTIONS).to_dict()
    assert orjson.dumps(again) == orjson.dumps(report)
    assert report["dead_letters"] == EXPECTED_DEAD
    assert report["lines"] == len(lines)
    assert sum(report["messages"].values()) == len(lines) - 1 - sum(EXPECTED_DEAD.values())


def test_replay_reports_finite_model_figures(report: dict) -> None:
    pre = report["prequential"]
    assert report["learned"] == sum(report["labels"].values()) > 150
    assert report["opens_captured"] == report["labels"]["opened"] > 15
    assert math.isfinite(pre["rolling_auc"]) and 0.0 < pre["auc_all_labels"] < 1.0
    assert 0 < pre["log_loss"] < 1 and 0 <= pre["calibration_error"] < 0.5
    assert math.isfinite(report["p_disable_log_loss"])
    assert report["decisions"]["quiet_hours"] > 0 and report["decisions"]["released"] > 0
    assert report["intents"] >= report["decisions"].get("above_threshold", 0)


def test_batch_baseline_ranks_better_than_a_constant_on_the_simulated_log(report: dict) -> None:
    base = report["baseline"]
    assert base["train"] + base["test"] == report["prequential"]["n"]
    assert base["batch_lr"]["auc"] > 0.55 and base["constant"]["auc"] == 0.5
    assert math.isfinite(base["batch_lr"]["log_loss"]) and base["l2"] in L2_GRID


def test_batch_baseline_beats_a_constant_on_stationary_simulated_labels() -> None:
    rng = np.random.default_rng(7)
    examples = []
    for n in range(1200):
        x = {"a": float(rng.normal()), "b": float(rng.normal()), "kind=x": float(n % 2)}
        p = 1 / (1 + math.exp(-(-2.0 + 1.2 * x["a"] - 0.8 * x["b"] + 0.5 * x["kind=x"])))
        examples.append(Labeled(n, x, 0.1, int(rng.uniform() < p)))
    base = batch_baseline(examples)
    assert base["test"] == 600
    assert base["batch_lr"]["log_loss"] < base["constant"]["log_loss"] - 0.03
    assert base["batch_lr"]["auc"] > 0.75 and base["batch_lr"]["ece"] < 0.05


def test_replay_off_policy_figures_from_logged_propensities(report: dict) -> None:
    off = report["off_policy"]
    assert off["n"] == off["logged_sends"] + (off["n"] - off["logged_sends"]) > 1000
    lo, hi = off["snips_open_rate_ci95"]
    assert lo <= off["snips_open_rate"] <= hi and 0 < off["logged_open_rate"] < 1
    assert math.isfinite(off["ips_open_rate"])  # the log holds suppressions: complete


# ------------------------------------------------------------------ equivalence with the worker


def worker_decisions(
    records: list[Record], config: DeciderConfig, tick_ms: int = 5_000
) -> list[dict[str, Any]]:
    """What ``PushflowWorker.handle`` and its tick timer do, on one partition, with the
    trainer's model served at once (the worker serves it after each snapshot)."""
    model, table, due = PushModel(), dict[bytes, UserState](), set[bytes]()
    decider, decisions, clock = Decider(lambda: model, config), [], {"wm": 0, "next": 0}

    def emit(out: StepOutput) -> None:
        decisions.extend(out.decisions)
        for ex in out.examples:
            model.learn(ex.features, opened=bool(ex.label), disabled=bool(ex.disabled))

    def track(key: bytes, state: UserState) -> None:
        clock["wm"] = max(clock["wm"], state.watermark_ms)
        (due.add if state.pending or state.outbox else due.discard)(key)

    for topic, key, raw, _ in records:
        try:
            parsed: UserEvent | Candidate = (
                parse_candidate(raw, key) if topic == CANDIDATES else parse_user_event(raw, key)
            )
        except ContractError:
            continue
        key = key or b""  # the contract checked it is the user id
        state = table.get(key) or UserState(parsed.user_id, tz_known=False)
        if isinstance(parsed, Candidate):
            out = decider.on_candidate(state, parsed)
        else:
            out = decider.on_event(state, parsed)
        table[key] = state
        track(key, state)
        emit(out)
        if clock["wm"] >= clock["next"]:  # the timer, on event time
            for k in sorted(due):
                out = decider.on_tick(table[k], clock["wm"])
                if out.decisions or out.examples or out.intents:
                    track(k, table[k])
                    emit(out)
            clock["next"] = clock["wm"] - clock["wm"] % tick_ms + tick_ms
    return decisions


def test_replay_makes_the_workers_decisions(records: list[Record]) -> None:
    """Without logging fields (the worker never sees them) the replay learns every label."""
    replayed: list[dict] = []
    lines = [envelope((topic, key, raw, None)) for topic, key, raw, _ in records]
    replay(lines, DeciderConfig(), options=OPTIONS, sink=lambda o: replayed.extend(o.decisions))
    expected = worker_decisions(records, DeciderConfig(), tick_ms=OPTIONS.tick_interval_ms)
    assert len(replayed) == len(expected) > 1000
    assert replayed == expected


# ------------------------------------------------------------------ envelope and logging fields


def test_read_record_accepts_bare_messages_and_raw_values() -> None:
    event = {"event_id": "e", "user_id": "u1", "type": "like", "event_time_ms": START, "tz": "Z"}
    bare = read_record(orjson.dumps(event))
    assert (bare.topic, bare.key) == (EVENTS, b"u1")
    keyless = read_record(orjson.dumps({"topic": "prod.user-events", "value": event}))
    assert (keyless.topic, keyless.key, keyless.raw) == (EVENTS, b"u1", orjson.dumps(event))
    raw = read_record(orjson.dumps({"topic": EVENTS, "key": None, "value": "{oops"}))
    assert (raw.key, raw.raw) == (None, b"{oops")
    with pytest.raises(ContractError, match="tell its topic"):
        read_record(b'{"user_id": "u1"}')


def test_bad_logging_fields_are_counted_and_the_candidate_still_replayed() -> None:
    candidate = {"candidate_id": "c1", "user_id": "u1", "kind": "trending", "content_id": "v",
                 "created_at_ms": START, "expires_at_ms": START + HOUR}
    line = orjson.dumps({"topic": CANDIDATES, "key": "u1", "value": candidate,
                         "logged_action": "send", "logging_propensity": 1.5})
    r = replay([line], DeciderConfig())
    assert r.ignored == {"invalid_logging_fields": 1} and sum(r.decisions.values()) == 1
    assert r.off_policy is None


def test_a_recorded_arrival_dates_the_decision_and_judges_expiry() -> None:
    """A candidate the worker read two hours after it was created, with a one-hour expiry, was
    expired on arrival; without a recorded arrival event time stands in and it is sent."""
    candidate = {"candidate_id": "c1", "user_id": "u1", "kind": "trending", "content_id": "v",
                 "created_at_ms": START, "expires_at_ms": START + HOUR, "tz": "UTC"}
    config = DeciderConfig(policy=PolicyConfig(threshold=0.0, quiet_start_hour=0,
                                               quiet_end_hour=0, holdout_share=0.0))
    late = {"topic": CANDIDATES, "key": "u1", "value": candidate, "arrival_ms": START + 2 * HOUR}
    assert read_record(orjson.dumps(late)).arrival_ms == START + 2 * HOUR
    assert replay([orjson.dumps(late)], config).decisions == {"expired": 1}
    on_time = {**late, "arrival_ms": START + 60_000}
    decided: list[dict[str, Any]] = []
    replay([orjson.dumps(on_time)], config, sink=lambda out: decided.extend(out.decisions))
    assert [(d["reason"], d["decided_at_ms"]) for d in decided] == [
        ("above_threshold", START + 60_000)]
    unrecorded = {k: v for k, v in late.items() if k != "arrival_ms"}
    assert replay([orjson.dumps(unrecorded)], config).decisions == {"above_threshold": 1}
    assert read_record(orjson.dumps({**late, "arrival_ms": "soon"})).arrival_ms is None


def test_outcomes_the_log_cannot_know_are_not_learned() -> None:
    candidate = {"candidate_id": "c1", "user_id": "u1", "kind": "trending", "content_id": "v",
                 "created_at_ms": START, "expires_at_ms": START + HOUR, "tz": "UTC"}
    later = {"event_id": "e", "user_id": "u1", "type": "like", "event_time_ms": START + 3 * HOUR,
             "tz": "UTC"}
    lines = [orjson.dumps({"topic": CANDIDATES, "key": "u1", "value": candidate,
                           "logged_action": "suppress", "logging_propensity": 0.9}),
             orjson.dumps({"topic": EVENTS, "key": "u1", "value": later})]
    config = DeciderConfig(policy=PolicyConfig(threshold=0.0, quiet_start_hour=0,
                                               quiet_end_hour=0, holdout_share=0.0))
    r = replay(lines, config)
    assert r.intents == 1 and r.unlogged_labels == 1 and r.learned == 0 and r.labels == {}


def test_idle_users_are_forgotten_after_the_ttl_like_the_worker_does() -> None:
    def like(user: str, at_ms: int) -> bytes:
        return orjson.dumps({"event_id": f"{user}{at_ms}", "user_id": user, "type": "like",
                             "event_time_ms": at_ms, "tz": "UTC"})

    lines = [like("u1", START), like("u2", START), like("u2", START + 3 * HOUR)]
    r = replay(lines, DeciderConfig(), options=ReplayOptions(user_ttl_ms=2 * HOUR))
    assert (r.users, r.users_expired) == (1, 1)


# ------------------------------------------------------------------ estimators


def synthetic_log(seed: int, n: int = 4000) -> tuple[dict[str, np.ndarray], float, float]:
    """Logged send/suppress with known truth: (arrays, opens per candidate, open rate)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=n)
    mu_send, q = 0.2 + 0.6 * x, 0.05 + 0.3 * x
    pi_send = np.where(x > 0.5, 1.0, 0.1)
    sent = rng.uniform(size=n) < mu_send
    reward = (rng.uniform(size=n) < q) & sent
    # Exact expectations over x ~ U(0, 1): E[pi q] and E[pi].
    value = 0.1 * (0.05 * 0.5 + 0.15 * 0.25) + (0.05 * 0.5 + 0.15 * 0.75)
    share = 0.1 * 0.5 + 0.5
    arrays = {"sent": sent, "propensity": np.where(sent, mu_send, 1 - mu_send),
              "reward": reward, "p_send": pi_send}
    return arrays, value, value / share


def _inside(r: dict[str, Any], name: str, truth: float) -> bool:
    lo, hi = r[name + "_ci95"]
    return lo <= truth <= hi


def test_ips_lands_within_its_interval_on_known_truth() -> None:
    arrays, value, rate = synthetic_log(seed=1)
    r = ips_estimates(**arrays)
    assert _inside(r, "ips_opens_per_candidate", value)
    assert _inside(r, "ips_open_rate", rate) and _inside(r, "snips_open_rate", rate)
    assert r["ips_send_share"] == pytest.approx(0.55, abs=0.05)


def test_ips_intervals_cover_the_truth_about_95_percent_of_the_time() -> None:
    hits = {"ips_opens_per_candidate": 0, "ips_open_rate": 0, "snips_open_rate": 0}
    seeds = 80
    for seed in range(seeds):
        arrays, value, rate = synthetic_log(seed, n=1500)
        r = ips_estimates(**arrays)
        for name in hits:
            hits[name] += _inside(r, name, value if name.endswith("candidate") else rate)
    assert all(0.86 <= h / seeds <= 1.0 for h in hits.values()), hits


def test_ips_of_a_sampled_log_reports_only_the_self_normalised_rate() -> None:
    """Logs holding only the logger's sends (like OBD) cannot give the exact-share IPS rate."""
    rng = random.Random(5)
    rows = [(1, 1 / 80, int(rng.random() < 0.01), 1.0) for _ in range(500)]
    r = ips_estimates(*zip(*rows, strict=True))
    assert math.isnan(r["ips_open_rate"]) and r["ips_send_share"] == pytest.approx(80)
    assert r["snips_open_rate"] == pytest.approx(r["logged_open_rate"])


def test_exact_auc_counts_pairs_with_ties_as_half() -> None:
    rng = random.Random(2)
    p = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(60)]
    y = [int(rng.random() < 0.4) for _ in range(60)]
    pairs = [(a, b) for (a, ya), (b, yb) in itertools.product(zip(p, y, strict=True), repeat=2)
             if ya == 1 and yb == 0]
    brute = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert exact_auc(p, y) == pytest.approx(brute)
    assert math.isnan(exact_auc([0.2, 0.3], [1, 1]))


# ------------------------------------------------------------------ the command


def test_replay_command_prints_a_table_and_writes_json(lines: list[bytes], tmp_path: Any) -> None:
    log, out, decisions = tmp_path / "log.jsonl", tmp_path / "report.json", tmp_path / "d.jsonl"
    log.write_bytes(b"\n".join(lines[:3000]) + b"\n")
    result = CliRunner().invoke(replay_command, [
        str(log), "--report-json", str(out), "--decisions-out", str(decisions), "--no-progress",
        "--threshold", "0.05", "--quiet-start-hour", "0", "--quiet-end-hour", "0",
        "--policy", "send_time=false",
    ], env={"PUSHFLOW_EXPLORE_SHARE": "0.1"})
    assert result.exit_code == 0, result.output
    assert "baselines on the last" in result.output and "dead letters" in result.output
    report = orjson.loads(out.read_bytes())
    assert report["lines"] == 3000 and "quiet_hours" not in report["decisions"]
    assert "held_for_send_time" not in report["decisions"]
    written = [orjson.loads(x) for x in decisions.read_bytes().splitlines()]
    assert len(written) == sum(report["decisions"].values())
    assert {d["threshold"] for d in written} == {0.05}


def test_replay_command_refuses_bad_settings(tmp_path: Any) -> None:
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"")
    result = CliRunner().invoke(replay_command, [str(log), "--threshold", "2"])
    assert result.exit_code == 2 and "threshold" in result.output
    result = CliRunner().invoke(replay_command, [str(log), "--policy", "no_such_knob=1"])
    assert result.exit_code == 2 and "no_such_knob" in result.output


def test_snapshot_lag_scores_with_an_older_model(lines: list[bytes], report: dict) -> None:
    options = ReplayOptions(tick_interval_ms=OPTIONS.tick_interval_ms, snapshot_every=50)
    versions: list[int] = []
    lagged = replay(lines, DeciderConfig(), options=options, sink=lambda o: versions.extend(
        d["model_version"] for d in o.decisions if d["p_open"] is not None))
    assert lagged.learned > 100 and {v % 50 for v in versions} == {0}
    assert lagged.prequential["log_loss"] != report["prequential"]["log_loss"]


# ------------------------------------------------------------------ baselines on the same rows


def test_every_baseline_is_scored_on_the_same_test_rows(report: dict) -> None:
    base = report["baseline"]
    names = ["online", "running_constant", "per_user", "per_content", "per_creator",
             "per_kind", "batch_lr", "lightgbm", "constant"]
    pytest.importorskip("lightgbm")
    assert all(base[n]["n"] == base["test"] for n in names)
    assert all(base[n]["base_rate"] == base["online"]["base_rate"] for n in names)
    assert base["best"]["log_loss"] in names[1:] and base["best"]["auc"] in names[1:]
    assert set(base["verdict"]) == {"auc_at_least_best", "log_loss_beats_constant"}
    assert all(0.0 < base[n]["log_loss"] < 1.0 for n in names)


def test_lightgbm_is_skipped_and_said_so_when_it_does_not_import(
    report: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "lightgbm", None)
    rng = np.random.default_rng(3)
    examples = [Labeled(n, {"a": float(rng.normal())}, 0.2, int(rng.uniform() < 0.2),
                        ("u", "c", "", "k"), (0.2,) * 5) for n in range(400)]
    base = batch_baseline(examples)
    assert "lightgbm" not in base and "not installed" in base["lightgbm_skipped"]
    from streams.replay import _baseline_lines

    assert any("lightgbm skipped" in line for line in _baseline_lines(base))


def test_lightgbm_figures_do_not_change_from_run_to_run() -> None:
    pytest.importorskip("lightgbm")
    rng = np.random.default_rng(5)
    examples = []
    for n in range(1000):
        user = f"u{rng.integers(30)}"
        p = 0.05 + 0.4 * (int(user[1:]) % 3 == 0)
        examples.append(Labeled(n, {"a": float(rng.normal())}, 0.2, int(rng.uniform() < p),
                                (user, f"c{n}", "", "k"), (0.2,) * 5))
    first, second = batch_baseline(examples), batch_baseline(examples)
    assert first["lightgbm"] == second["lightgbm"] and first["lightgbm"]["auc"] > 0.6


def test_the_best_baseline_and_the_verdict_are_named() -> None:
    rng = np.random.default_rng(11)
    examples = []
    for n in range(1200):
        good = n % 2 == 0
        label = int(rng.uniform() < (0.4 if good else 0.05))
        rates = (0.2, 0.4 if good else 0.05, 0.2, 0.2, 0.2)  # per-user knows the truth
        examples.append(Labeled(n, {"a": float(rng.normal())}, 0.2, label,
                                ("u", f"c{n}", "", "k"), rates))  # trees cannot tell
    base = batch_baseline(examples)
    assert base["best"]["auc"] == "per_user"
    assert base["verdict"] == {"auc_at_least_best": False, "log_loss_beats_constant": False}


def test_tracked_keys_are_bounded_and_popped_when_learned(lines: list[bytes]) -> None:
    from streams.replay import Replayer

    replayer = Replayer(DeciderConfig(), PushModel(), ReplayOptions(tick_interval_ms=60_000,
                                                                    max_tracked=50))
    biggest = 0
    for line in lines[:20_000]:
        replayer.feed(line)
        biggest = max(biggest, len(replayer.tracked))
    assert 0 < biggest <= 50
    assert replayer.rates.labels == replayer.trainer.version  # every learned label, no more


def test_replay_keeps_item_statistics_with_the_configured_half_life() -> None:
    from streams.config import decider_config
    from streams.replay import Replayer
    from streams.settings import Settings

    config = decider_config(Settings(item_half_life_s=86_400))
    replayer = Replayer(config, PushModel(), ReplayOptions(tick_interval_ms=60_000))
    assert replayer.decider.items is not None
    assert replayer.decider.items.half_life_ms == 86_400_000


def test_idle_users_expire_after_the_ttl_and_only_then() -> None:
    """The hourly sweep forgets users idle for ``user_ttl_ms``; users seen later, or with a
    push in flight, stay (the sweep skips its scan while no user can be that old)."""
    def event(user: str, at_ms: int, n: int) -> bytes:
        return orjson.dumps({"event_id": f"e{n}", "user_id": user, "type": "like",
                             "event_time_ms": at_ms, "tz": "UTC"})

    ttl = 3 * HOUR
    lines = [event("early", START, 0), event("later", START + 2 * HOUR, 1)]
    lines += [event("clock", START + h * HOUR // 2, 10 + h) for h in range(2, 15)]
    report = replay(lines, DeciderConfig(), options=ReplayOptions(tick_interval_ms=60_000,
                                                                  user_ttl_ms=ttl))
    assert report.users_expired == 2  # "early" after 3 h, "later" after 5 h of event time
    assert report.users == 1
    kept = replay(lines, DeciderConfig(), options=ReplayOptions(tick_interval_ms=60_000,
                                                                user_ttl_ms=8 * HOUR))
    assert kept.users_expired == 0 and kept.users == 3
