"""The online model: p_open and p_disable from hashed logistic regressions, versioned and
snapshotted.

``score`` happens at decision time and ``learn`` only when the label resolves, with the exact
features that were scored (kept under the intent id), so nothing the model learns from leaks
into the score it is judged on.

Each head (:class:`Head`) is River's logistic regression learned online with per-coordinate
AdaGrad steps (the sums of squares start at 1, :data:`ADAGRAD_EPS`), over the numeric features
(standardised by River's running scaler, clipped) and the one-hot indicators (``name=value``,
mostly hashed into :data:`streams.features.HASH_BUCKETS` buckets, passed through as they are).
Its logit is offset by the log-odds of a running base rate the head keeps (a decayed mean of
its labels, starting at the prior), so a cold model predicts the base rate and the weights
only learn what differs from it: on a log whose open rate is 0.4% the model is calibrated
after a few hundred labels, not thousands. docs/model.md has the measurements behind these
choices.

>>> m = PushModel(seed=7)
>>> x = {"act_24h": 1.0, "kind=trending": 1.0}
>>> round(m.p_open(x), 3), round(m.p_disable(x), 3), m.version
(0.1, 0.01, 0)
>>> for _ in range(20):
...     m.learn(x, opened=False, disabled=False)
>>> m.p_open(x) < 0.1, m.version
(True, 20)
>>> PushModel.from_snapshot(m.to_snapshot()).p_open(x) == m.p_open(x)
True
"""

from __future__ import annotations

import collections
import copy
import math
from collections.abc import Mapping
from typing import Any

from river import __version__ as river_version
from river import linear_model, optim, preprocessing
from river.utils import VectorDict

from streams import snapshot_format
from streams.errors import SnapshotError

# Bump when the model's structure or feature meaning changes: old snapshots are then refused.
# 4: snapshots are data (weights, scaler statistics), no longer pickles.
# 5: hashed candidate features, AdaGrad heads offset by a running base rate.
MODEL_FORMAT = 5
CLIP = 5.0  # standard deviations
BASE_HORIZON = 10_000.0  # labels: the base rate is a mean decayed by 1 - 1/BASE_HORIZON each
BASE_PRIOR_WEIGHT = 10.0  # labels the prior base rate is worth
# Added to AdaGrad's sums of squared gradients (River's ``eps``): they start at 1, so early
# steps are plain SGD steps (lr * gradient) and later ones shrink as the squares add up
# (docs/model.md, measurements).
ADAGRAD_EPS = 1.0


def clip_scaled(x: dict[str, float]) -> dict[str, float]:
    """Bound standardised values: a feature that was constant for a long time has a variance
    near zero, and its first change would otherwise be scaled to thousands and saturate p.

    >>> clip_scaled({"a": 1e6, "b": -0.5})
    {'a': 5.0, 'b': -0.5}
    """
    return {k: min(CLIP, max(-CLIP, v)) for k, v in x.items()}


def numeric(x: Mapping[str, float]) -> dict[str, float]:
    """The numeric features (scaled); indicators are named ``name=value``."""
    return {k: v for k, v in x.items() if "=" not in k}


def indicators(x: Mapping[str, float]) -> dict[str, float]:
    """One-hot indicators such as ``h=1234`` or ``kind=live_started``: passed through unscaled,
    because a running scaler sees them only when present (always 1) and would map them to 0."""
    return {k: v for k, v in x.items() if "=" in k}


class _OffsetLogisticRegression(linear_model.LogisticRegression):
    """River's logistic regression with its logit offset by ``offset`` (log-odds set by the
    head before each prediction and step): River's loss gradient, optimizer and L2 then see
    ``sigmoid(offset + intercept + w . x)``, so the weights learn what differs from it."""

    offset = 0.0

    def _raw_dot_one(self, x: dict[str, float]) -> float:
        return float(super()._raw_dot_one(x)) + self.offset


