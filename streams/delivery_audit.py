"""What an evaluated policy did that it must never do, counted against the world's truth.

``pushflow evaluate`` feeds every candidate, decision record and intent of one run through an
:class:`Audit`. It counts, over candidates that arrived in the measured window: critical ones
sent before they expired, sends at or after expiry, non-critical sends in the quiet hours of
the user's true zone (only while the worker had been told that zone: the last ``tz`` it read
for the user names it), decision records dated before their candidate arrived, and final
decision records (sends and suppressions, not holds) per candidate id.

>>> audit = Audit(lambda user_id, at_ms: "UTC", (22, 8), 0, 10_000_000, 20_000_000)
>>> audit.told["u1"] = "UTC"
>>> audit.arrived({"candidate_id": "c1", "user_id": "u1", "created_at_ms": 1_000,
...                "expires_at_ms": 9_000_000, "critical": False, "arrived_at_ms": 2_000})
>>> audit.decided({"candidate_id": "c1", "action": "send", "decided_at_ms": 1_000})
>>> audit.sent({"candidate_id": "c1", "user_id": "u1", "intent_id": "i1",
...             "send_at_ms": 1_000, "critical": False})
>>> r = audit.report()
>>> r["decisions_before_arrival"], r["quiet_hour_sends"], r["max_final_decisions"]
(1, 1, 1)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams.guardrails import in_quiet_hours

TrueZone = Callable[[str, int], str]


@dataclass(frozen=True, slots=True)
class _Arrival:
    arrived_ms: int
    expires_ms: int
    critical: bool
    measured: bool


class Audit:
    """Counts of one run; ``quiet_hours`` is ``(start_hour, end_hour)`` of the guardrail.

    Candidates are measured when they first arrive in ``[measure_from, measure_until)``; the
    final-record check covers those that expire by ``end_ms``, so a push still rightly held
    when the run stops is not counted as missing.
    """

    def __init__(self, true_zone: TrueZone, quiet_hours: tuple[int, int], measure_from: int,
                 measure_until: int, end_ms: int) -> None:
        self.true_zone, self.quiet_hours = true_zone, quiet_hours
        self.measure_from, self.measure_until, self.end_ms = measure_from, measure_until, end_ms
        self.told: dict[str, str] = {}  # user id -> the last tz the worker read for them
        self.candidates: dict[str, _Arrival] = {}
        self.finals: Counter[str] = Counter()
        self.critical_sent: set[str] = set()
        self.critical_intents: set[str] = set()
        self.counts: Counter[str] = Counter()

    def arrived(self, message: dict[str, Any]) -> None:
        """A candidate message reached the worker (a re-sent id keeps its first arrival)."""
        candidate_id = message["candidate_id"]
        if candidate_id in self.candidates:
            return
        arrived = int(message.get("arrived_at_ms", message["created_at_ms"]))
        self.candidates[candidate_id] = _Arrival(
            arrived, int(message["expires_at_ms"]), bool(message.get("critical")),
            self.measure_from <= arrived < self.measure_until)

    def decided(self, record: dict[str, Any]) -> None:
        arrival = self.candidates.get(record["candidate_id"])
        if arrival is None or not arrival.measured:
            return
        if record["decided_at_ms"] < arrival.arrived_ms:
            self.counts["decisions_before_arrival"] += 1
        if record["action"] != "hold":
            self.finals[record["candidate_id"]] += 1

    def sent(self, intent: dict[str, Any]) -> None:
        arrival = self.candidates.get(intent["candidate_id"])
        if intent.get("critical"):
            self.critical_intents.add(intent["intent_id"])
        if arrival is None or not arrival.measured:
            return
        send_at = int(intent["send_at_ms"])
        if send_at >= arrival.expires_ms:
            self.counts["sends_after_expiry"] += 1
        elif arrival.critical:
            self.critical_sent.add(intent["candidate_id"])
        if not arrival.critical and self._in_told_quiet_hours(intent["user_id"], send_at):
            self.counts["quiet_hour_sends"] += 1

    def _in_told_quiet_hours(self, user_id: str, at_ms: int) -> bool:
        zone = self.true_zone(user_id, at_ms)
        return self.told.get(user_id) == zone and in_quiet_hours(at_ms, zone, *self.quiet_hours)

    def report(self) -> dict[str, Any]:
        measured = [(c, a) for c, a in self.candidates.items() if a.measured]
        critical = [c for c, a in measured if a.critical]
        checked = [c for c, a in measured if a.expires_ms <= self.end_ms]
        finals = [self.finals[c] for c in checked]
        return {
            "critical_candidates": len(critical),
            "critical_delivered": (sum(c in self.critical_sent for c in critical) / len(critical)
                                   if critical else None),
            "sends_after_expiry": self.counts["sends_after_expiry"],
            "quiet_hour_sends": self.counts["quiet_hour_sends"],
            "decisions_before_arrival": self.counts["decisions_before_arrival"],
            "max_final_decisions": max(finals, default=0),
            "candidates_not_one_final": sum(n != 1 for n in finals),
        }
