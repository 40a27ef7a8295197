"""Logging: readable text by default, JSON lines for log shippers (``log_format=json``).

One line per lifecycle event at info level; per-message detail only at debug. Secrets never
reach a log line: Settings renders them as ``Secret('**********')``. A warning or error that
repeats (say, every reconnect to a broker that is down) is written once per minute, with the
count of the repeats held back (:class:`RepeatFilter`). librdkafka logs through the
``librdkafka`` logger (:func:`client_logging`), so its lines are formatted, filtered and
rate-limited like every other.

>>> import logging, orjson
>>> record = logging.LogRecord("pushflow", logging.INFO, "x", 1, "ready on %d", (6066,), None)
>>> line = orjson.loads(JsonFormatter().format(record))
>>> line["level"], line["logger"], line["message"]
('info', 'pushflow', 'ready on 6066')
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _printable(value: Any) -> Any:
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, any ``extra=`` fields, and exc."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(line, default=str).decode()
        except TypeError:  # e.g. a lone surrogate: keep the line, escape what orjson refuses
            return orjson.dumps({k: _printable(v) for k, v in line.items()}, default=str).decode()


REPEAT_WINDOW_S = 60.0
LIBRDKAFKA_LOGGER = "librdkafka"
_NUMBERS = re.compile(r"\d+")
_LIBRDKAFKA_COUNT = ", # identical error(s) suppressed"  # its own count, numbers blanked


class RepeatFilter(logging.Filter):
    """Lets a warning or error through once per ``window_s`` per kind of line.

    Two lines are of one kind when they come from the same logger at the same level and say
    the same once numbers (ports, ids, timestamps, offsets) and librdkafka's own count of
    suppressed repeats are blanked. The first of a kind
    is written; repeats within the window are counted, and the next one written after the
    window says how many were held back. Lines below warning always pass.

    >>> clock = iter([0.0, 1.0, 2.0, 70.0]).__next__
    >>> f = RepeatFilter(60.0, clock)
    >>> lines = [logging.makeLogRecord({"msg": f"Connect to 127.0.0.1:{p} failed",
    ...                                 "levelno": logging.ERROR}) for p in (1, 2, 3, 4)]
    >>> [f.filter(line) for line in lines]
    [True, False, False, True]
    >>> lines[-1].getMessage()
    'Connect to 127.0.0.1:4 failed (2 like it held back in the last 60 s)'
    """

    def __init__(self, window_s: float = REPEAT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic, max_kinds: int = 10_000) -> None:
        super().__init__()
        self.window_s, self.clock, self.max_kinds = window_s, clock, max_kinds
        self._kinds: dict[tuple[str, int, str], list[float]] = {}  # kind -> [written at, held]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        text = _NUMBERS.sub("#", record.getMessage()).replace(_LIBRDKAFKA_COUNT, "")
        kind = (record.name, record.levelno, text)
        now, seen = self.clock(), self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            return False
        if seen is None and len(self._kinds) >= self.max_kinds:
            self._kinds.clear()  # a flood of distinct lines must not grow memory without bound
        if seen is not None and seen[1]:
            record.msg = f"{record.getMessage()} ({seen[1]:.0f} like it held back in the " \
                         f"last {self.window_s:.0f} s)"
            record.args = None
        self._kinds[kind] = [now, 0]
        return True


def client_logging(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` for a confluent-kafka client, its log sent through Python logging.

    librdkafka otherwise writes straight to stderr, a line per reconnect attempt, outside
    the JSON log format and outside any rate limit. The client hands its lines to the
    logger when it is polled (``poll``, ``consume``, ``flush``).

    >>> client_logging({"bootstrap.servers": "b:9092"})["logger"].name
    'librdkafka'
    """
    return {**config, "logger": logging.getLogger(LIBRDKAFKA_LOGGER)}


def configure_logging(level: str = "info", log_format: str = "text") -> None:
    """Configure the root logger once for the whole process."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Faust, mode and aiokafka log every service step and rebalance phase at info level;
    # pushflow logs one line per lifecycle event of its own instead.
    for noisy in ("aiokafka", "faust", "mode", "faust.transport", "faust.tables.recovery"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
