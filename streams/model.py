"""The online model: p_open and p_disable from hashed logistic regressions, versioned and
snapshotted.

``score`` happens at decision time and ``learn`` only when the label resolves, with the exact
features that were scored (kept under the intent id), so nothing the model learns from leaks
into the score it is judged on.

Each head (:class:`Head`) is a logistic regression learned online with per-coordinate AdaGrad
steps (the sums of squares start at :data:`ACCUMULATOR_INIT`), over the numeric features
(standardised on running statistics, clipped) and the one-hot indicators (``name=value``,
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

import copy
import math
from collections.abc import Mapping
from typing import Any

from river import __version__ as river_version

from streams import snapshot_format
from streams.errors import SnapshotError

# Bump when the model's structure or feature meaning changes: old snapshots are then refused.
# 4: snapshots are data (weights, scaler statistics), no longer pickles.
# 5: hashed candidate features, AdaGrad heads offset by a running base rate.
MODEL_FORMAT = 5
CLIP = 5.0  # standard deviations
BASE_HORIZON = 10_000.0  # labels: the base rate is a mean decayed by 1 - 1/BASE_HORIZON each
BASE_PRIOR_WEIGHT = 10.0  # labels the prior base rate is worth
# AdaGrad's sum of squared gradients before the first one: early steps are plain SGD steps
# (lr * gradient), later ones shrink as the squares add up (docs/model.md, measurements).
ACCUMULATOR_INIT = 1.0


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


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class Head:
    """One logistic regression: ``p = sigmoid(logit(base) + bias + w . x)``.

    Parameters
    ----------
    learning_rate
        AdaGrad step: ``w -= learning_rate * g / sqrt(ACCUMULATOR_INIT + sum of g**2)``, so
        a weight's first steps are SGD steps and later ones shrink.
    l2
        L2 penalty on the weights (not the bias).
    prior
        The base rate before any label; worth :data:`BASE_PRIOR_WEIGHT` labels.

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
        self.bias = 0.0
        self.weights: dict[str, float] = {}
        self.g2: dict[str, float] = {}  # AdaGrad: sum of squared gradients per weight
        self.bias_g2 = ACCUMULATOR_INIT
        self.counts: dict[str, int] = {}  # running statistics of the numeric features
        self.means: dict[str, float] = {}
        self.vars: dict[str, float] = {}
        self.seen = 0.0  # decayed label count and positives: the running base rate
        self.positives = 0.0
        self.iterations = 0

    @property
    def base_rate(self) -> float:
        w = BASE_PRIOR_WEIGHT
        return (self.positives + self.prior * w) / (self.seen + w)

    def _inputs(self, features: Mapping[str, float]) -> dict[str, float]:
        x: dict[str, float] = {}
        means, variances = self.means, self.vars
        for name, value in features.items():
            if "=" in name:
                x[name] = value
            else:
                var = variances.get(name, 0.0)
                scaled = (value - means.get(name, 0.0)) / math.sqrt(var) if var > 0 else 0.0
                x[name] = CLIP if scaled > CLIP else -CLIP if scaled < -CLIP else scaled
        return x

    def _logit(self, x: Mapping[str, float]) -> float:
        base = min(max(self.base_rate, 1e-9), 1 - 1e-9)
        weights = self.weights
        return (math.log(base / (1 - base)) + self.bias
                + sum(weights.get(name, 0.0) * v for name, v in x.items()))

    def predict(self, features: Mapping[str, float]) -> float:
        return _sigmoid(self._logit(self._inputs(features)))

    def learn(self, features: Mapping[str, float], label: bool) -> None:
        """One example: scaler statistics, then one AdaGrad step, then the base rate."""
        for name, value in features.items():
            if "=" not in name:  # Welford, population variance (as River's StandardScaler)
                n = self.counts.get(name, 0) + 1
                mean = self.means.get(name, 0.0)
                delta = value - mean
                mean += delta / n
                self.counts[name], self.means[name] = n, mean
                self.vars[name] = self.vars.get(name, 0.0) + (delta * (value - mean) -
                                                              self.vars.get(name, 0.0)) / n
        x = self._inputs(features)
        error = _sigmoid(self._logit(x)) - (1.0 if label else 0.0)
        lr, l2, weights, g2 = self.learning_rate, self.l2, self.weights, self.g2
        for name, value in x.items():
            if value == 0.0:
                continue
            w = weights.get(name, 0.0)
            g = error * value + l2 * w
            acc = g2.get(name, ACCUMULATOR_INIT) + g * g
            g2[name] = acc
            weights[name] = w - lr * g / math.sqrt(acc)
        self.bias_g2 += error * error
        self.bias -= lr * error / math.sqrt(self.bias_g2)
        keep = 1.0 - 1.0 / BASE_HORIZON
        self.seen = self.seen * keep + 1.0
        self.positives = self.positives * keep + (1.0 if label else 0.0)
        self.iterations += 1

    def state(self) -> dict[str, Any]:
        return {
            "intercept": self.bias, "intercept_g2": self.bias_g2,
            # generic name -> number objects: more (hashed) features only add entries
            "weights": dict(self.weights), "g2": dict(self.g2),
            "iterations": self.iterations, "base": {"seen": self.seen, "positives": self.positives},
            "scaler": {"counts": dict(self.counts), "means": dict(self.means),
                       "vars": dict(self.vars)},
        }

    def restore(self, fields: snapshot_format.Fields) -> None:
        bound = snapshot_format.MAX_FLOAT
        self.bias = fields.number("intercept", -bound, bound)
        self.bias_g2 = fields.number("intercept_g2", ACCUMULATOR_INIT, bound)
        self.weights = fields.floats("weights")
        g2 = fields.floats("g2")
        if any(v < ACCUMULATOR_INIT for v in g2.values()):
            raise SnapshotError(f"{fields.where}.g2 holds a sum of squares below its start")
        self.g2 = g2
        self.iterations = fields.count("iterations")
        base = fields.object("base")
        self.seen = base.number("seen", 0.0, bound)
        self.positives = base.number("positives", 0.0, self.seen)
        statistics = fields.object("scaler")
        variances = statistics.floats("vars")
        if any(v < 0 for v in variances.values()):
            raise SnapshotError(f"{statistics.where}.vars holds a negative variance")
        self.counts = dict(statistics.counts("counts"))
        self.means = dict(statistics.floats("means"))
        self.vars = variances


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
            "river": _minor(river_version),  # informative: River is no longer in the model
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
