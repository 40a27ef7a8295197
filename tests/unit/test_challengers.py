"""Champion and challengers: shadows learn every label, travel in snapshots, can be promoted
with what they learned, and never change a decision."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from streams import challengers
from streams.challengers import Shadows, parse_spec
from streams.config import fresh_model, model_defaults
from streams.docfigures import envelope, record_log
from streams.errors import ConfigError
from streams.metrics import Metrics
from streams.model import PushModel
from streams.pipeline import DeciderConfig, StepOutput
from streams.replay import Replayer, ReplayOptions
from streams.settings import Settings
from streams.snapshots import ModelHolder
from streams.training import Trainer

FEATURES = [{"act_1h": 0.5, "kind=live_started": 1.0, "h=17": 1.0},
            {"act_1h": 2.0, "kind=trending": 1.0, "h=99": 1.0},
            {"act_24h": 7.0, "kind=creator_post": 1.0}]


def example(n: int) -> dict[str, Any]:
    return {"intent_id": "03f5dbb6-92ff-5c7b-8767-193a414f2e93", "user_id": f"u{n}",
            "features": FEATURES[n % len(FEATURES)], "p_open": 0.2, "model_version": 0,
            "label": int(n % 3 == 0), "disabled": 0,
            "outcome": "opened" if n % 3 == 0 else "dismissed",
            "decided_at_ms": 1_780_315_200_000, "resolved_at_ms": 1_780_315_260_000,
            "source": {"topic": "user-events", "partition": 0, "offset": n, "index": 0}}


def trainer_for(holder: ModelHolder, champion: str, specs: tuple[str, ...],
                published: list[bytes]) -> Trainer:
    async def publish(snapshot: bytes) -> None:
        published.append(snapshot)

    return Trainer(holder, Metrics(CollectorRegistry()), publish, 10_000, champion=champion,
                   challenger_specs=specs, defaults=model_defaults(Settings()))


def learn(trainer: Trainer, start: int, count: int) -> None:
    async def feed() -> None:
        for n in range(start, start + count):
            await trainer.on_example(n, orjson.dumps(example(n)))

    asyncio.run(feed())


def scores(model: PushModel) -> list[float]:
    return [model.p_open(x) for x in FEATURES] + [model.p_disable(x) for x in FEATURES]


# --------------------------------------------------------------------------- specs


def test_a_spec_is_a_preset_and_checked_parameters() -> None:
    spec = parse_spec("hashed-lr-slow:l2=0.001")
    model = spec.build({"learning_rate": 0.05, "seed": 1})
    assert (model.learning_rate, model.l2, model.seed) == (0.02, 0.001, 1)
    for bad in ("fm", "hashed-lr:lr=0.1", "hashed-lr:l2=-1", "hashed-lr:l2=x",
                "hashed-lr:open_prior=1"):
        with pytest.raises(ConfigError):
            parse_spec(bad)


def test_settings_refuse_an_unknown_model_or_challenger() -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        Settings.from_env({"PUSHFLOW_MODEL": "nope"})
    with pytest.raises(ConfigError, match="unknown model"):
        Settings.from_env({"PUSHFLOW_CHALLENGERS": "hashed-lr-slow nope"})
    s = Settings.from_env({"PUSHFLOW_MODEL": "hashed-lr-fast",
                           "PUSHFLOW_CHALLENGERS": " hashed-lr  hashed-lr "})
    assert (s.model, s.challengers) == ("hashed-lr-fast", "hashed-lr")
    assert fresh_model(s).learning_rate == 0.1


# --------------------------------------------------------------------------- shadows


def test_every_model_is_scored_before_any_learns_and_features_are_not_changed() -> None:
    slow = PushModel(learning_rate=0.02)
    shadows = Shadows("hashed-lr", {"hashed-lr-slow": slow})
    champion = PushModel()
    x = copy.deepcopy(FEATURES[0])
    expected = {"hashed-lr": champion.p_open(x), "hashed-lr-slow": slow.p_open(x)}
    assert shadows.observe(champion, x, opened=True, disabled=False) == expected
    assert x == FEATURES[0]  # read, never changed
    assert champion.version == 0 and slow.version == 1  # the caller teaches the champion
    report = shadows.report()
    assert report["hashed-lr"]["role"] == "champion" and report["hashed-lr-slow"]["n"] == 1


def test_the_worker_exports_each_models_figures_only_while_it_trains() -> None:
    """Gauges by (model, role) while this worker trains; removed when training moves."""
    from streams.app import PushflowWorker

    worker = PushflowWorker(Settings(broker="kafka://127.0.0.1:1"), CollectorRegistry())
    learn(worker.trainer, 0, 6)
    worker._update_comparison()
    exposed = {(s.labels["model"], s.labels["role"]): s.value
               for family in worker.metrics.compare_labels.collect() for s in family.samples}
    assert exposed == {("hashed-lr", "champion"): 6.0, ("hashed-lr-fast", "challenger"): 6.0}
    worker.trainer.stop()
    worker._update_comparison()
    assert not [s for family in worker.metrics.compare_auc.collect() for s in family.samples]


# --------------------------------------------------------------------------- snapshots


def test_challengers_travel_in_the_snapshot_with_identical_scores() -> None:
    published: list[bytes] = []
    specs = ("hashed-lr-slow", "hashed-lr:l2=0.001")
    first = trainer_for(ModelHolder(PushModel()), "hashed-lr", specs, published)
    learn(first, 0, 30)
    assert asyncio.run(first.publish_snapshot())

    follower = ModelHolder(PushModel())
    assert follower.offer_bytes(published[-1], 1)
    assert follower.serving_name == "hashed-lr"
    assert set(follower.challenger_states) == set(specs)
    assert follower.comparison["hashed-lr-slow"]["n"] == 30
    second = trainer_for(follower, "hashed-lr", specs, [])
    second.start()
    assert second.model is not None and first.model is not None
    assert scores(second.model) == scores(first.model)
    for name in specs:
        assert scores(second.shadows.models[name]) == scores(first.shadows.models[name])
        assert second.shadows.models[name].version == 30


def test_a_challenger_added_later_starts_cold_and_a_broken_one_is_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    published: list[bytes] = []
    first = trainer_for(ModelHolder(PushModel()), "hashed-lr", ("hashed-lr-slow",), published)
    learn(first, 0, 10)
    assert asyncio.run(first.publish_snapshot())
    document = orjson.loads(published[-1].split(b"\n", 2)[2])
    document["challengers"]["hashed-lr-slow"]["open"]["g2"] = {"w": -1.0}  # not a model
    raw = b"PUSHFLOW-MODEL\nunsigned\n" + orjson.dumps(document)
    holder = ModelHolder(PushModel())
    assert holder.offer_bytes(raw, 1)  # the champion is fine: it is served
    second = trainer_for(holder, "hashed-lr", ("hashed-lr-slow", "hashed-lr-fast"), [])
    with caplog.at_level(logging.WARNING, logger="streams.challengers"):
        second.start()
    assert "starts cold" in caplog.text
    assert {n: m.version for n, m in second.shadows.models.items()} == {
        "hashed-lr-slow": 0, "hashed-lr-fast": 0}


@pytest.mark.parametrize("bad", [{"challengers": [1, 2]}, {"challengers": {"x": 3}},
                                 {"model": ""}, {"model": 7}, {"comparison": "yes"}])
def test_a_snapshot_with_a_malformed_challenger_part_is_refused(bad: dict[str, Any]) -> None:
    document = {**PushModel().state(), **bad}
    raw = b"PUSHFLOW-MODEL\nunsigned\n" + orjson.dumps(document)
    refused: list[str] = []
    holder = ModelHolder(PushModel(), on_refused=refused.append)
    assert not holder.offer_bytes(raw, 1)
    assert refused and refused[0] != "unexpected"  # refused as what it is, not a crash


# --------------------------------------------------------------------------- promotion


def test_promotion_goes_on_from_the_challengers_learning() -> None:
    published: list[bytes] = []
    first = trainer_for(ModelHolder(PushModel()), "hashed-lr", ("hashed-lr-slow",), published)
    learn(first, 0, 40)
    assert asyncio.run(first.publish_snapshot())
    assert first.model is not None
    old_champion = scores(first.model)
    old_challenger = scores(first.shadows.models["hashed-lr-slow"])

    holder = ModelHolder(PushModel())
    assert holder.offer_bytes(published[-1], 1)
    promoted: list[bytes] = []
    second = trainer_for(holder, "hashed-lr-slow", ("hashed-lr",), promoted)
    second.start()
    assert second.champion == "hashed-lr-slow" and second.model is not None
    assert scores(second.model) == old_challenger
    assert second.model.version == 41  # newer than the champion it replaces
    assert scores(second.shadows.models["hashed-lr"]) == old_champion  # judged on
    learn(second, 40, 5)
    assert asyncio.run(second.publish_snapshot())

    follower = ModelHolder(PushModel())
    assert follower.offer_bytes(published[-1], 1)
    assert follower.offer_bytes(promoted[-1], 2)  # every worker takes it as newer
    assert follower.serving_name == "hashed-lr-slow"
    assert follower.serving.learning_rate == 0.02


def test_a_spec_never_shadowed_is_not_promoted(caplog: pytest.LogCaptureFixture) -> None:
    published: list[bytes] = []
    first = trainer_for(ModelHolder(PushModel()), "hashed-lr", (), published)
    learn(first, 0, 10)
    assert asyncio.run(first.publish_snapshot())
    holder = ModelHolder(PushModel())
    assert holder.offer_bytes(published[-1], 1)
    second = trainer_for(holder, "hashed-lr-fast", (), [])
    with caplog.at_level(logging.WARNING, logger="streams.challengers"):
        second.start()
    assert second.champion == "hashed-lr" and "shadow it first" in caplog.text
    assert second.model is not None and second.model.learning_rate == 0.05


# --------------------------------------------------------------------------- decisions


def decisions_of(records: list[Any], specs: tuple[str, ...]) -> tuple[list[bytes], Any]:
    written: list[bytes] = []

    def sink(out: StepOutput) -> None:
        written.extend(orjson.dumps(d, option=orjson.OPT_SORT_KEYS) for d in out.decisions)
        written.extend(orjson.dumps(i, option=orjson.OPT_SORT_KEYS) for i in out.intents)

    options = ReplayOptions(challengers=specs, model_defaults={"learning_rate": 0.05})
    replayer = Replayer(DeciderConfig(), PushModel(), options, sink)
    for record in records:
        replayer.feed(envelope(record))
    return written, replayer.finish()


RECORDS = record_log(seed=5, users=60, hours=72)
BASE, BASE_REPORT = decisions_of(RECORDS, ())


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(["hashed-lr-slow", "hashed-lr-fast", "hashed-lr-l2",
                                 "hashed-lr:learning_rate=0.3", "hashed-lr:l2=0.01",
                                 "hashed-lr:open_prior=0.9"]),
                min_size=1, max_size=3, unique=True))
def test_shadow_models_never_change_a_decision(specs: list[str]) -> None:
    written, report = decisions_of(RECORDS, tuple(specs))
    assert BASE and written == BASE
    assert report.learned == BASE_REPORT.learned > 0
    assert report.prequential["rolling_auc"] == BASE_REPORT.prequential["rolling_auc"]


def test_the_replay_report_judges_challengers_on_the_baselines_test_rows() -> None:
    _, report = decisions_of(RECORDS, ("hashed-lr-slow",))
    shadowed = report.baseline["challengers"]
    assert set(shadowed) == {"hashed-lr", "hashed-lr-slow"}
    assert all(f["n"] == report.baseline["test"] for f in shadowed.values())
    assert "auc_gap" in shadowed["hashed-lr-slow"]
    assert "champion and challengers on the same test rows" in report.format_table()


def test_restore_leaves_the_champion_out_of_its_challengers() -> None:
    shadows = challengers.restore("hashed-lr", ("hashed-lr", "hashed-lr-slow"), None,
                                  {"learning_rate": 0.05})
    assert list(shadows.models) == ["hashed-lr-slow"]
