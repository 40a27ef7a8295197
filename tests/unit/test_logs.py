"""Log lines: one JSON object per line for shippers, levels set once, no secrets.

``configure_logging`` changes process-wide state (the root logger), so every test here runs
inside ``saved_logging``, which puts the root handlers and all logger levels back.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest

from streams.admin import BrokerUnavailableError, wait_for_broker
from streams.errors import ConfigError
from streams.logs import JsonFormatter, RepeatFilter, configure_logging
from streams.settings import Settings

PASSWORD = "s3cr3t-Pa55word-do-not-log"
CHATTY = ("aiokafka", "faust.transport", "faust.tables.recovery")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
          "warning": logging.WARNING, "error": logging.ERROR}


@pytest.fixture(autouse=True)
def saved_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in (*CHATTY, "pushflow")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def record(message: str, *args: object, level: int = logging.INFO, exc_info: object = None,
           name: str = "pushflow") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, args, exc_info)  # type: ignore[arg-type]


def json_lines(text: str) -> list[dict[str, object]]:
    """Split as a log shipper does: on \\n only (str.splitlines also splits on U+2028)."""
    body = text.removesuffix("\n")
    lines = [orjson.loads(line) for line in body.split("\n")] if body else []
    assert all(isinstance(line, dict) for line in lines)
    return lines


# ----------------------------------------------------------------------------- JsonFormatter


def test_a_json_line_has_ts_level_logger_and_message() -> None:
    entry = record("partitions assigned: %d", 4, level=logging.WARNING, name="streams.app")
    text = JsonFormatter().format(entry)
    (line,) = json_lines(text)
    assert set(line) == {"ts", "level", "logger", "message"}
    assert (line["level"], line["logger"], line["message"]) == (
        "warning", "streams.app", "partitions assigned: 4")
    ts = datetime.fromisoformat(str(line["ts"]))
    assert ts.tzinfo is not None and ts.utcoffset() == UTC.utcoffset(None)
    assert abs(ts.timestamp() - entry.created) < 0.001


def test_an_exception_stays_inside_one_line() -> None:
    try:
        raise ValueError('bad "input"\non two lines')
    except ValueError:
        entry = record("processing failed for %s", "user-events[3]@17", exc_info=sys.exc_info())
    text = JsonFormatter().format(entry)
    assert "\n" not in text
    (line,) = json_lines(text)
    assert line["message"] == "processing failed for user-events[3]@17"
    assert str(line["exc"]).startswith("Traceback (most recent call last):")
    assert 'ValueError: bad "input"\non two lines' in str(line["exc"])


def test_any_message_text_gives_valid_json() -> None:
    odd = 'quote " backslash \\ tab \t nul \x00 emoji \U0001f4e3 é \u2028 end'
    raw = b"\xff\xfe"
    (line,) = json_lines(JsonFormatter().format(record("%s|%r", odd, raw)))
    assert line["message"] == f"{odd}|{raw!r}"


def test_a_lone_surrogate_does_not_lose_the_line() -> None:
    (line,) = json_lines(JsonFormatter().format(record("key %s", "user-\udcff")))
    assert str(line["message"]).startswith("key user-")


def test_structured_fields_reach_the_json_line() -> None:
    logger = logging.getLogger("pushflow")
    entry = logger.makeRecord("pushflow", logging.INFO, __file__, 1, "partitions assigned",
                              (), None, extra={"event": "assigned", "partitions": [0, 3]})
    (line,) = json_lines(JsonFormatter().format(entry))
    assert line["event"] == "assigned" and line["partitions"] == [0, 3]


# ------------------------------------------------------------------------- configure_logging


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_configure_logging_sets_the_root_level_and_quiets_the_chatty(name: str) -> None:
    configure_logging(name, "text")
    assert logging.getLogger().level == LEVELS[name]
    for chatty in CHATTY:
        level = logging.getLogger(chatty).level
        assert level >= logging.WARNING and level >= LEVELS[name], chatty


def test_configure_logging_twice_keeps_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    configure_logging("info", "json")
    logging.getLogger("pushflow").info("once")
    assert [line["message"] for line in json_lines(capsys.readouterr().err)] == ["once"]


def test_json_logging_writes_json_lines_to_stderr_at_the_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    log = logging.getLogger("pushflow")
    log.debug("per-message detail")
    log.info("worker %s ready", "w1")
    logging.getLogger("aiokafka.consumer").info("heartbeat")  # quieted below warning
    logging.getLogger("aiokafka.consumer").warning("coordinator dead")
    try:
        1 / 0  # noqa: B018 - an exception to log
    except ZeroDivisionError:
        log.exception("tick failed")
    out = capsys.readouterr()
    assert out.out == ""
    lines = json_lines(out.err)
    assert [(line["level"], line["message"]) for line in lines] == [
        ("info", "worker w1 ready"), ("warning", "coordinator dead"), ("error", "tick failed")]
    assert "ZeroDivisionError" in str(lines[-1]["exc"])


def test_text_logging_is_one_readable_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", "text")
    logging.getLogger("pushflow").info("hidden")
    logging.getLogger("pushflow").warning("dead letter %s", "invalid_json")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("WARNING pushflow: dead letter invalid_json")


def test_an_unknown_log_level_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({"PUSHFLOW_LOG_LEVEL": "verbose"})


# -------------------------------------------------------------------------------- secrets


def test_settings_logged_in_any_form_never_show_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings.from_env({"PUSHFLOW_SECURITY_PROTOCOL": "SASL_SSL",
                                  "PUSHFLOW_SASL_USERNAME": "svc",
                                  "PUSHFLOW_SASL_PASSWORD": PASSWORD})
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    configure_logging("debug", "json")
    log = logging.getLogger("pushflow")
    log.info("settings %s", settings)
    log.info("settings %r", settings)
    log.debug("password %s", settings.sasl_password)
    try:
        raise RuntimeError(f"cannot connect with {settings!r}")
    except RuntimeError:
        log.exception("start-up failed")
    text = capsys.readouterr().err
    assert len(json_lines(text)) == 4
    assert PASSWORD not in text
    assert "Secret('**********')" in text


# --- repeated lines ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_repeated_warning_is_written_once_per_window_with_the_count_held_back() -> None:
    clock = Clock()
    repeats = RepeatFilter(window_s=60.0, clock=clock)
    through = []
    for n in range(500):  # a reconnect every 50 ms for 25 s, each to a new port
        clock.now = n * 0.05
        line = record("Connect to ipv4#127.0.0.1:%d failed", 40000 + n, level=logging.ERROR,
                      name="librdkafka")
        if repeats.filter(line):
            through.append(line.getMessage())
    clock.now = 61.0
    late = record("Connect to ipv4#127.0.0.1:%d failed", 1, level=logging.ERROR,
                  name="librdkafka")
    assert repeats.filter(late)
    assert through == ["Connect to ipv4#127.0.0.1:40000 failed"]
    assert late.getMessage() == ("Connect to ipv4#127.0.0.1:1 failed "
                                 "(499 like it held back in the last 60 s)")


def test_different_lines_and_lines_below_warning_are_not_held_back() -> None:
    repeats = RepeatFilter(window_s=60.0, clock=Clock())
    lines = [record("broker down", level=logging.WARNING),
             record("broker down", level=logging.ERROR),
             record("broker down", level=logging.WARNING, name="aiokafka"),
             record("topic %s missing", "a", level=logging.WARNING),
             *(record("step %d", n) for n in range(5))]
    assert all(repeats.filter(line) for line in lines)
    assert not repeats.filter(record("broker down", level=logging.WARNING))


def test_librdkafka_speaks_through_python_logging_as_json_rate_limited(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A real client against a port where nothing listens: its reconnect lines, every
    ~50 ms for a second, become one JSON line of the ``librdkafka`` logger."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configure_logging("info", "json")
    with pytest.raises(BrokerUnavailableError):
        wait_for_broker(f"127.0.0.1:{port}", timeout=1.0)
    err = capfd.readouterr().err  # file descriptor 2: librdkafka's own stderr lines too
    lines = json_lines(err)
    assert [line["logger"] for line in lines] == ["librdkafka"], err
    assert "Connection refused" in str(lines[0]["message"]) and lines[0]["level"] == "error"


def test_configured_logging_holds_back_a_flood_from_any_logger(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """aiokafka logs through Python logging already; a dead broker makes it repeat itself."""
    configure_logging("info", "json")
    chatty = logging.getLogger("aiokafka")
    for n in range(200):
        chatty.error("Unable connect to node with id %d: [Errno 111] Connect call failed", n)
    logging.getLogger("pushflow").info("worker ready")
    lines = json_lines(capsys.readouterr().err)
    assert [line["logger"] for line in lines] == ["aiokafka", "pushflow"]
