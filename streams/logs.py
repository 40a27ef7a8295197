"""Logging: readable text by default, JSON lines for log shippers (``log_format=json``).

One line per lifecycle event at info level; per-message detail only at debug. Secrets never
reach a log line: Settings renders them as ``Secret('**********')``.

>>> import logging, orjson
>>> record = logging.LogRecord("pushflow", logging.INFO, "x", 1, "ready on %d", (6066,), None)
>>> line = orjson.loads(JsonFormatter().format(record))
>>> line["level"], line["logger"], line["message"]
('info', 'pushflow', 'ready on 6066')
"""

from __future__ import annotations

import logging
import sys
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


def configure_logging(level: str = "info", log_format: str = "text") -> None:
    """Configure the root logger once for the whole process."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Faust, mode and aiokafka log every service step and rebalance phase at info level;
    # pushflow logs one line per lifecycle event of its own instead.
    for noisy in ("aiokafka", "faust", "mode", "faust.transport", "faust.tables.recovery"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
