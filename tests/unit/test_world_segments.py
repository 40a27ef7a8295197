"""The segments world has the shape it claims, and ``pushflow evaluate`` on it can fail."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from streams.delivery_audit import Audit
from streams.evaluate import START_MS, EvalOptions, evaluate, evaluate_command
from streams.simulator import CANDIDATES, DAY_MS, HOUR_MS, local_hour
from streams.world_segments import CRITICAL, SEGMENTS, ZONES, SegmentWorld

DAYS = 6
POLICIES = ["send-everything", "random", "fixed-threshold", "full", "oracle", "inverted"]
SMALL = EvalOptions(users=150, days=3.0, warmup_days=1.5, threshold=0.15, jobs=2)


def _run(seed: int, users: int = 300, days: float = DAYS) -> list[tuple[str, dict[str, Any]]]:
    world = SegmentWorld(seed, users, START_MS)
    out = []
    for step in range(1, int(days * 24) + 1):
        out += world.advance(START_MS + step * HOUR_MS)
    return out


@pytest.fixture(scope="module")
def messages() -> list[tuple[str, dict[str, Any]]]:
    return _run(5)


@pytest.fixture(scope="module")
def reports() -> dict[str, dict[str, Any]]:
    """Both worlds, small: 150 users, 1.5 days learned and 1.5 measured."""
    return {world: evaluate(dataclasses.replace(SMALL, world=world), POLICIES)["policies"]
            for world in ("simulator", "segments")}


def test_same_seed_same_world_and_another_seed_another() -> None:
    first, again, other = _run(9, 60, 1.0), _run(9, 60, 1.0), _run(10, 60, 1.0)
    assert first == again
    assert first != other


def test_every_segment_has_two_activity_peaks() -> None:
    for segment in SEGMENTS:
        curve = [segment.activity(h / 4) for h in range(96)]
        peaks = [i for i in range(96)
                 if curve[i] > curve[i - 1] and curve[i] >= curve[(i + 1) % 96]]
        assert len(peaks) == 2, segment.name


def test_sessions_follow_each_segments_two_peaks(
    messages: list[tuple[str, dict[str, Any]]],
) -> None:
    world = SegmentWorld(5, 300, START_MS)  # the same users: only their truth is read
    by_segment: dict[str, Counter[int]] = defaultdict(Counter)
    for _, m in messages:
        if m.get("type") == "app_open" and not m["tz"].startswith(("+", "-")):
            hour = int(local_hour(m["tz"], m["event_time_ms"]))
            by_segment[world.segment_of(m["user_id"]).name][hour] += 1
    for segment in SEGMENTS:
        hours = by_segment[segment.name]
        for mu, _, _ in segment.peaks:  # each bump stands well above 04:00, a trough for all
            assert hours[int(mu) % 24] > 2 * hours[4], (segment.name, mu, hours)


def test_zones_include_a_dst_change_inside_the_run(
    messages: list[tuple[str, dict[str, Any]]],
) -> None:
    assert len(ZONES) == 15
    offsets: dict[str, set[str]] = defaultdict(set)
    for _, m in messages:
        if re.fullmatch(r"[+-]\d\d:\d\d", m.get("tz", "")):
            offsets[m["user_id"]].add(m["tz"])
    shifted = [u for u, seen in offsets.items() if {"-05:00", "-04:00"} <= seen
               or {"-06:00", "-05:00"} <= seen or {"-08:00", "-07:00"} <= seen]
    assert shifted, "no user's reported UTC offset moved by an hour at the US change to DST"


def test_travellers_report_their_new_zone() -> None:
    world = SegmentWorld(5, 300, START_MS)
    out = []
    for step in range(1, DAYS * 24 + 1):
        out += world.advance(START_MS + step * HOUR_MS)
    travellers = world.travellers()
    assert travellers
    for user_id, moves in travellers.items():
        moved_at, zone = moves[0]
        after = [m["tz"] for _, m in out if m["user_id"] == user_id and "type" in m
                 and m["event_time_ms"] > moved_at]
        reported = after[0] if after else zone
        assert reported == zone or reported[0] in "+-", user_id


def test_some_candidates_are_late_some_resent_and_a_few_critical(
    messages: list[tuple[str, dict[str, Any]]],
) -> None:
    candidates = [m for topic, m in messages if topic == CANDIDATES]
    late = [c for c in candidates if c["arrived_at_ms"] > c["created_at_ms"]]
    resent = [n for n in Counter(c["candidate_id"] for c in candidates).values() if n > 1]
    critical = [c for c in candidates if c["critical"]]
    assert 0.05 < len(late) / len(candidates) < 0.3
    assert 0.01 < len(resent) / len(candidates) < 0.1
    assert 0.01 < len(critical) / len(candidates) < 0.15
    assert {c["kind"] for c in critical} == set(CRITICAL)
    assert all(c["expires_at_ms"] - c["created_at_ms"] <= 30 * 60_000 for c in critical)
    assert all(c["expires_at_ms"] - c["created_at_ms"] <= DAY_MS for c in candidates)


def test_the_oracle_gets_the_most_opens_at_its_volume(reports: dict[str, Any]) -> None:
    for world, rows in reports.items():
        oracle = rows["oracle"]
        for name in ("random", "fixed-threshold", "full", "inverted"):
            if rows[name]["pushes"] <= 1.1 * oracle["pushes"]:
                assert oracle["opens"] >= 0.95 * rows[name]["opens"], (world, name)


def test_a_policy_that_inverts_the_truth_scores_clearly_below_random(
    reports: dict[str, Any],
) -> None:
    rows = reports["segments"]
    assert rows["inverted"]["opens_per_push"] < 0.7 * rows["random"]["opens_per_push"]
    assert rows["inverted"]["oracle_share"] < rows["random"]["oracle_share"]


COLUMNS = {"pushes_per_user_day", "opens", "opens_per_push", "noncritical_opens_per_push",
           "disables", "sessions_per_user_day", "sessions_vs_holdout", "oracle_share",
           "critical_delivered", "sends_after_expiry", "quiet_hour_sends",
           "decisions_before_arrival", "max_final_decisions", "candidates_not_one_final"}


def test_both_worlds_report_every_column(reports: dict[str, Any]) -> None:
    for rows in reports.values():
        for name, row in rows.items():
            assert set(row) >= COLUMNS, name
        assert rows["send-everything"]["sessions_vs_holdout"] == 1.0


def test_world_both_prints_and_writes_both_reports(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = CliRunner().invoke(evaluate_command, [
        "--users", "30", "--days", "1", "--warmup-days", "0.5", "--jobs", "1", "--world", "both",
        "--policy", "send-everything", "--report-json", str(report)])
    assert result.exit_code == 0, result.output
    assert "world: simulator" in result.output and "world: segments" in result.output
    assert result.output.count("finals!=1") == 2
    assert set(orjson.loads(report.read_bytes())) == {"simulator", "segments"}


def test_the_audit_counts_what_must_never_happen() -> None:
    audit = Audit(lambda user_id, at_ms: "UTC", (22, 8), 0, DAY_MS, 2 * DAY_MS)
    audit.told["u1"] = "UTC"
    for n, critical in ((1, True), (2, False), (3, True)):
        audit.arrived({"candidate_id": f"c{n}", "user_id": "u1", "created_at_ms": 0,
                       "arrived_at_ms": 10 * HOUR_MS, "expires_at_ms": 11 * HOUR_MS,
                       "critical": critical})
    audit.decided({"candidate_id": "c1", "action": "send", "decided_at_ms": 10 * HOUR_MS})
    audit.decided({"candidate_id": "c2", "action": "hold", "decided_at_ms": 9 * HOUR_MS})
    audit.decided({"candidate_id": "c2", "action": "send", "decided_at_ms": 10 * HOUR_MS})
    audit.decided({"candidate_id": "c2", "action": "suppress", "decided_at_ms": 10 * HOUR_MS})
    audit.sent({"candidate_id": "c1", "user_id": "u1", "intent_id": "i1", "critical": True,
                "send_at_ms": 10 * HOUR_MS})
    audit.sent({"candidate_id": "c2", "user_id": "u1", "intent_id": "i2", "critical": False,
                "send_at_ms": 23 * HOUR_MS})
    r = audit.report()
    assert r["critical_delivered"] == 0.5  # c3 never sent
    assert r["sends_after_expiry"] == 1
    assert r["quiet_hour_sends"] == 1  # 23:00 UTC, and the worker was told UTC
    assert r["decisions_before_arrival"] == 1  # the hold at 09:00, before the 10:00 arrival
    assert (r["max_final_decisions"], r["candidates_not_one_final"]) == (2, 2)  # c2 two, c3 none
    audit.told["u1"] = "+01:00"
    audit.sent({"candidate_id": "c2", "user_id": "u1", "intent_id": "i3", "critical": False,
                "send_at_ms": 23 * HOUR_MS + 1})
    assert audit.report()["quiet_hour_sends"] == 1  # not told the zone: not judged
