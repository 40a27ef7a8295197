"""Off-policy estimators and baselines for the offline replay.

Inverse propensity scoring (IPS and self-normalised SNIPS, with normal 95% intervals) of a
send/suppress policy from logged candidates, and the baselines the online model is judged
against on the same test rows (the second part of the labels by decision time):

- online rates, scored at decision time and updated with every label as it is learned,
  exactly like the online model (:class:`RateBaselines`): a running constant (the base rate
  of every label learned so far) and Beta-smoothed open rates per user, per content, per
  creator and per kind, each with its prior centred on the running base rate;
- batch models fit on the first part of the labels and frozen: an L2 logistic regression on
  the model's features, LightGBM on the same features plus the label-encoded user, content,
  creator and kind (when ``lightgbm`` imports), and the training base rate as a constant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.evaluation import EPS, Prequential, auc_gap, exact_auc

Z95 = 1.959964
L2_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)


def ips_estimates(sent: Any, propensity: Any, reward: Any, p_send: Any) -> dict[str, Any]:
    """Off-policy estimates of a send/suppress policy from logged candidates.

    ``sent``, ``propensity`` (of the logged action), ``reward`` (opened, 0 when not sent) and
    ``p_send`` (probability that the evaluated policy sends) are arrays, one entry per logged
    candidate. Open rates are opens per send; intervals are normal 95% (delta method for the
    ratio). ``ips_open_rate`` divides by the policy's exact send share, so it needs a log that
    holds every candidate (some logged suppressions, or propensity 1 everywhere).

    >>> r = ips_estimates([1, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], [1, 0, 0, 1], [1, 1, 0, 0])
    >>> r["ips_opens_per_candidate"], r["snips_open_rate"]
    (0.5, 0.5)
    """
    s, mu, r, pi = (np.asarray(a, dtype=float) for a in (sent, propensity, reward, p_send))
    w = np.where(s > 0, pi, 1.0 - pi) / mu
    wr, ws = w * r * s, w * s
    complete = bool((s == 0).any() or (mu[s > 0] == 1.0).all())
    return {
        "n": len(s), "logged_sends": int(s.sum()), "logged_opens": int((r * s).sum()),
        "logged_open_rate": float((r * s).sum() / s.sum()) if s.sum() else math.nan,
        "replay_send_share": float(pi.mean()), "ips_send_share": float(ws.mean()),
        "effective_sample_size": float(w.sum() ** 2 / (w**2).sum()) if w.any() else 0.0,
        **_ips(wr, float(pi.mean()) if complete else math.nan),
        **_snips(wr, ws),
    }


def _ips(wr: np.ndarray, share: float) -> dict[str, Any]:
    value, se = _mean_se(wr)
    rate, rate_se = (value / share, se / share) if share > 0 else (math.nan, math.nan)
    return {"ips_opens_per_candidate": value, "ips_opens_per_candidate_ci95": _ci(value, se),
            "ips_open_rate": rate, "ips_open_rate_ci95": _ci(rate, rate_se)}


def _snips(wr: np.ndarray, ws: np.ndarray) -> dict[str, Any]:
    """Self-normalised: opens per send, with a delta-method (linearised) interval."""
    if ws.sum() <= 0:
        return {"snips_open_rate": math.nan, "snips_open_rate_ci95": [math.nan, math.nan]}
    rate = float(wr.sum() / ws.sum())
    _, se = _mean_se(wr - rate * ws)
    return {"snips_open_rate": rate, "snips_open_rate_ci95": _ci(rate, se / float(ws.mean()))}


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
    return float(x.mean()), se


def _ci(center: float, se: float) -> list[float]:
    return [float(center - Z95 * se), float(center + Z95 * se)]


class BatchLogistic:
    """L2-regularised logistic regression on standardised features, fit by Newton steps.

    Parameters
    ----------
    l2
        Penalty on the standardised weights (not on the intercept).

    Examples
    --------
    >>> x = np.array([[0.0], [1.0], [2.0], [3.0]])
    >>> m = BatchLogistic(l2=0.1).fit(x, np.array([0, 0, 1, 1]))
    >>> p = m.predict_proba(x)
    >>> bool(p[0] < 0.5 < p[3])
    True
    """

    def __init__(self, l2: float = 1.0) -> None:
        self.l2 = l2

    def _design(self, x: np.ndarray) -> np.ndarray:
        return np.hstack([np.ones((len(x), 1)), (x - self.mean_) / self.scale_])

    def fit(self, x: np.ndarray, y: np.ndarray, iterations: int = 50) -> BatchLogistic:
        self.mean_, self.scale_ = x.mean(axis=0), x.std(axis=0)
        self.scale_[self.scale_ == 0] = 1.0
        design = self._design(x)
        penalty = self.l2 * np.eye(design.shape[1])
        penalty[0, 0] = 0.0
        rate = min(max(y.mean(), EPS), 1 - EPS)
        self.coef_ = np.zeros(design.shape[1])
        self.coef_[0] = math.log(rate / (1 - rate))
        for _ in range(iterations):
            p = _sigmoid(design @ self.coef_)
            hessian = (design.T * (p * (1 - p))) @ design + penalty + 1e-9 * np.eye(len(penalty))
            step = np.linalg.solve(hessian, design.T @ (p - y) + penalty @ self.coef_)
            self.coef_ -= step
            if np.abs(step).max() < 1e-8:
                break
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return _sigmoid(self._design(x) @ self.coef_)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -35.0, 35.0)))


MAX_INDICATORS = 64  # one-hot columns the batch models get (the most frequent)
RATE_NAMES = ("running_constant", "per_user", "per_content", "per_creator", "per_kind")
RATE_STRENGTH = 10.0  # pseudo-labels of the prior of every per-group rate
Keys = tuple[str, str, str, str]  # user_id, content_id, creator_id ("" if none), kind
KEY_NAMES = ("user_id", "content_id", "creator_id", "kind")


class RateBaselines:
    """Online open-rate baselines: a running base rate and Beta-smoothed per-group rates.

    :meth:`predict` scores one row from the labels learned so far, :meth:`learn` adds its
    label; a replay scores each candidate when it is decided and learns each label when the
    online model does. The running base rate is ``(opens + 0.5) / (labels + 1)``; a group's
    rate is ``(group opens + s * base) / (group labels + s)`` with ``s`` = ``strength``
    pseudo-labels, so an unseen group gets the base rate.

    >>> r = RateBaselines(strength=2.0)
    >>> r.predict(("u1", "c1", "", "k"))
    (0.5, 0.5, 0.5, 0.5, 0.5)
    >>> for label in (1, 1, 0):
    ...     r.learn(("u1", "c1", "", "k"), label)
    >>> r.learn(("u2", "c2", "", "k"), 0)
    >>> [round(p, 3) for p in r.predict(("u1", "c3", "", "k"))]
    [0.5, 0.6, 0.5, 0.5, 0.5]
    """

    def __init__(self, strength: float = RATE_STRENGTH) -> None:
        self.strength = strength
        self.labels = self.opens = 0
        self.groups: tuple[dict[str, list[int]], ...] = ({}, {}, {}, {})

    def base_rate(self) -> float:
        return (self.opens + 0.5) / (self.labels + 1)

    def predict(self, keys: Keys) -> tuple[float, ...]:
        base, s = self.base_rate(), self.strength
        rates = [base]
        for table, key in zip(self.groups, keys, strict=True):
            n, opens = table.get(key, (0, 0))
            rates.append((opens + s * base) / (n + s))
        return tuple(rates)

    def learn(self, keys: Keys, label: int) -> None:
        self.labels += 1
        self.opens += label
        for table, key in zip(self.groups, keys, strict=True):
            cell = table.get(key)
            if cell is None:
                table[key] = [1, label]
            else:
                cell[0] += 1
                cell[1] += label


@dataclass(frozen=True, slots=True)
class Labeled:
    """A learned example with the p_open the online model gave it at decision time, the
    row's user, content, creator and kind, and the online rate baselines' p at that time
    (in :data:`RATE_NAMES` order; empty when not known). ``shadows`` holds the scores of
    the champion and its challengers when the label arrived, just before they learned it
    (:mod:`streams.challengers`), by spec name."""

    decided_at_ms: int
    features: dict[str, float]
    p_open: float
    label: int
    keys: Keys = ("", "", "", "")
    rates: tuple[float, ...] = ()
    shadows: Mapping[str, float] = field(default_factory=dict)


def batch_baseline(
    labeled: list[Labeled], train_share: float = 0.5, rate_strength: float = RATE_STRENGTH
) -> dict[str, Any]:
    """Every baseline beside the online model's prequential p_open, on the same test rows.

    The first ``train_share`` of examples (by decision time) is the training part of the
    batch models; the rest is the test part on which every model is scored: the online
    model, the online rates (:class:`RateBaselines`, taken from each row), the batch LR,
    LightGBM, and the constant training base rate. ``best`` names the baseline with the
    lowest log loss and the one with the highest AUC; ``verdict`` says whether the online
    model's AUC is at least the best baseline AUC and its log loss below both constants'.
    """
    ordered = sorted(labeled, key=lambda e: e.decided_at_ms)
    cut = int(len(ordered) * train_share)
    train, test = ordered[:cut], ordered[cut:]
    if not test or len({e.label for e in train}) < 2:
        return {"skipped": "needs labels of both classes before the split and some after it"}
    names = batch_columns(train)
    x_train, x_test = _matrix(train, names), _matrix(test, names)
    y_train, y_test = np.array([e.label for e in train]), [e.label for e in test]
    l2 = choose_l2(x_train, y_train)
    batch = BatchLogistic(l2).fit(x_train, y_train).predict_proba(x_test)
    report: dict[str, Any] = {
        "train": len(train), "test": len(test), "split_at_ms": test[0].decided_at_ms,
        "features": len(names), "l2": l2, "rate_strength": rate_strength,
        "online": _figures([e.p_open for e in test], y_test),
    }
    scores: dict[str, list[float]] = {}
    if all(len(e.rates) == len(RATE_NAMES) for e in test):
        for i, name in enumerate(RATE_NAMES):
            if i > 0 and not any(e.keys[i - 1] for e in test):
                report[name + "_skipped"] = f"no {KEY_NAMES[i - 1]} in the log"
                continue
            scores[name] = [e.rates[i] for e in test]
            report[name] = _figures(scores[name], y_test)
    scores["batch_lr"] = batch.tolist()
    report["batch_lr"] = _figures(scores["batch_lr"], y_test)
    gbm = lightgbm_baseline(train, test, names)
    if isinstance(gbm, str):
        report["lightgbm_skipped"] = gbm
    else:
        scores["lightgbm"] = gbm[0].tolist()
        report["lightgbm"] = _figures(scores["lightgbm"], y_test)
        report["lightgbm_rounds"] = gbm[1]
    scores["constant"] = [float(y_train.mean())] * len(test)
    report["constant"] = _figures(scores["constant"], y_test)
    report.update(_verdict(report))
    report["auc_gap"] = auc_gap([e.p_open for e in test], scores, y_test)
    shadowed = [name for name in test[0].shadows if all(name in e.shadows for e in test)]
    if shadowed:  # every model scored at label time, judged against the same baselines
        report["challengers"] = {
            name: {**_figures(p, y_test), "auc_gap": auc_gap(p, scores, y_test)}
            for name in shadowed for p in [[e.shadows[name] for e in test]]
        }
    return report


BASELINES = (*RATE_NAMES, "batch_lr", "lightgbm", "constant")


def _verdict(report: dict[str, Any]) -> dict[str, Any]:
    """The best baseline (log loss; AUC) and how the online model stands against them."""
    present = [n for n in BASELINES if n in report]
    def finite(name: str, key: str) -> float:
        value = report[name][key]
        return value if value is not None and math.isfinite(value) else math.nan
    by_loss = [n for n in present if math.isfinite(finite(n, "log_loss"))]
    by_auc = [n for n in present if math.isfinite(finite(n, "auc"))]
    best_loss = min(by_loss, key=lambda n: finite(n, "log_loss"), default=None)
    best_auc = max(by_auc, key=lambda n: finite(n, "auc"), default=None)
    online_auc, online_loss = finite("online", "auc"), finite("online", "log_loss")
    constants = [n for n in ("running_constant", "constant") if n in report]
    return {
        "best": {"log_loss": best_loss, "auc": best_auc},
        "verdict": {
            "auc_at_least_best": bool(best_auc is not None
                                      and online_auc >= finite(best_auc, "auc")),
            "log_loss_beats_constant": bool(constants) and all(
                online_loss < finite(n, "log_loss") for n in constants),
        },
    }


def _encode(train: Sequence[Labeled], test: Sequence[Labeled]) -> tuple[np.ndarray, np.ndarray]:
    """The four keys as integer codes in order of first appearance in ``train``; a key not
    seen in training is missing (NaN) in ``test``."""
    codes: list[dict[str, int]] = [{}, {}, {}, {}]
    def rows(part: Sequence[Labeled], grow: bool) -> np.ndarray:
        out = np.full((len(part), 4), np.nan)
        for r, e in enumerate(part):
            for c, key in enumerate(e.keys):
                table = codes[c]
                if grow and key not in table:
                    table[key] = len(table)
                out[r, c] = table.get(key, np.nan)
        return out
    return rows(train, True), rows(test, False)


LGBM_PARAMS: dict[str, Any] = {
    "objective": "binary", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 20,
    "lambda_l2": 1.0, "cat_smooth": 10.0, "min_data_per_group": 20, "verbose": -1,
    "deterministic": True, "force_col_wise": True, "num_threads": 1, "seed": 7,
}
LGBM_MAX_ROUNDS = 400


def lightgbm_baseline(
    train: Sequence[Labeled], test: Sequence[Labeled], names: list[str]
) -> tuple[np.ndarray, int] | str:
    """LightGBM's p on ``test`` and its number of rounds, or why it was skipped.

    Gradient-boosted trees on the model's features plus the label-encoded user, content,
    creator and kind (as categorical features), fit on ``train``. The number of rounds is
    chosen like the LR's penalty: early stopping (50 rounds) on the newest quarter of the
    training part when fit on the rest, then a refit on all of it. Seeded, one thread,
    ``deterministic``: the same rows give the same figures.
    """
    try:
        import lightgbm
    except ImportError:
        return "lightgbm is not installed (pip install lightgbm)"
    y = np.array([e.label for e in train], dtype=float)
    codes_train, codes_test = _encode(train, test)
    x_train = np.hstack([_matrix(list(train), names), codes_train])
    x_test = np.hstack([_matrix(list(test), names), codes_test])
    columns = [f"f{i}" for i in range(len(names))] + ["user", "content", "creator", "kind"]
    categorical = columns[-4:]
    cut = int(len(y) * 0.75)
    rounds = LGBM_MAX_ROUNDS // 4
    if 0 < cut < len(y) and len(set(y[:cut].tolist())) == 2 and len(set(y[cut:].tolist())) == 2:
        fit = lightgbm.Dataset(x_train[:cut], y[:cut], feature_name=columns,
                               categorical_feature=categorical, free_raw_data=False)
        valid = lightgbm.Dataset(x_train[cut:], y[cut:], reference=fit)
        booster = lightgbm.train(
            LGBM_PARAMS, fit, LGBM_MAX_ROUNDS, valid_sets=[valid],
            callbacks=[lightgbm.early_stopping(50, verbose=False)])
        rounds = max(1, booster.best_iteration)
    full = lightgbm.Dataset(x_train, y, feature_name=columns, categorical_feature=categorical)
    booster = lightgbm.train(LGBM_PARAMS, full, rounds)
    return np.asarray(booster.predict(x_test), dtype=float), rounds


def choose_l2(x: np.ndarray, y: np.ndarray, grid: tuple[float, ...] = L2_GRID) -> float:
    """The penalty with the best log loss on the newest quarter of the (time-ordered) data
    when fit on the rest: batch models face drift too, so validate forward in time."""
    cut = int(len(y) * 0.75)
    if len(set(y[:cut].tolist())) < 2 or cut == len(y):
        return 1.0
    losses = [_log_loss(BatchLogistic(l2).fit(x[:cut], y[:cut]).predict_proba(x[cut:]), y[cut:])
              for l2 in grid]
    return grid[int(np.argmin(losses))]


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def batch_columns(train: list[Labeled], indicators: int = MAX_INDICATORS) -> list[str]:
    """The batch models' columns: every numeric feature and the ``indicators`` most frequent
    one-hot indicators (``name=value``, most of them hashed identities). A dense column per
    hashed id would make the matrix labels x thousands; identity is what the per-group
    rates and LightGBM's categorical user, content, creator and kind columns cover.

    >>> rows = [Labeled(0, {"a": 1.0, "h=1": 1.0}, 0.1, 0), Labeled(1, {"a": 2.0, "h=2": 1.0,
    ...         "h=1": 1.0}, 0.1, 1)]
    >>> batch_columns(rows, indicators=1)
    ['a', 'h=1']
    """
    counts: dict[str, int] = {}
    numeric: set[str] = set()
    for e in train:
        for k in e.features:
            if "=" in k:
                counts[k] = counts.get(k, 0) + 1
            else:
                numeric.add(k)
    frequent = sorted(counts, key=lambda k: (-counts[k], k))[:indicators]
    return sorted(numeric | set(frequent))


def _matrix(examples: list[Labeled], names: list[str]) -> np.ndarray:
    return np.array([[e.features.get(k, 0.0) for k in names] for e in examples], dtype=float)


def _figures(p_open: list[float], labels: list[int]) -> dict[str, Any]:
    ev = Prequential(window=max(1, len(labels)))
    for p, y in zip(p_open, labels, strict=True):
        ev.update(p, y)
    r = ev.report()
    return {"n": r["n"], "auc": exact_auc(p_open, labels), "log_loss": r["log_loss"],
            "ece": r["calibration_error"], "base_rate": r["base_rate"]}
