"""Champion and challengers: other models learn beside the serving one and are judged on the
same labels before any of them decides.

The *champion* is the model every worker scores with (``PUSHFLOW_MODEL``). The worker that
trains also keeps *challengers* (``PUSHFLOW_CHALLENGERS``): each learns every label the
champion learns, from the same features (the ones scored at decision time), and is scored on
each label just before it learns it. The champion is scored the same way, at the same moment,
so the comparison between them is like for like: every model has seen the same labels when
it is scored. (The champion's score at decision time, the one that decided, is the figure
``pushflow_model_rolling_auc``; a label arrives up to the attribution window later, so the
champion re-scored at label time has seen a little more.) A challenger never scores a
candidate for a decision: decisions are the champion's alone.

A model is named by a *spec*: a preset name from :data:`PRESETS`, optionally followed by
parameters, ``NAME:key=value,key=value`` (``learning_rate``, ``l2``, ``open_prior``,
``disable_prior``). Challengers travel in the snapshot beside the champion, so a trainer that
moves to another worker, or restarts, keeps them learned; a challenger not in the snapshot
starts cold (and its figures say how many labels it has seen).

Promotion (docs/model.md): set ``PUSHFLOW_MODEL`` to the challenger's spec (and the old
champion's spec among the challengers, to keep judging it) and restart the workers. The
trainer then starts from the challenger's learned state, not from scratch, and its next
snapshot, with the champion's version plus one, is what every worker serves.

>>> spec = parse_spec("hashed-lr:learning_rate=0.02")
>>> spec.name, spec.params["learning_rate"]
('hashed-lr:learning_rate=0.02', 0.02)
>>> parse_specs("hashed-lr-slow  hashed-lr:l2=0.001")
('hashed-lr-slow', 'hashed-lr:l2=0.001')
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.errors import ConfigError, SnapshotError
from streams.evaluation import Prequential
from streams.model import PushModel

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
PARAMS = {"learning_rate": (0.0, 10.0), "l2": (0.0, 10.0), "open_prior": (1e-9, 1 - 1e-9),
          "disable_prior": (1e-9, 1 - 1e-9)}


@dataclass(frozen=True, slots=True)
class Preset:
    """A named model: the worker's defaults changed by ``params``."""

    description: str
    params: Mapping[str, float]


PRESETS: dict[str, Preset] = {
    "hashed-lr": Preset("the hashed-feature logistic regressions with the worker's settings "
                        "(PUSHFLOW_LEARNING_RATE)", {}),
    "hashed-lr-slow": Preset("the same with a smaller AdaGrad step (0.02): steadier on rare "
                             "opens, slower to follow a change", {"learning_rate": 0.02}),
    "hashed-lr-fast": Preset("the same with a larger AdaGrad step (0.1)", {"learning_rate": 0.1}),
    "hashed-lr-l2": Preset("the same with an L2 penalty of 0.001 on the weights", {"l2": 1e-3}),
}


@dataclass(frozen=True, slots=True)
class Spec:
    """A parsed model spec: its name as written, its preset and its parameter overrides."""

    name: str
    preset: str
    params: Mapping[str, float]

    def build(self, defaults: Mapping[str, Any]) -> PushModel:
        """A cold model: ``defaults`` (the worker's settings), the preset's, then this spec's."""
        return PushModel(**{**defaults, **PRESETS[self.preset].params, **self.params})


def parse_spec(text: str) -> Spec:
    """``NAME`` or ``NAME:key=value,...``; a ConfigError names what is wrong.

    >>> parse_spec("nope")
    Traceback (most recent call last):
    ...
    streams.errors.ConfigError: unknown model 'nope': one of hashed-lr, hashed-lr-slow, \
hashed-lr-fast, hashed-lr-l2 (optionally NAME:learning_rate=0.02,l2=0.0001)
    """
    name = text.strip()
    preset, _, rest = name.partition(":")
    if preset not in PRESETS:
        raise ConfigError(f"unknown model {preset!r}: one of {', '.join(PRESETS)} (optionally "
                          f"NAME:learning_rate=0.02,l2=0.0001)")
    params: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, _, raw = item.partition("=")
        if key not in PARAMS:
            raise ConfigError(f"model {name!r}: unknown parameter {key!r} (one of "
                              f"{', '.join(PARAMS)})")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"model {name!r}: {key}={raw!r} is not a number") from None
        low, high = PARAMS[key]
        if not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"model {name!r}: {key} must be within [{low}, {high}]")
        params[key] = value
    return Spec(name, preset, params)


def parse_specs(text: str) -> tuple[str, ...]:
    """A whitespace-separated list of specs (each checked), duplicates dropped, in order."""
    names: list[str] = []
    for part in text.split():
        name = parse_spec(part).name
        if name not in names:
            names.append(name)
    return tuple(names)


