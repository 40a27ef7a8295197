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

import copy
import math
import pickle
from collections.abc import Mapping
from typing import Any

import orjson
from river import __version__ as river_version
from river import compose, linear_model, optim, preprocessing

from streams.errors import IncompatibleSnapshot, SnapshotError

# Bump when the model's structure or feature meaning changes: old snapshots are then refused.
MODEL_FORMAT = 3
CLIP = 5.0  # standard deviations
SNAPSHOT_MAGIC = b"PUSHFLOW-MODEL\n"


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

    def to_snapshot(self, meta: Mapping[str, object] | None = None) -> bytes:
        """Header (JSON, checked before anything is unpickled) + pickled pipelines.

        ``meta`` is stored in the header as is (e.g. how far in the example stream the model
        has learned).
        """
        header = {
            **(meta or {}),
            "format": MODEL_FORMAT,
            "river": _minor(river_version),
            "version": self.version,
            "learning_rate": self.learning_rate,
            "l2": self.l2,
            "open_prior": self.open_prior,
            "disable_prior": self.disable_prior,
        }
        body = pickle.dumps((self._open, self._disable), protocol=pickle.HIGHEST_PROTOCOL)
        return SNAPSHOT_MAGIC + orjson.dumps(header) + b"\n" + body

    @classmethod
    def from_snapshot(cls, raw: bytes) -> PushModel:
        """Rebuild a model; refuse snapshots from another model format or River release."""
        header = snapshot_header(raw)
        if header.get("format") != MODEL_FORMAT or header.get("river") != _minor(river_version):
            raise IncompatibleSnapshot(
                f"snapshot format {header.get('format')} / river {header.get('river')} "
                f"cannot be loaded by format {MODEL_FORMAT} / river {_minor(river_version)}"
            )
        model = cls(
            float(header["learning_rate"]),
            float(header["l2"]),
            float(header["open_prior"]),
            float(header["disable_prior"]),
        )
        body = raw[len(SNAPSHOT_MAGIC) :].split(b"\n", 1)[1]
        model._open, model._disable = pickle.loads(body)
        model.version = int(header["version"])
        return model


def snapshot_header(raw: bytes) -> dict[str, Any]:
    """The JSON header of a snapshot, without unpickling anything."""
    if not raw.startswith(SNAPSHOT_MAGIC):
        raise SnapshotError("not a pushflow model snapshot (bad magic)")
    try:
        line = raw[len(SNAPSHOT_MAGIC) :].split(b"\n", 1)[0]
        header = orjson.loads(line)
    except (orjson.JSONDecodeError, IndexError) as exc:
        raise SnapshotError(f"unreadable snapshot header: {exc}") from None
    if not isinstance(header, dict):
        raise SnapshotError("snapshot header is not an object")
    return header


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])
