"""Settings -> the pure core's configuration, in one place for the worker, replay and
evaluation alike (so offline figures are computed with the worker's own policy).

>>> decider_config(Settings(threshold=0.2, min_gap_s=60)).policy.min_gap_ms
60000
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from streams.challengers import parse_spec, parse_specs
from streams.model import PushModel
from streams.pipeline import DeciderConfig
from streams.policy import PolicyConfig
from streams.settings import Settings

POLICY_ONLY = frozenset({"dedupe_content"})  # PolicyConfig fields Settings does not carry


def decider_config(settings: Settings) -> DeciderConfig:
    """The pure core's configuration, taken from Settings once.

    Every PolicyConfig field but those of ``POLICY_ONLY`` (left at their defaults, set with
    ``replay --policy``) has a Settings field of the same name; ``*_ms`` fields come from the
    ``*_s`` setting in seconds.
    """
    policy = PolicyConfig(**{f.name: _setting(settings, f.name) for f in fields(PolicyConfig)
                             if f.name not in POLICY_ONLY})
    return DeciderConfig(
        policy=policy,
        attribution_window_ms=settings.attribution_window_s * 1000,
        late_tolerance_ms=settings.late_tolerance_s * 1000,
        outbox_limit=settings.outbox_limit,
        decided_horizon_ms=settings.decided_horizon_s * 1000,
        decided_limit=settings.decided_limit,
        item_features=settings.item_features,
        item_half_life_ms=settings.item_half_life_s * 1000,
    )


def _setting(settings: Settings, name: str) -> Any:
    if name.endswith("_ms"):
        return getattr(settings, name.removesuffix("_ms") + "_s") * 1000
    return getattr(settings, name)


def model_defaults(settings: Settings) -> dict[str, Any]:
    """What every model spec starts from (streams.challengers)."""
    return {"learning_rate": settings.learning_rate, "seed": settings.seed}


def fresh_model(settings: Settings) -> PushModel:
    """The champion spec's cold model (``PUSHFLOW_MODEL``)."""
    return parse_spec(settings.model).build(model_defaults(settings))


def challenger_specs(settings: Settings) -> tuple[str, ...]:
    return parse_specs(settings.challengers)
