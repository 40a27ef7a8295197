"""Settings -> the pure core's configuration, in one place for the worker, replay and
evaluation alike (so offline figures are computed with the worker's own policy).

>>> decider_config(Settings(threshold=0.2, min_gap_s=60)).policy.min_gap_ms
60000
"""

from __future__ import annotations

from streams.model import PushModel
from streams.pipeline import DeciderConfig
from streams.policy import PolicyConfig
from streams.settings import Settings


def decider_config(settings: Settings) -> DeciderConfig:
    """The pure core's configuration, taken from Settings once."""
    policy = PolicyConfig(
        threshold=settings.threshold,
        daily_cap=settings.daily_cap,
        min_gap_ms=settings.min_gap_s * 1000,
        quiet_start_hour=settings.quiet_start_hour,
        quiet_end_hour=settings.quiet_end_hour,
        holdout_share=settings.holdout_share,
        explore_share=settings.explore_share,
        disable_weight=settings.disable_weight,
        seed=settings.seed,
        dismiss_weight=settings.dismiss_weight,
        critical_in_quiet_hours=settings.critical_in_quiet_hours,
        send_time=settings.send_time,
        send_time_min_events=settings.send_time_min_events,
        send_time_max_hold_ms=settings.send_time_max_hold_s * 1000,
        send_time_slots=settings.send_time_slots,
        send_time_min_gain=settings.send_time_min_gain,
        volume_target=settings.volume_target,
        volume_gain=settings.volume_gain,
    )
    return DeciderConfig(
        policy=policy,
        attribution_window_ms=settings.attribution_window_s * 1000,
        late_tolerance_ms=settings.late_tolerance_s * 1000,
        outbox_limit=settings.outbox_limit,
    )


def fresh_model(settings: Settings) -> PushModel:
    return PushModel(learning_rate=settings.learning_rate, seed=settings.seed)
