"""Off-policy and batch estimators for the offline replay.

Inverse propensity scoring (IPS and self-normalised SNIPS, with normal 95% intervals) of a
send/suppress policy from logged candidates, and a batch logistic-regression baseline fit on
the first part of a log and scored on the rest, beside the online model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from streams.evaluation import EPS, Prequential, exact_auc

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


@dataclass(frozen=True, slots=True)
class Labeled:
    """A learned example with the p_open the online model gave it at decision time."""

    decided_at_ms: int
    features: dict[str, float]
    p_open: float
    label: int


def batch_baseline(labeled: list[Labeled], train_share: float = 0.5) -> dict[str, Any]:
    """Batch LR fit on the first ``train_share`` of examples (by decision time), scored on the
    rest beside the online model's prequential p_open and a constant base rate."""
    ordered = sorted(labeled, key=lambda e: e.decided_at_ms)
    cut = int(len(ordered) * train_share)
    train, test = ordered[:cut], ordered[cut:]
    if not test or len({e.label for e in train}) < 2:
        return {"skipped": "needs labels of both classes before the split and some after it"}
    names = sorted({k for e in train for k in e.features})
    x_train, x_test = _matrix(train, names), _matrix(test, names)
    y_train, y_test = np.array([e.label for e in train]), [e.label for e in test]
    l2 = choose_l2(x_train, y_train)
    batch = BatchLogistic(l2).fit(x_train, y_train).predict_proba(x_test)
    return {
        "train": len(train), "test": len(test), "split_at_ms": test[0].decided_at_ms,
        "features": len(names), "l2": l2,
        "online": _figures([e.p_open for e in test], y_test),
        "batch_lr": _figures(batch.tolist(), y_test),
        "constant": _figures([float(y_train.mean())] * len(test), y_test),
    }


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


def _matrix(examples: list[Labeled], names: list[str]) -> np.ndarray:
    return np.array([[e.features.get(k, 0.0) for k in names] for e in examples], dtype=float)


def _figures(p_open: list[float], labels: list[int]) -> dict[str, Any]:
    ev = Prequential(window=max(1, len(labels)))
    for p, y in zip(p_open, labels, strict=True):
        ev.update(p, y)
    r = ev.report()
    return {"n": r["n"], "auc": exact_auc(p_open, labels), "log_loss": r["log_loss"],
            "ece": r["calibration_error"], "base_rate": r["base_rate"]}
