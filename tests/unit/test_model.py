"""The checks River runs on its own estimators, applied to our model wrapper and snapshots."""

from __future__ import annotations

import copy
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.model import PushModel

features = st.dictionaries(
    st.sampled_from(["act_1h", "act_24h", "open_rate", "kind=trending", "kind=live_started"]),
    st.floats(min_value=-5, max_value=5, allow_nan=False),
    min_size=1,
)


def trained(n: int = 200, seed: int = 1) -> PushModel:
    rng = random.Random(seed)
    model = PushModel(seed=seed)
    for _ in range(n):
        x = {"act_24h": rng.gauss(0, 1), "kind=trending": float(rng.random() < 0.5)}
        model.learn(x, opened=x["act_24h"] > 0.5, disabled=rng.random() < 0.02)
    return model


@settings(max_examples=100, deadline=None)
@given(features)
def test_snapshot_round_trip_gives_identical_scores(x: dict[str, float]) -> None:
    model = trained()
    restored = PushModel.from_snapshot(model.to_snapshot())
    assert restored.p_open(x) == model.p_open(x)
    assert restored.p_disable(x) == model.p_disable(x)
    assert restored.version == model.version


@settings(max_examples=100, deadline=None)
@given(features)
def test_learn_and_score_never_mutate_their_input(x: dict[str, float]) -> None:
    model = trained(20)
    before = copy.deepcopy(x)
    model.p_open(x)
    model.learn(x, opened=True, disabled=False)
    assert x == before


def test_seeded_runs_are_reproducible() -> None:
    x = {"act_24h": 1.0, "kind=trending": 1.0}
    assert trained(seed=3).p_open(x) == trained(seed=3).p_open(x)


def test_emerging_and_disappearing_features() -> None:
    model = trained(50)
    model.learn({"brand_new": 1.0}, opened=True, disabled=False)
    assert 0.0 < model.p_open({"act_24h": 1.0}) < 1.0
    assert 0.0 < model.p_open({"never_seen": 3.0}) < 1.0


def test_it_learns_the_signal() -> None:
    model = trained(2000)
    assert model.p_open({"act_24h": 2.0, "kind=trending": 1.0}) > 0.6
    assert model.p_open({"act_24h": -2.0, "kind=trending": 1.0}) < 0.2


examples = st.lists(st.tuples(features, st.booleans(), st.booleans()), min_size=1, max_size=30)


@settings(max_examples=50, deadline=None)
@given(examples, features)
def test_a_restored_model_keeps_learning_identically(
    more: list[tuple[dict[str, float], bool, bool]], x: dict[str, float]
) -> None:
    """Learning the same examples on the snapshotted and the restored model gives the same
    state and scores: optimizer and scaler statistics travel, not only the weights."""
    model = trained(50)
    restored = PushModel.from_snapshot(model.to_snapshot())
    for features_, opened, disabled in more:
        model.learn(features_, opened=opened, disabled=disabled)
        restored.learn(features_, opened=opened, disabled=disabled)
    assert restored.state() == model.state()
    assert restored.p_open(x) == model.p_open(x)
    assert restored.p_disable(x) == model.p_disable(x)


def test_a_feature_constant_for_long_cannot_saturate_the_score() -> None:
    model = PushModel()
    for i in range(1000):
        model.learn({"hour_opens": 0.0, "act_24h": float(i % 3)}, opened=i % 10 == 0,
                    disabled=False)
    model.learn({"hour_opens": 1.0, "act_24h": 1.0}, opened=True, disabled=False)
    p = model.p_open({"hour_opens": 2.0, "act_24h": 1.0})
    assert 0.001 < p < 0.9


def test_indicator_features_are_learned() -> None:
    """A one-hot kind that predicts opens must move p_open (a scaler would zero it)."""
    model = PushModel()
    for i in range(3000):
        kind = "kind=comment_reply" if i % 2 else "kind=trending"
        model.learn({"act_24h": 1.0, kind: 1.0}, opened=(i % 2 == 1) and i % 4 != 1,
                    disabled=False)
    assert model.p_open({"act_24h": 1.0, "kind=comment_reply": 1.0}) > 2 * model.p_open(
        {"act_24h": 1.0, "kind=trending": 1.0})


def test_hashed_features_keep_the_weights_bounded() -> None:
    """Every candidate brings new content, users, crosses: their names are hashed buckets,
    so the weights (and the snapshot) cannot grow past the bucket count."""
    from streams.features import HASH_BUCKETS, hashed

    model = PushModel()
    for n in range(3000):
        x = {"act_24h": 1.0, hashed(f"content:v{n}"): 1.0, hashed(f"user:u{n % 50}"): 1.0}
        model.learn(x, opened=n % 7 == 0, disabled=False)
    weights = model.state()["open"]["weights"]
    assert all(k == "act_24h" or 0 <= int(k[2:]) < HASH_BUCKETS for k in weights)
    assert len(weights) <= 3051


def test_a_cold_model_follows_the_base_rate() -> None:
    """On a log whose open rate is 0.4%, the offset brings p_open down within hundreds of
    labels, without the weights having to learn it."""
    model = PushModel()
    for n in range(1000):
        model.learn({"act_24h": float(n % 3)}, opened=n % 250 == 0, disabled=False)
    assert abs(model.base_rate - 0.005) < 0.002
    assert model.p_open({"act_24h": 1.0}) < 0.01


def test_snapshots_of_the_previous_format_are_refused() -> None:
    import pytest

    from streams import snapshot_format
    from streams.errors import SnapshotError

    document = {**trained(10).state(), "format": 4}
    with pytest.raises(SnapshotError):
        PushModel.from_snapshot(snapshot_format.encode(document, None))
