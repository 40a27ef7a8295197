"""``local_hour`` is ``local_time(...).hour`` for every instant, DST transitions included."""

from __future__ import annotations

import random

import pytest

from streams.contracts import local_hour, local_time

ZONES = ["UTC", "Z", "+05:30", "-03:00", "+14:00", "Europe/Berlin", "America/New_York",
         "America/St_Johns", "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Chatham",
         "America/Sao_Paulo", "Africa/Casablanca", "Asia/Tokyo"]
YEAR_2026 = 1_767_225_600_000
MS_YEAR = 365 * 86_400_000


@pytest.mark.parametrize("tz", ZONES)
def test_local_hour_matches_local_time_at_random_instants(tz: str) -> None:
    rng = random.Random(tz)
    for _ in range(1000):
        at_ms = rng.randrange(946_684_800_000, 4_102_444_800_000)
        assert local_hour(at_ms, tz) == local_time(at_ms, tz).hour, at_ms


@pytest.mark.parametrize("tz", ZONES)
def test_local_hour_matches_local_time_around_every_offset_change(tz: str) -> None:
    """2026 is probed every 15 minutes; before each change of offset found, about every
    second back to the probe before it."""
    changes = []
    previous = local_time(YEAR_2026, tz).utcoffset()
    for at_ms in range(YEAR_2026, YEAR_2026 + MS_YEAR, 900_000):
        offset = local_time(at_ms, tz).utcoffset()
        if offset != previous:
            changes.append(at_ms)
        previous = offset
    for change in changes:
        for at_ms in range(change - 960_000, change + 60_000, 997):
            assert local_hour(at_ms, tz) == local_time(at_ms, tz).hour, at_ms
    assert len(changes) in (0, 2), changes  # the zones above change twice a year or never
