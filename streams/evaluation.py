"""Prequential (test-then-train) evaluation of p_open over a rolling window of labels.

AUC counts ties as half (Mann-Whitney), which matters early on, when a cold model gives many
candidates the same score.

Each labeled example carries the p_open that was used for its decision, before the model
learned from it, so these figures are honest out-of-sample estimates.

>>> ev = Prequential(window=100)
>>> for p, y in [(0.9, 1), (0.8, 1), (0.2, 0), (0.1, 0), (0.3, 1), (0.6, 0)]:
...     ev.update(p, y)
>>> r = ev.report()
>>> r["n"], round(r["rolling_auc"], 3), round(r["base_rate"], 3)
(6, 0.889, 0.5)
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from scipy.stats import rankdata

EPS = 1e-7


def exact_auc(p_open: Any, labels: Any) -> float:
    """ROC AUC with ties counted as half (Mann-Whitney); NaN without both classes.

    >>> exact_auc([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1])
    0.875
    """
    y = np.asarray(labels, dtype=int)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    if not positives or not negatives:
        return math.nan
    ranks = rankdata(np.asarray(p_open, dtype=float))
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / positives / negatives)


def auc_gap(online: Any, rivals: dict[str, Any], labels: Any, resamples: int = 400,
            seed: int = 7) -> dict[str, Any]:
    """AUC of ``online`` minus the best AUC among ``rivals`` on the same rows, with a 95%
    paired bootstrap interval: each resample draws rows with replacement, scores every model
    on them and takes the best rival *in that resample*, so the interval also counts the luck
    of picking the best of several. ``p_at_least`` is the share of resamples in which the
    online model ranks at least as well as the best rival.

    >>> r = auc_gap([0.1, 0.2, 0.8, 0.9], {"flat": [0.5] * 4}, [0, 0, 1, 1], resamples=50)
    >>> r["gap"], r["p_at_least"]
    (0.5, 1.0)
    """
    y = np.asarray(labels, dtype=int)
    models = [np.asarray(online, dtype=float)] + [np.asarray(v, dtype=float)
                                                  for v in rivals.values()]
    point = [exact_auc(m, y) for m in models]
    if not rivals or any(math.isnan(a) for a in point):
        return {"gap": math.nan, "ci": [math.nan, math.nan], "p_at_least": math.nan}
    rows = np.random.default_rng(seed).integers(0, len(y), size=(resamples, len(y)))
    ys = y[rows]
    positives = ys.sum(axis=1)
    keep = (positives > 0) & (positives < len(y))
    rows, ys, positives = rows[keep], ys[keep], positives[keep]
    negatives = len(y) - positives

    def aucs(scores: np.ndarray) -> np.ndarray:
        ranks = rankdata(scores[rows], axis=1)
        return ((ranks * ys).sum(axis=1) - positives * (positives + 1) / 2) / positives / negatives

    gaps = aucs(models[0]) - np.max([aucs(m) for m in models[1:]], axis=0)
    low, high = np.quantile(gaps, [0.025, 0.975])
    return {"gap": point[0] - max(point[1:]), "ci": [float(low), float(high)],
            "p_at_least": float((gaps >= 0).mean())}


class Prequential:
    """Rolling ROC AUC, log loss, calibration (ECE and a reliability table) and base rate.

    Parameters
    ----------
    window
        How many of the newest labeled examples the figures cover.
    bins
        Number of equal-width probability bins of the reliability table.
    """

    def __init__(self, window: int = 1000, bins: int = 10) -> None:
        self.window = window
        self.bins = bins
        self.n = 0
        self._recent: deque[tuple[float, int]] = deque(maxlen=window)

    def update(self, p_open: float, label: int) -> None:
        self._recent.append((p_open, label))
        self.n += 1

    def log_loss(self) -> float:
        if not self._recent:
            return math.nan
        total = 0.0
        for p, y in self._recent:
            p = min(max(p, EPS), 1 - EPS)
            total -= math.log(p) if y else math.log(1 - p)
        return total / len(self._recent)

    def reliability(self) -> list[dict[str, float]]:
        """Per bin: count, mean predicted p, observed open rate."""
        sums = [[0, 0.0, 0] for _ in range(self.bins)]
        for p, y in self._recent:
            cell = sums[min(int(p * self.bins), self.bins - 1)]
            cell[0] += 1
            cell[1] += p
            cell[2] += y
        return [
            {"low": i / self.bins, "n": n, "mean_p": s / n, "open_rate": k / n}
            for i, (n, s, k) in enumerate(sums)
            if n
        ]

    def calibration_error(self) -> float:
        """Expected calibration error: bin-size-weighted |mean p - open rate|."""
        total = len(self._recent)
        if not total:
            return math.nan
        return sum(b["n"] * abs(b["mean_p"] - b["open_rate"]) for b in self.reliability()) / total

    def report(self) -> dict[str, Any]:
        labels = [y for _, y in self._recent]
        both = 0 < sum(labels) < len(labels)
        return {
            "n": self.n,
            "window": len(self._recent),
            "rolling_auc": exact_auc(*zip(*self._recent, strict=True)) if both else math.nan,
            "log_loss": self.log_loss(),
            "calibration_error": self.calibration_error(),
            "base_rate": sum(labels) / len(labels) if labels else math.nan,
            "reliability": self.reliability(),
        }


class LearningCurve:
    """AUC and log loss of a :class:`Prequential` as labels accrue, for plotting.

    A point every ``every`` labels, then every 2% of the labels so far, so a long log gets a
    few hundred points, not one per label (each point ranks the whole window).

    >>> ev, curve = Prequential(window=100), LearningCurve(every=2)
    >>> for p, y in [(0.9, 1), (0.2, 0), (0.8, 1), (0.85, 0)]:
    ...     ev.update(p, y)
    ...     curve.update(ev)
    >>> [(c["labels"], c["rolling_auc"]) for c in curve.points]
    [(2, 1.0), (4, 0.75)]
    """

    def __init__(self, every: int = 200) -> None:
        self.every = max(1, every)
        self.next_at = self.every
        self.points: list[dict[str, Any]] = []

    def update(self, ev: Prequential, force: bool = False) -> None:
        """Record a point if one is due (or ``force``: the last one, at the end of a run)."""
        done = bool(self.points) and self.points[-1]["labels"] == ev.n
        if done or not ev.n or (ev.n < self.next_at and not force):
            return
        labels = [y for _, y in ev._recent]
        auc = exact_auc(*zip(*ev._recent, strict=True)) if 0 < sum(labels) < len(labels) else None
        self.points.append(
            {"labels": ev.n, "rolling_auc": auc, "log_loss": round(ev.log_loss(), 5)}
        )
        self.next_at = ev.n + max(self.every, ev.n // 50)
