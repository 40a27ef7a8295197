"""Unit tests of the Open Bandit Dataset converter (``streams/obd.py``) on a vendored slice."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import tarfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from streams.contracts import intent_id_for, parse_candidate, parse_user_event
from streams.model import PushModel
from streams.obd import (
    TZ,
    convert,
    convert_command,
    item_kinds,
    synthetic_user_id,
)
from streams.pipeline import DeciderConfig
from streams.policy import PolicyConfig
from streams.replay import (
    CANDIDATES,
    EVENTS,
    Replayer,
    ReplayOptions,
    read_record,
    replay,
    replay_command,
    with_policy_overrides,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "obd"
# OBD shows items to cohorts of users on a web page: none of our per-user guardrails apply.
SEND_ALL = DeciderConfig(attribution_window_ms=60_000, policy=PolicyConfig(
    threshold=0.0, disable_weight=0.0, daily_cap=10**9, min_gap_ms=0, quiet_start_hour=0,
    quiet_end_hour=0, holdout_share=0.0, explore_share=0.0, dismiss_weight=0.0,
    send_time=False, dedupe_content=False, similar_window_ms=0, active_now_ms=0,
    new_user_daily_cap=0, new_user_min_gap_ms=0, p_disable_cap_at=0.0))


def rows(policy: str) -> list[dict[str, str]]:
    with open(DATA / policy / "all" / "all.csv", newline="") as f:
        return list(csv.DictReader(f))


def kinds(policy: str) -> dict[str, str]:
    with open(DATA / policy / "all" / "item_context.csv", newline="") as f:
        return item_kinds(csv.DictReader(f))


def envelopes(policy: str, no_click: str = "silent") -> list[dict[str, Any]]:
    return list(convert(rows(policy), kinds(policy), f"{policy}-all", no_click))


@pytest.mark.parametrize("policy", ["random", "bts"])
def test_every_converted_message_is_schema_valid(policy: str) -> None:
    seen: dict[str, int] = {}
    for envelope in envelopes(policy, no_click="dismissed"):
        raw, key = orjson.dumps(envelope["value"]), envelope["key"].encode()
        if envelope["topic"] == CANDIDATES:
            parse_candidate(raw, key)
            kind = "candidate"
        else:
            kind = parse_user_event(raw, key).type
        seen[kind] = seen.get(kind, 0) + 1
        assert envelope["value"]["tz"] == TZ
    clicks = sum(int(r["click"]) for r in rows(policy))
    assert clicks > 0
    assert seen == {"app_open": 200, "candidate": 200, "push_opened": clicks,
                    "push_dismissed": 200 - clicks}


def test_lines_are_in_event_time_order_and_feedback_names_its_intent() -> None:
    times, intents = [], set()
    for envelope in envelopes("bts"):
        value = envelope["value"]
        times.append(value.get("event_time_ms", value.get("created_at_ms")))
        if envelope["topic"] == CANDIDATES:
            intents.add(intent_id_for(value["user_id"], value["candidate_id"]))
        elif value["type"] != "app_open":
            assert value["intent_id"] in intents  # its candidate came first
    assert times == sorted(times)


def test_logging_fields_carry_the_propensity_and_the_click() -> None:
    records = [read_record(orjson.dumps(e)) for e in envelopes("bts") if e["topic"] == CANDIDATES]
    logged = [r.logged for r in records if r.logged is not None]
    assert len(logged) == len(records) == 200
    source = rows("bts")
    assert [lg.propensity for lg in logged] == [float(r["propensity_score"]) for r in source]
    assert [lg.reward for lg in logged] == [int(r["click"]) for r in source]
    assert {lg.action for lg in logged} == {"send"}


def test_users_are_cohorts_of_equal_user_features_and_kinds_item_categories() -> None:
    source = rows("random")
    by_features: dict[tuple[str, ...], set[str]] = {}
    for row in source:
        features = tuple(row[f"user_feature_{i}"] for i in range(4))
        by_features.setdefault(features, set()).add(synthetic_user_id(row))
    assert all(len(ids) == 1 for ids in by_features.values())
    assert len({next(iter(ids)) for ids in by_features.values()}) == len(by_features)
    assert len(set(kinds("random").values())) == 12


def test_silent_no_click_writes_no_dismissals() -> None:
    types = [e["value"].get("type") for e in envelopes("random")]
    assert "push_dismissed" not in types and types.count("push_opened") == 1


def test_convert_command_reads_a_directory_or_the_obp_sdist(tmp_path: Path) -> None:
    sdist = tmp_path / "obp-0.5.7.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(DATA / "random", arcname="obp-0.5.7/obp/dataset/obd/random")
    outputs = []
    for data in (DATA, sdist):
        out = tmp_path / f"{data.name}.jsonl"
        result = CliRunner().invoke(convert_command, ["obd", "--data", str(data), "-o", str(out)])
        assert result.exit_code == 0, result.output
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] and outputs[0].count(b"\n") == 401  # one click
    result = CliRunner().invoke(convert_command, ["obd", "--data", str(sdist), "--policy", "bts"])
    assert result.exit_code == 2 and "holds no bts/all/all.csv" in result.output


@pytest.mark.skipif(importlib.util.find_spec("obp") is not None, reason="obp is installed")
def test_convert_command_explains_how_to_get_the_sample_without_obp() -> None:
    result = CliRunner().invoke(convert_command, ["obd"])
    assert result.exit_code == 2 and "pip download" in result.output


@pytest.mark.parametrize("policy", ["random", "bts"])
def test_replay_of_the_slice_learns_every_impression(policy: str) -> None:
    lines = [orjson.dumps(e) for e in envelopes(policy)]
    report = replay(lines, SEND_ALL)
    clicks = sum(int(r["click"]) for r in rows(policy))
    assert report.dead_letters == {} and report.ignored == {}
    assert report.learned + report.pending_at_end == 200 and report.pending_at_end < 5
    assert report.opens_captured == clicks
    assert report.messages == {CANDIDATES: 200, EVENTS: 200 + clicks}
    assert report.labels == {"expired": report.learned - clicks, "opened": clicks}
    off = report.off_policy
    assert off is not None and off["replay_send_share"] == 1.0
    weights = [1 / float(r["propensity_score"]) for r in rows(policy)]
    snips = sum(w * int(r["click"]) for w, r in zip(weights, rows(policy), strict=True))
    assert off["snips_open_rate"] == pytest.approx(snips / sum(weights))


def test_content_is_the_item_so_it_repeats_across_impressions() -> None:
    candidates = [e["value"] for e in envelopes("random") if e["topic"] == CANDIDATES]
    assert {c["content_id"] for c in candidates} == {f"item-{r['item_id']}" for r in rows("random")}
    assert len({c["content_id"] for c in candidates}) < len(candidates)
    assert all("creator_id" not in c for c in candidates)  # OBD names no brand or seller


def test_dedupe_content_false_sends_an_item_a_cohort_saw_today() -> None:
    lines = [orjson.dumps(e) for e in envelopes("random")]
    deduped = replay(lines, dataclasses.replace(
        SEND_ALL, policy=dataclasses.replace(SEND_ALL.policy, dedupe_content=True)))
    assert deduped.decisions.get("duplicate", 0) > 0
    assert "duplicate" not in replay(lines, SEND_ALL).decisions
    overridden = with_policy_overrides(DeciderConfig(), ["dedupe_content=false"])
    assert overridden.policy.dedupe_content is False
    assert with_policy_overrides(overridden, ["dedupe_content=true"]).policy.dedupe_content


def test_replay_command_takes_dedupe_content_false(tmp_path: Path) -> None:
    log, out = tmp_path / "obd.jsonl", tmp_path / "report.json"
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in envelopes("random")))
    common = [str(log), "--no-progress", "--threshold", "0", "--disable-weight", "0",
              "--daily-cap", "1000000", "--min-gap-s", "0", "--quiet-start-hour", "0",
              "--quiet-end-hour", "0", "--holdout-share", "0", "--attribution-window-s", "60",
              "--policy", "send_time=false", "--policy", "dismiss_weight=0",
              "--policy", "similar_window_ms=0", "--policy", "active_now_ms=0",
              "--policy", "new_user_daily_cap=0", "--policy", "new_user_min_gap_ms=0"]
    decisions = []
    for extra in ([], ["--policy", "dedupe_content=false"]):
        result = CliRunner().invoke(replay_command, [*common, *extra, "--report-json", str(out)])
        assert result.exit_code == 0, result.output
        decisions.append(orjson.loads(out.read_bytes())["decisions"])
    assert decisions[0].get("duplicate", 0) > 0 and decisions[1] == {"above_threshold": 200}


def test_rate_baselines_are_prequential_over_every_label_in_time_order() -> None:
    """Labels resolve within a minute; with impressions ten minutes apart each row's running
    and per-cohort rates are those of exactly the labels before it."""
    spaced = [{**r, "timestamp": "2019-11-24 00:00:00+00:00"} for r in rows("bts")]
    start = datetime.fromisoformat(spaced[0]["timestamp"])
    for n, row in enumerate(spaced):
        row["timestamp"] = (start + timedelta(minutes=10 * n)).isoformat()
    replayer = Replayer(SEND_ALL, PushModel(), ReplayOptions())
    for envelope in convert(spaced, kinds("bts"), "bts-all"):
        replayer.feed(orjson.dumps(envelope))
    replayer.finish()
    seen: list[tuple[str, int]] = []
    for row in replayer.labeled:
        opens, n = sum(y for _, y in seen), len(seen)
        base = (opens + 0.5) / (n + 1)
        mine = [y for u, y in seen if u == row.keys[0]]
        assert row.rates[0] == pytest.approx(base)
        assert row.rates[1] == pytest.approx((sum(mine) + 10 * base) / (len(mine) + 10))
        seen.append((row.keys[0], row.label))
    assert len(seen) > 190 and replayer.rates.labels == len(seen)