class Figures:
    """One model's prequential figures (a :class:`Prequential` window) and its role."""

    def __init__(self, role: str, window: int) -> None:
        self.role = role
        self.prequential = Prequential(window=window)

    def report(self) -> dict[str, Any]:
        return {"role": self.role, **self.prequential.report()}


class Shadows:
    """The challengers of one trainer, and the figures of every model on the same labels.

    Parameters
    ----------
    champion
        The champion's spec name.
    challengers
        Spec name -> model, learned beside the champion.
    window
        Labels each model's figures cover.

    >>> from streams.model import PushModel
    >>> s = Shadows("hashed-lr", {"hashed-lr-slow": PushModel(learning_rate=0.02)}, window=50)
    >>> champion, x = PushModel(), {"kind=a": 1.0}
    >>> for label in (1, 0, 0, 1, 0):
    ...     scores = s.observe(champion, x, opened=bool(label), disabled=False)
    ...     champion.learn(x, opened=bool(label), disabled=False)
    >>> sorted(scores), s.models["hashed-lr-slow"].version
    (['hashed-lr', 'hashed-lr-slow'], 5)
    >>> s.report()["hashed-lr"]["n"], s.report()["hashed-lr-slow"]["role"]
    (5, 'challenger')
    """

    def __init__(self, champion: str, challengers: Mapping[str, PushModel],
                 window: int = 1000) -> None:
        self.champion = champion
        self.models = dict(challengers)
        self.window = window
        self.figures = {champion: Figures(CHAMPION, window)}
        self.figures.update({name: Figures(CHALLENGER, window) for name in self.models})

    def observe(self, champion: PushModel, features: Mapping[str, float], *, opened: bool,
                disabled: bool) -> dict[str, float]:
        """Score ``features`` with every model before any learns this label, then let the
        challengers learn it (the caller's trainer teaches the champion). Returns the scores
        by spec name. ``features`` is read, never changed."""
        label = int(opened)
        scores = {self.champion: champion.p_open(features)}
        for name, model in self.models.items():
            scores[name] = model.p_open(features)
            model.learn(features, opened=opened, disabled=disabled)
        for name, p in scores.items():
            self.figures[name].prequential.update(p, label)
        return scores

    def report(self) -> dict[str, dict[str, Any]]:
        """Per spec name: role, labels seen, rolling AUC, log loss, calibration error..."""
        return {name: figures.report() for name, figures in self.figures.items()}

    def states(self) -> dict[str, Any]:
        """The challengers' learned states, for the snapshot."""
        return {name: model.state() for name, model in self.models.items()}


def restore(
    champion: str,
    names: tuple[str, ...],
    stored: Mapping[str, Any] | None,
    defaults: Mapping[str, Any],
    window: int = 1000,
) -> Shadows:
    """The challengers ``names`` (the champion's own name left out), each from its learned
    state in ``stored`` (a snapshot's ``challengers``) when it is there and valid, else cold."""
    models: dict[str, PushModel] = {}
    for name in names:
        if name == champion:
            continue
        learned = _learned(stored, name, "challenger", "; it starts cold")
        models[name] = learned if learned is not None else parse_spec(name).build(defaults)
    return Shadows(champion, models, window)


def promoted(
    champion: str, serving: PushModel, serving_name: str | None, stored: Mapping[str, Any] | None
) -> tuple[PushModel, str, str | None]:
    """The model to train, the spec it is trained as, and the spec it replaces (or None).

    If the newest snapshot's champion is another spec and ``champion`` learned beside it as a
    challenger, training goes on from the challenger's state, with the old champion's version
    plus one (so every worker takes its first snapshot as newer). A spec that was not
    shadowed cannot take over with its learning: the serving model goes on under its own
    name, and a warning says why. A snapshot that names no spec (or no snapshot) is taken as
    ``champion``'s.
    """
    if serving_name is None or serving_name == champion:
        return serving.clone(), champion, None
    model = _learned(stored, champion, "model")
    if model is not None:
        model.version = max(model.version, serving.version) + 1
        log.info("model %s promoted over %s (version %d)", champion, serving_name,
                 model.version)
        return model, champion, serving_name
    log.warning("model %s was not among the challengers of the newest snapshot (champion %s): "
                "training goes on with %s; shadow it first (PUSHFLOW_CHALLENGERS)", champion,
                serving_name, serving_name)
    return serving.clone(), serving_name, None


def _learned(
    stored: Mapping[str, Any] | None, name: str, what: str, then: str = ""
) -> PushModel | None:
    """The model ``name`` learned, from its state in ``stored`` (a snapshot's
    ``challengers``); None when it is not there or not usable (logged)."""
    state = (stored or {}).get(name)
    if state is None:
        return None
    try:
        return PushModel.from_state(state)
    except (SnapshotError, TypeError, ValueError) as exc:
        log.warning("%s %s: its stored state is not usable (%s)%s", what, name, exc, then)
        return None
