"""What the demo shows, tallied from the records it sends and reads back, with no I/O.

A candidate can have several decision records: a push held for its send time gets a ``hold``
record and later a ``released`` (or ``min_gap``, ``quiet_hours``...) one. The scoreboard counts
each candidate once, by its latest record, so the reasons add up to the candidates decided;
pushes still waiting count as ``held``.

Users are split as the worker splits them (:func:`streams.policy.in_holdout`), so the open
rate of the model group is compared with the holdout group's, which gets every push the
guardrails allow.

>>> board = Scoreboard(holdout_share=0.0, attribution_window_ms=1000)
>>> board.on_decision({"decision_id": "i1", "action": "hold", "reason": "quiet_hours"})
>>> board.final_reasons()
{'held': 1}
>>> board.on_decision({"decision_id": "i1", "action": "send", "reason": "released"})
>>> board.on_intent({"intent_id": "i1", "user_id": "u1", "p_open": 0.42, "send_at_ms": 0})
>>> board.on_event({"type": "push_opened", "user_id": "u1", "intent_id": "i1"})
>>> board.final_reasons(), board.groups()["model"]["open_rate"]
({'released': 1}, 1.0)
>>> board.resolve(now_ms=5000)
>>> board.reliability()
[{'low': 0.4, 'n': 1, 'mean_p': 0.42, 'open_rate': 1.0}]
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Any

from streams.policy import in_holdout

HELD = "held"
GROUPS = ("model", "holdout")


class Scoreboard:
    """Final decisions by reason, pushes and opens by group, and a reliability table.

    Parameters
    ----------
    holdout_share
        The worker's ``holdout_share``: which users are in the holdout group.
    attribution_window_ms
        How long (event time) a push waits for its open before it counts as not opened.
    bins
        Equal-width p_open bins of the reliability table.
    """

    def __init__(self, holdout_share: float, attribution_window_ms: int, bins: int = 10) -> None:
        self.holdout_share = holdout_share
        self.window_ms = attribution_window_ms
        self.bins = bins
        self._final: Counter[str] = Counter()
        self._held: dict[str, str] = {}
        self._pushes: Counter[str] = Counter()
        self._opens: Counter[str] = Counter()
        self._waiting: deque[tuple[int, str, float]] = deque()
        self._waiting_ids: set[str] = set()
        self._opened: set[str] = set()
        self._cells = [[0, 0.0, 0] for _ in range(bins)]

    def group(self, user_id: str) -> str:
        return "holdout" if in_holdout(user_id, self.holdout_share) else "model"

    def on_decision(self, record: dict[str, Any]) -> None:
        """One decision record: replaces the candidate's earlier one if it was a hold."""
        decision_id = str(record.get("decision_id"))
        previous = self._held.pop(decision_id, None)
        if previous is not None:
            self._final[HELD] -= 1
        if record.get("action") == "hold":
            self._held[decision_id] = str(record.get("reason"))
            self._final[HELD] += 1
        else:
            self._final[str(record.get("reason"))] += 1

    def on_intent(self, intent: dict[str, Any]) -> None:
        """A push the worker sent; model-scored ones wait for their outcome (reliability)."""
        self._pushes[self.group(str(intent.get("user_id")))] += 1
        p_open = intent.get("p_open")
        if isinstance(p_open, int | float) and not intent.get("critical"):
            send_at, intent_id = int(intent.get("send_at_ms") or 0), str(intent.get("intent_id"))
            self._waiting.append((send_at, intent_id, float(p_open)))
            self._waiting_ids.add(intent_id)

    def on_event(self, event: dict[str, Any]) -> None:
        """A user event the simulated users sent: opens are counted by group."""
        if event.get("type") == "push_opened":
            self._opens[self.group(str(event.get("user_id")))] += 1
            intent_id = str(event.get("intent_id"))
            if intent_id in self._waiting_ids:  # else no reliability row waits for it
                self._opened.add(intent_id)

    def resolve(self, now_ms: int) -> None:
        """Pushes whose attribution window ended by ``now_ms`` go into the reliability table."""
        while self._waiting and self._waiting[0][0] + self.window_ms <= now_ms:
            _, intent_id, p_open = self._waiting.popleft()
            opened = intent_id in self._opened
            self._opened.discard(intent_id)
            self._waiting_ids.discard(intent_id)
            cell = self._cells[min(int(p_open * self.bins), self.bins - 1)]
            cell[0] += 1
            cell[1] += p_open
            cell[2] += opened

    def final_reasons(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self._final.items()) if v}

    def groups(self) -> dict[str, dict[str, Any]]:
        """Pushes, opens and open rate of each group."""
        out = {}
        for name in GROUPS:
            pushes, opens = self._pushes[name], self._opens[name]
            rate = round(opens / pushes, 4) if pushes else None
            out[name] = {"pushes": pushes, "opens": opens, "open_rate": rate,
                         "ci95": wilson(opens, pushes)}
        return out

    def reliability(self) -> list[dict[str, float]]:
        """Per p_open bin with resolved pushes: count, mean p_open, observed open rate."""
        return [
            {"low": i / self.bins, "n": n, "mean_p": round(s / n, 4), "open_rate": round(k / n, 4)}
            for i, (n, s, k) in enumerate(self._cells)
            if n
        ]


def wilson(successes: int, trials: int, z: float = 1.96) -> list[float] | None:
    """95% Wilson interval of a rate: a short demo's holdout group has few pushes.

    >>> wilson(9, 52)
    [0.0938, 0.2973]
    """
    if not trials:
        return None
    p, n = successes / trials, trials
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]