class Head:
    """One logistic regression: ``p = sigmoid(logit(base) + intercept + w . x)``.

    River's :class:`~river.linear_model.LogisticRegression` with per-coordinate AdaGrad steps
    (``eps`` 1: the sums of squared gradients start at 1, so the first steps are at most
    ``learning_rate``), over the numeric features standardised by River's
    :class:`~river.preprocessing.StandardScaler` (clipped) and the one-hot indicators
    (``name=value``, mostly hashed, passed through). The base rate is a decayed mean of the
    head's labels starting at the prior (worth :data:`BASE_PRIOR_WEIGHT` labels).

    Parameters
    ----------
    learning_rate
        AdaGrad step.
    l2
        L2 penalty on the weights (not the intercept).
    prior
        The base rate before any label.

    >>> h = Head(0.05, 0.0, 0.2)
    >>> round(h.predict({"x": 1.0}), 3)
    0.2
    >>> for _ in range(100):
    ...     h.learn({"x": 1.0}, False)
    >>> round(h.base_rate, 3), h.predict({"x": 1.0}) < 0.02
    (0.018, True)
    """

    def __init__(self, learning_rate: float, l2: float, prior: float) -> None:
        self.learning_rate, self.l2, self.prior = learning_rate, l2, prior
        self.regression = _OffsetLogisticRegression(
            optimizer=optim.AdaGrad(learning_rate, eps=ADAGRAD_EPS), l2=l2, intercept_init=0.0,
        )
        self.scaler = preprocessing.StandardScaler()
        self.seen = 0.0  # decayed label count and positives: the running base rate
        self.positives = 0.0

    @property
    def base_rate(self) -> float:
        w = BASE_PRIOR_WEIGHT
        return (self.positives + self.prior * w) / (self.seen + w)

    def _inputs(self, features: Mapping[str, float]) -> dict[str, float]:
        """The regression's input: the numeric features scaled and clipped, in their order,
        then the indicators as they are (``clip_scaled(scaler.transform_one(numeric(x)))``
        updated with ``indicators(x)``), in one pass and without the intermediate dicts.

        The scaling is River's ``StandardScaler.transform_one`` (no window, with std) step by
        step, its defaultdicts read in the same order, so the statistics it leaves and the
        numbers it gives are the same.
        """
        means, variances = self.scaler.means, self.scaler.vars
        x: dict[str, float] = {}
        hot: list[tuple[str, float]] = []
        for name, value in features.items():
            if "=" in name:
                hot.append((name, value))
                continue
            var = variances[name]
            scaled = (value - means[name]) / var**0.5 if var else 0.0
            # min(CLIP, max(-CLIP, scaled)), NaN included (it becomes -CLIP there too)
            x[name] = scaled if -CLIP <= scaled <= CLIP else CLIP if scaled > CLIP else -CLIP
        x.update(hot)
        return x

    def _offset(self) -> None:
        base = min(max(self.base_rate, 1e-9), 1 - 1e-9)
        self.regression.offset = math.log(base / (1 - base))

    def predict(self, features: Mapping[str, float]) -> float:
        """``regression.predict_proba_one(x)[True]``: the logistic loss's mean function of
        the raw dot product, without the two-class dict around it."""
        self._offset()
        regression = self.regression
        return float(regression.loss.mean_func(regression._raw_dot_one(self._inputs(features))))

    def learn(self, features: Mapping[str, float], label: bool) -> None:
        """One example: scaler statistics, then one AdaGrad step, then the base rate."""
        numbers = numeric(features)
        if numbers:
            self.scaler.learn_one(numbers)
        self._offset()
        self.regression.learn_one(self._inputs(features), bool(label))
        keep = 1.0 - 1.0 / BASE_HORIZON
        self.seen = self.seen * keep + 1.0
        self.positives = self.positives * keep + (1.0 if label else 0.0)

    def state(self) -> dict[str, Any]:
        regression, scaler = self.regression, self.scaler
        return {
            "intercept": regression.intercept,
            # generic name -> number objects: more (hashed) features only add entries
            "weights": regression._weights.to_dict(),
            "g2": dict(regression.optimizer.g2),
            "iterations": regression.optimizer.n_iterations,
            "base": {"seen": self.seen, "positives": self.positives},
            "scaler": {"counts": dict(scaler.counts), "means": dict(scaler.means),
                       "vars": dict(scaler.vars)},
        }

    def restore(self, fields: snapshot_format.Fields) -> None:
        regression, scaler = self.regression, self.scaler
        bound = snapshot_format.MAX_FLOAT
        regression.intercept = fields.number("intercept", -bound, bound)
        regression._weights = VectorDict(fields.floats("weights"))
        g2 = fields.floats("g2")
        if any(v < 0 for v in g2.values()):
            raise SnapshotError(f"{fields.where}.g2 holds a negative sum of squares")
        regression.optimizer.g2 = collections.defaultdict(float, g2)
        regression.optimizer.n_iterations = fields.count("iterations")
        base = fields.object("base")
        self.seen = base.number("seen", 0.0, bound)
        self.positives = base.number("positives", 0.0, self.seen)
        statistics = fields.object("scaler")
        variances = statistics.floats("vars")
        if any(v < 0 for v in variances.values()):
            raise SnapshotError(f"{statistics.where}.vars holds a negative variance")
        scaler.counts = collections.Counter(statistics.counts("counts"))
        scaler.means = collections.defaultdict(float, statistics.floats("means"))
        scaler.vars = collections.defaultdict(float, variances)


