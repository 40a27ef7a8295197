"""The replay's gap between the online model and the best baseline, with its bootstrap."""

import math
import random

from streams.evaluation import auc_gap, exact_auc


def labelled(n: int, seed: int) -> tuple[list[float], list[int]]:
    rng = random.Random(seed)
    truth = [rng.random() for _ in range(n)]
    return truth, [int(rng.random() < 0.2 + 0.6 * t) for t in truth]


def test_identical_to_its_only_rival_is_a_zero_gap() -> None:
    scores, labels = labelled(300, 1)
    gap = auc_gap(scores, {"same": list(scores)}, labels)
    assert gap["gap"] == 0.0 and gap["ci"] == [0.0, 0.0] and gap["p_at_least"] == 1.0


def test_the_interval_counts_the_luck_of_the_best_of_several() -> None:
    """Noise rivals: one of eight looks better than another noise model on these rows by
    luck alone, and the interval (best picked per resample) must cover that."""
    _, labels = labelled(400, 2)
    rng = random.Random(3)
    online = [rng.random() for _ in labels]
    rivals = {f"noise{i}": [rng.random() for _ in labels] for i in range(8)}
    gap = auc_gap(online, rivals, labels)
    best = max(exact_auc(v, labels) for v in rivals.values())
    assert math.isclose(gap["gap"], exact_auc(online, labels) - best)
    assert gap["ci"][0] < gap["gap"] < gap["ci"][1]
    assert gap["p_at_least"] < 0.5


def test_a_model_that_knows_the_truth_beats_noise_rivals_clearly() -> None:
    truth, labels = labelled(400, 4)
    rng = random.Random(5)
    gap = auc_gap(truth, {"noise": [rng.random() for _ in labels]}, labels)
    assert gap["ci"][0] > 0.1 and gap["p_at_least"] == 1.0


def test_one_class_only_is_not_a_number() -> None:
    gap = auc_gap([0.1, 0.2], {"r": [0.3, 0.4]}, [0, 0])
    assert math.isnan(gap["gap"])
