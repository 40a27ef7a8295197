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

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure_logging(level: str = "info", log_format: str = "text") -> None:
    """Configure the root logger once for the whole process."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Faust and aiokafka are chatty at info level about every rebalance step.
    for noisy in ("aiokafka", "faust.transport", "faust.tables.recovery"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