class PushModel:
    """Two online logistic regressions (:class:`Head`): p_open and p_disable.

    Parameters
    ----------
    learning_rate
        AdaGrad step of both heads.
    l2
        L2 penalty of both heads.
    open_prior, disable_prior
        What a cold model predicts before it has learned anything: a plausible base rate, so
        the first pushes go out (and teach the model) without a wild guess of 0.5. Each head
        then tracks its own running base rate from there.
    seed
        Kept for reproducibility of any stochastic part; the heads are deterministic.
    """

    def __init__(
        self,
        learning_rate: float = 0.05,
        l2: float = 0.0,
        open_prior: float = 0.1,
        disable_prior: float = 0.01,
        seed: int = 42,
    ) -> None:
        self.learning_rate = learning_rate
        self.l2 = l2
        self.open_prior = open_prior
        self.disable_prior = disable_prior
        self.seed = seed
        self.version = 0
        self._open = Head(learning_rate, l2, open_prior)
        self._disable = Head(learning_rate, l2, disable_prior)

    @property
    def base_rate(self) -> float:
        """The running open rate of the pushes learned so far (the prior before any)."""
        return self._open.base_rate

    def p_open(self, features: Mapping[str, float]) -> float:
        return self._open.predict(features)

    def p_disable(self, features: Mapping[str, float]) -> float:
        return self._disable.predict(features)

    def learn(self, features: Mapping[str, float], *, opened: bool, disabled: bool) -> None:
        """One labeled example; the version counts examples learned, so it is deterministic.
        ``features`` is read, never changed."""
        self._open.learn(features, opened)
        self._disable.learn(features, disabled)
        self.version += 1

    def clone(self) -> PushModel:
        return copy.deepcopy(self)

    def to_snapshot(
        self, meta: Mapping[str, object] | None = None, key: bytes | None = None
    ) -> bytes:
        """The model as signed data (:mod:`streams.snapshot_format`), never a pickle.

        ``meta`` is stored beside the model as is (e.g. how far in the example stream the
        model has learned); ``key`` signs it.
        """
        return snapshot_format.encode({**(meta or {}), **self.state()}, key)

    @classmethod
    def from_snapshot(cls, raw: bytes, key: bytes | None = None) -> PushModel:
        """Rebuild a model; junk, another format or a bad signature is a SnapshotError."""
        return cls.from_state(snapshot_format.decode(raw, key, MODEL_FORMAT))

    def state(self) -> dict[str, Any]:
        """Everything the model has learned, as numbers and strings."""
        return {
            "format": MODEL_FORMAT,
            "river": _minor(river_version),  # informative: the state is River's, not its code
            "version": self.version,
            "learning_rate": self.learning_rate,
            "l2": self.l2,
            "open_prior": self.open_prior,
            "disable_prior": self.disable_prior,
            "seed": self.seed,
            "open": self._open.state(),
            "disable": self._disable.state(),
        }

    @classmethod
    def from_state(cls, document: Mapping[str, Any]) -> PushModel:
        """The model :meth:`state` describes; every value is checked before it is used."""
        fields = snapshot_format.Fields(document)
        prior = (1e-9, 1 - 1e-9)  # log-odds of the prior must be finite
        model = cls(
            learning_rate=fields.number("learning_rate", 0.0, 10.0),
            l2=fields.number("l2", 0.0, 10.0),
            open_prior=fields.number("open_prior", *prior),
            disable_prior=fields.number("disable_prior", *prior),
            seed=fields.count("seed", 2**63),
        )
        model._open.restore(fields.object("open"))
        model._disable.restore(fields.object("disable"))
        model.version = fields.count("version")
        return model


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])
