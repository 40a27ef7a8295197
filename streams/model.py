"""The online model: p_open and p_disable from River pipelines, versioned and snapshotted.

``score`` happens at decision time and ``learn`` only when the label resolves, with the exact
features that were scored (kept under the intent id), so nothing the model learns from leaks
into the score it is judged on.

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
from river import compose, linear_model, optim, preprocessing
from river.utils import VectorDict

from streams import snapshot_format
from streams.errors import SnapshotError

# Bump when the model's structure or feature meaning changes: old snapshots are then refused.
# 4: snapshots are data (weights, scaler statistics), no longer pickles.
MODEL_FORMAT = 4
CLIP = 5.0  # standard deviations


def clip_scaled(x: dict[str, float]) -> dict[str, float]:
    """Bound standardised values: a feature that was constant for a long time has a variance
    near zero, and its first change would otherwise be scaled to thousands and saturate p.

    >>> clip_scaled({"a": 1e6, "b": -0.5})
    {'a': 5.0, 'b': -0.5}
    """
    return {k: min(CLIP, max(-CLIP, v)) for k, v in x.items()}


def numeric(x: dict[str, float]) -> dict[str, float]:
    """The numeric features (scaled); indicators are named ``name=value``."""
    return {k: v for k, v in x.items() if "=" not in k}


def indicators(x: dict[str, float]) -> dict[str, float]:
    """One-hot indicators such as ``kind=live_started``: passed through unscaled, because a
    running scaler sees them only when present (always 1) and would map them to 0."""
    return {k: v for k, v in x.items() if "=" in k}


def _logistic(learning_rate: float, l2: float, prior: float) -> compose.Pipeline:
    """Scaled, clipped logistic regression whose intercept starts at the prior's log-odds."""
    regression = linear_model.LogisticRegression(
        optimizer=optim.SGD(learning_rate), l2=l2, intercept_init=math.log(prior / (1 - prior))
    )
    scaled = compose.Pipeline(
        compose.FuncTransformer(numeric),
        preprocessing.StandardScaler(),
        compose.FuncTransformer(clip_scaled),
    )
    return compose.Pipeline(
        compose.TransformerUnion(scaled, compose.FuncTransformer(indicators)), regression
    )


class PushModel:
    """Two scaled logistic regressions learned online: p_open and p_disable.

    Parameters
    ----------
    learning_rate
        SGD step of both regressions.
    l2
        L2 penalty of both regressions.
    open_prior, disable_prior
        What a cold model predicts before it has learned anything: a plausible base rate, so
        the first pushes go out (and teach the model) without a wild guess of 0.5.
    seed
        Kept for reproducibility of any stochastic part; the pipelines are deterministic.
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
        self._open = _logistic(learning_rate, l2, open_prior)
        self._disable = _logistic(learning_rate, l2, disable_prior)

    def p_open(self, features: Mapping[str, float]) -> float:
        return float(self._open.predict_proba_one(dict(features)).get(True, 0.0))

    def p_disable(self, features: Mapping[str, float]) -> float:
        return float(self._disable.predict_proba_one(dict(features)).get(True, 0.0))

    def learn(self, features: Mapping[str, float], *, opened: bool, disabled: bool) -> None:
        """One labeled example; the version counts examples learned, so it is deterministic."""
        self._open.learn_one(dict(features), opened)
        self._disable.learn_one(dict(features), disabled)
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
            "open": _regression_state(self._open),
            "disable": _regression_state(self._disable),
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
        _restore_regression(model._open, fields.object("open"))
        _restore_regression(model._disable, fields.object("disable"))
        model.version = fields.count("version")
        return model


def _parts(
    pipeline: compose.Pipeline,
) -> tuple[linear_model.LogisticRegression, preprocessing.StandardScaler]:
    """The two learning steps of a :func:`_logistic` pipeline; the rest holds no state."""
    union = pipeline.steps["TransformerUnion"]
    return pipeline.steps["LogisticRegression"], union.transformers["Pipeline"]["StandardScaler"]


def _regression_state(pipeline: compose.Pipeline) -> dict[str, Any]:
    regression, scaler = _parts(pipeline)
    return {
        "intercept": regression.intercept,
        # a generic name -> weight object: more (e.g. hashed) features only add entries
        "weights": regression._weights.to_dict(),
        "iterations": regression.optimizer.n_iterations,
        "scaler": {
            "counts": dict(scaler.counts),
            "means": dict(scaler.means),
            "vars": dict(scaler.vars),
        },
    }


def _restore_regression(pipeline: compose.Pipeline, fields: snapshot_format.Fields) -> None:
    regression, scaler = _parts(pipeline)
    bound = snapshot_format.MAX_FLOAT
    regression.intercept = fields.number("intercept", -bound, bound)
    regression._weights = VectorDict(fields.floats("weights"))
    regression.optimizer.n_iterations = fields.count("iterations")
    statistics = fields.object("scaler")
    variances = statistics.floats("vars")
    if any(v < 0 for v in variances.values()):
        raise SnapshotError(f"{statistics.where}.vars holds a negative variance")
    scaler.counts = collections.Counter(statistics.counts("counts"))
    scaler.means = collections.defaultdict(float, statistics.floats("means"))
    scaler.vars = collections.defaultdict(float, variances)


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])
