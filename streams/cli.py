"""The ``pushflow`` command: worker, demo, simulate, topics, replay(-figures), convert,
evaluate.

Every setting comes from ``PUSHFLOW_*`` environment variables; the flags below override them
(``--help`` names each flag's variable). With no broker configured, ``worker`` and ``demo``
start an embedded Kafka-protocol broker.

Exit codes: 0 done, 1 the work failed (e.g. the broker cannot be reached), 2 the command line
or a setting is wrong, 130 interrupted. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from streams.errors import ConfigError, PushflowError
from streams.flags import Flag, setting_flags
from streams.logs import configure_logging
from streams.settings import Settings

log = logging.getLogger("pushflow")

_BROKER = "Kafka bootstrap URL, kafka://host:port[,host:port]"
_FLAGS: dict[str, Flag] = {
    "broker": ("broker", str, _BROKER + "; none = start an embedded broker"),
    "app_id": ("app_id", str, "Application id = consumer group"),
    "partitions": ("partitions", int, "Partitions of every co-partitioned topic"),
    "threshold": ("threshold", float,
                  "Send when p_open - disable_weight * p_disable reaches this"),
    "attribution_window_s": ("attribution_window_s", int,
                             "Seconds (event time) a push waits for its outcome"),
    "web_host": ("web_host", str, "Address of /metrics, /healthz, /readyz"),
    "web_port": ("web_port", int, "Port of /metrics, /healthz, /readyz"),
    "data_dir": ("data_dir", str, "Directory for local state"),
    "startup_timeout_s": ("startup_timeout_s", float,
                          "Seconds to wait for the broker at start before failing"),
    "log_format": ("log_format", str, "text or json"),
    "log_level": ("log_level", str, "debug, info, warning, error"),
}
_REQUIRED_BROKER: Flag = ("broker", str, _BROKER + " (required)")


def _flags(*names: str, broker: Flag | None = None) -> list[Flag]:
    return ([broker] if broker else []) + [_FLAGS[name] for name in names]


_WORKER_FLAGS = _flags(*_FLAGS)
_DEMO_FLAGS = _flags("broker", "startup_timeout_s", "web_port", "log_format", "log_level")
_SIMULATE_FLAGS = _flags("startup_timeout_s", "log_format", "log_level", broker=_REQUIRED_BROKER)
_TOPICS_FLAGS = _flags("partitions", "log_format", "log_level", broker=_REQUIRED_BROKER)
_POSITIVE = click.FloatRange(min=0.0, min_open=True)


def build_settings(**flags: Any) -> Settings:
    """Settings from the environment and the flags given; a wrong one is a usage error."""
    names = {name for name, _, _ in _WORKER_FLAGS}
    try:
        settings = Settings.from_env(os.environ, **{k: v for k, v in flags.items() if k in names})
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    configure_logging(settings.log_level, settings.log_format)
    warning = settings.transport_warning()
    if warning:
        log.warning(warning)
    return settings


class OneLineErrors(click.Group):
    """A group whose usage errors are one line with a pointer to ``--help``.

    click's default prints the usage block, a hint and a blank line before the error; a
    wrong flag under ``docker compose`` then fills the log with four lines for one fact.
    """

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None,
        complete_var: str | None = None, standalone_mode: bool = True, **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "pushflow"
            click.echo(f"{where}: {exc.format_message()} (see {where} --help)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=OneLineErrors)
@click.version_option(package_name="pushflow")
def main() -> None:
    """pushflow: decide push notifications in real time and learn from their outcomes."""


@main.command()
@setting_flags(_WORKER_FLAGS)
def worker(**flags: Any) -> None:
    """Run a worker (any number of them form one consumer group)."""
    from streams.runner import run_worker

    settings = build_settings(**flags)
    _run(lambda: run_worker(settings))


@main.command()
@setting_flags(_DEMO_FLAGS)
@click.option("--duration", type=_POSITIVE, default=None, help="Stop after this many seconds.")
@click.option("--users", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Simulated users.")
@click.option("--speed", type=_POSITIVE, default=120.0, show_default=True,
              help="Simulated seconds per real second.")
@click.option("--seed", type=int, default=7, show_default=True, help="Simulation seed.")
@click.option("--summary-json", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              default=None, help="Write the final figures here as JSON.")
@click.option("--broker-kind", type=click.Choice(["tansu", "noida"]), default=None,
              help="Which embedded broker to start when no broker is given.")
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write an HTML report with plots here (needs the 'report' extra).")
@click.option("--worker-log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The worker's log file (default: a new file in the temporary directory).")
@click.option("--live/--plain", default=None,
              help="Live dashboard or plain lines (default: live on a terminal).")
def demo(duration: float | None, users: int, speed: float, seed: int,
         summary_json: Path | None, broker_kind: str | None, html: Path | None,
         worker_log: Path | None, live: bool | None, **flags: Any) -> None:
    """Embedded broker + worker + simulated users, with a live dashboard."""
    from streams.demo import DemoOptions, run_demo

    settings = build_settings(**flags)
    if html is not None:
        from streams.report import require_plotting

        require_plotting()
    # The worker serves its metrics where asked (flag or PUSHFLOW_WEB_PORT), else anywhere free.
    asked = flags.get("web_port") is not None or "PUSHFLOW_WEB_PORT" in os.environ
    options = DemoOptions(duration, users, speed, seed, summary_json, broker_kind,
                          settings.web_port if asked else None, worker_log, html, live)
    _run(lambda: run_demo(settings, options))


@main.command()
@setting_flags(_SIMULATE_FLAGS)
@click.option("--duration", type=_POSITIVE, default=None,
              help="Stop after this many seconds (default: run until stopped).")
@click.option("--users", type=click.IntRange(min=1), envvar="PUSHFLOW_SIM_USERS",
              show_envvar=True, default=2000, show_default=True, help="Simulated users.")
@click.option("--speed", type=_POSITIVE, envvar="PUSHFLOW_SIM_SPEED", show_envvar=True,
              default=60.0, show_default=True, help="Simulated seconds per real second.")
@click.option("--seed", type=int, default=7, show_default=True, help="Simulation seed.")
def simulate(duration: float | None, users: int, speed: float, seed: int, **flags: Any) -> None:
    """Simulated users against a running deployment (traffic source and feedback).

    Exits 1 when the broker does not answer within the start-up timeout or records cannot
    be delivered.
    """
    from streams.traffic import run_simulation

    settings = build_settings(**flags)
    _require_broker(settings)
    _run(lambda: run_simulation(settings, users=users, speed=speed, seed=seed, duration=duration))


@main.group()
def topics() -> None:
    """Topic administration."""


@topics.command("create")
@setting_flags(_TOPICS_FLAGS)
@click.option("--timeout", type=_POSITIVE, default=None, envvar="PUSHFLOW_STARTUP_TIMEOUT_S",
              show_envvar=True,
              help="Seconds to wait for the broker (default: startup_timeout_s, 60)")
def topics_create(timeout: float | None, **flags: Any) -> None:
    """Create every topic pushflow uses (idempotent) and exit."""
    from streams.admin import ensure_topics
    from streams.topics import topic_specs

    settings = build_settings(**flags)
    _require_broker(settings)
    specs = topic_specs(settings)
    wait = settings.startup_timeout_s if timeout is None else timeout
    _run(lambda: ensure_topics(settings.bootstrap_servers, specs,
                               client_config=settings.confluent_config(), timeout=wait))
    log.info("topics ready: %s", ", ".join(sorted(specs)))


def _register_offline_commands() -> None:
    """Commands that need no broker: replay, replay-figures, convert, evaluate."""
    from streams.docfigures import replay_figures_command
    from streams.evaluate import evaluate_command
    from streams.obd import convert_command
    from streams.replay import replay_command

    main.add_command(replay_command, "replay")
    main.add_command(replay_figures_command, "replay-figures")
    main.add_command(convert_command, "convert")
    main.add_command(evaluate_command, "evaluate")


_register_offline_commands()


def _require_broker(settings: Settings) -> None:
    if settings.broker is None:
        raise click.UsageError("set --broker or PUSHFLOW_BROKER (kafka://host:port)")


def _run(action: Callable[[], Any]) -> None:
    """Run a command's work; a PushflowError becomes one log line and exit code 1."""
    from streams.admin import BrokerUnavailableError

    try:
        action()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except BrokerUnavailableError as exc:
        log.error("%s; check --broker / PUSHFLOW_BROKER and that the broker is up", exc)
        sys.exit(1)
    except PushflowError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

