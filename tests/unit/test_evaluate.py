"""``pushflow evaluate`` on a small population: the policies come out in the expected order."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from streams.evaluate import QUICK, EvalOptions, evaluate, evaluate_command, policy_config

TINY = EvalOptions(users=40, days=1.5, warmup_days=0.5, jobs=1)


SEEDS = (7, 8, 9)


@pytest.fixture(scope="module")
def quick() -> dict[str, Any]:
    """The --quick evaluation (400 users, 2 days learned, 2 measured), every policy, at
    threshold 0.15, pooled over three seeds: one seed is one draw of the simulated
    outcomes, and over seeds 1-9 the full policy's opens per push ranged 0.83-1.12 of the
    oracle's. Two days are too few to learn the 2x opens per push of the default run; that
    target is checked on the default run (docs/policy.md)."""
    runs = [evaluate(dataclasses.replace(QUICK, threshold=0.15, seed=seed))["policies"]
            for seed in SEEDS]
    pooled: dict[str, Any] = {}
    for name in runs[0]:
        rows = [run[name] for run in runs]
        opens, pushes = sum(r["opens"] for r in rows), sum(r["pushes"] for r in rows)
        pooled[name] = {
            "opens": opens, "pushes": pushes, "opens_per_push": opens / pushes if pushes else 0.0,
            "disables": sum(r["disables"] for r in rows),
            "pushes_per_user_day": sum(r["pushes_per_user_day"] for r in rows) / len(rows),
        }
    for row in pooled.values():
        row["oracle_share"] = row["opens"] / pooled["oracle"]["opens"]
    return pooled


def test_the_full_policy_gets_more_opens_per_push_than_sending_everything(
    quick: dict[str, Any],
) -> None:
    # How much above sending everything depends on the volume the threshold gives, so the bar
    # is the oracle's opens per push at equal volume, and a margin over sending everything
    full, everything = quick["full"]["opens_per_push"], quick["send-everything"]["opens_per_push"]
    assert full > 1.5 * everything
    assert full >= 0.9 * quick["oracle"]["opens_per_push"]
    assert quick["full"]["pushes_per_user_day"] < quick["send-everything"]["pushes_per_user_day"]


def test_the_full_policy_gets_most_of_the_oracles_opens_at_equal_volume(
    quick: dict[str, Any],
) -> None:
    # Over seeds 1-9 of --quick one seed's share ranged 0.82-1.09 (pooled 7-9: 0.92)
    assert quick["full"]["oracle_share"] >= 0.85
    assert quick["full"]["opens"] > quick["random"]["opens"]
    assert quick["full"]["opens"] > quick["fixed-threshold"]["opens"]
    assert quick["oracle-sto"]["opens"] > quick["oracle"]["opens"] > quick["random"]["opens"]


def test_the_full_policy_disables_no_more_users_than_sending_everything(
    quick: dict[str, Any],
) -> None:
    assert quick["full"]["disables"] <= quick["send-everything"]["disables"]


def test_matched_policies_send_the_full_policys_volume(quick: dict[str, Any]) -> None:
    volume = quick["full"]["pushes_per_user_day"]
    for name in ("random", "oracle", "oracle-sto"):
        assert quick[name]["pushes_per_user_day"] == pytest.approx(volume, rel=0.1), name


def test_same_options_same_figures() -> None:
    first, second = (evaluate(TINY, ["send-everything", "full"]) for _ in range(2))
    drop = ("runtime_s",)
    for name in ("send-everything", "full"):
        a, b = ({k: v for k, v in r["policies"][name].items() if k not in drop}
                for r in (first, second))
        assert a == b


def test_policies_differ_only_where_they_should() -> None:
    full = policy_config("full", QUICK)
    assert policy_config("send-everything", QUICK).holdout_share == 1.0
    assert full.holdout_share == 0.0 and full.send_time
    assert not policy_config("fixed-threshold", QUICK).send_time
    assert policy_config("oracle-sto", QUICK).send_time
    assert policy_config("full-volume", dataclasses.replace(QUICK, volume_target=1.5)) \
        .volume_target == 1.5
    with pytest.raises(ValueError, match="unknown policy"):
        policy_config("bogus", QUICK)


def test_the_command_prints_a_table_and_writes_the_report(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = CliRunner().invoke(evaluate_command, [
        "--users", "30", "--days", "1", "--warmup-days", "0.5", "--jobs", "1",
        "--policy", "send-everything", "--policy", "random", "--report-json", str(report)])
    assert result.exit_code == 0, result.output
    assert "send-everything" in result.output and "opens/push" in result.output
    written = orjson.loads(report.read_bytes())
    assert set(written["policies"]) == {"full", "send-everything", "random"}
    assert {"pushes_per_user_day", "opens", "opens_per_push", "disables", "oracle_share"} <= set(
        written["policies"]["random"])


def test_the_oracle_without_taste_is_the_oracle_less_the_users_interest() -> None:
    """``oracle-no-taste`` scores with everything the world hides but the user's interest in
    what is pushed: changing that interest moves the oracle's p_open, not this one's."""
    from streams.contracts import Candidate
    from streams.evaluate import true_p_open
    from streams.simulator import Population
    from streams.world_segments import SegmentWorld

    start, at = QUICK.start_ms, QUICK.start_ms + 14 * 3_600_000
    segments = SegmentWorld(3, 20, start)
    user = segments._users[0]
    c = Candidate("c1", user.user_id, "trending", "x1", at - 60_000, at + 3_600_000,
                  creator_id="k00001")
    before = (true_p_open(segments, c, at), true_p_open(segments, c, at, taste=False))
    user.taste = tuple(-3 * v for v in user.taste)
    assert true_p_open(segments, c, at, taste=False) == before[1]
    assert true_p_open(segments, c, at) != before[0]

    simulator = Population(3, 20, start)
    sim_user = simulator._users[0]
    c = dataclasses.replace(c, user_id=sim_user.user_id, kind="trending")
    before = (true_p_open(simulator, c, at), true_p_open(simulator, c, at, taste=False))
    simulator._users[0] = dataclasses.replace(sim_user, interest={"trending": 0.99})
    assert true_p_open(simulator, c, at, taste=False) == before[1]
    assert true_p_open(simulator, c, at) != before[0]
    assert policy_config("oracle-no-taste", QUICK) == policy_config("oracle", QUICK)


@pytest.mark.parametrize("world", ["simulator", "segments"])
def test_the_oracle_without_taste_is_matched_to_the_full_policy(world: str) -> None:
    from streams.evaluate import MATCHED

    assert "oracle-no-taste" in MATCHED  # steered like the oracle (test above on --quick)
    report = evaluate(dataclasses.replace(TINY, world=world), ["oracle-no-taste"])["policies"]
    assert set(report) == {"full", "oracle-no-taste"}
    assert report["oracle-no-taste"]["pushes"] > 0
