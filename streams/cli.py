"""The ``pushflow`` command: worker, demo, simulate, topics, replay, evaluate.

Every setting comes from ``PUSHFLOW_*`` environment variables; the flags below override them.
With no broker configured, ``worker`` and ``demo`` start an embedded Kafka-protocol broker.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from streams.errors import PushflowError
from streams.flags import setting_flags
from streams.logs import configure_logging
from streams.settings import Settings

log = logging.getLogger("pushflow")

_SETTING_FLAGS: list[tuple[str, type, str]] = [
    ("broker", str, "Kafka bootstrap URL, kafka://host:port[,host:port]; none = embedded"),
    ("app_id", str, "Application id = consumer group"),
    ("partitions", int, "Partitions of every co-partitioned topic"),
    ("threshold", float, "Send when p_open - disable_weight * p_disable reaches this"),
    ("attribution_window_s", int, "Seconds (event time) a push waits for its outcome"),
    ("web_host", str, "Address of /metrics, /healthz, /readyz"),
    ("web_port", int, "Port of /metrics, /healthz, /readyz"),
    ("data_dir", str, "Directory for local state"),
    ("log_format", str, "text or json"),
    ("log_level", str, "debug, info, warning, error"),
]


setting_options = setting_flags(_SETTING_FLAGS)


def build_settings(**flags: Any) -> Settings:
    names = {name for name, _, _ in _SETTING_FLAGS}
    settings = Settings.from_env(os.environ, **{k: v for k, v in flags.items() if k in names})
    configure_logging(settings.log_level, settings.log_format)
    warning = settings.transport_warning()
    if warning:
        log.warning(warning)
    return settings


@click.group()
@click.version_option(package_name="pushflow")
def main() -> None:
    """pushflow: decide push notifications in real time and learn from their outcomes."""


@main.command()
@setting_options
def worker(**flags: Any) -> None:
    """Run a worker (any number of them form one consumer group)."""
    from streams.runner import run_worker

    _run(lambda: run_worker(build_settings(**flags)))


@main.command()
@setting_options
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--users", type=int, default=2000, show_default=True, help="Simulated users.")
@click.option("--speed", type=float, default=120.0, show_default=True,
              help="Simulated seconds per real second.")
@click.option("--seed", type=int, default=7, show_default=True, help="Simulation seed.")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the final figures here as JSON.")
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
@setting_options
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--users", type=int, envvar="PUSHFLOW_SIM_USERS", default=2000, show_default=True)
@click.option("--speed", type=float, envvar="PUSHFLOW_SIM_SPEED", default=60.0, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
def simulate(duration: float | None, users: int, speed: float, seed: int, **flags: Any) -> None:
    """Simulated users against a running deployment (traffic source and feedback)."""
    from streams.traffic import run_simulation

    settings = build_settings(**flags)
    _run(lambda: run_simulation(settings, users=users, speed=speed, seed=seed, duration=duration))


@main.group()
def topics() -> None:
    """Topic administration."""


@topics.command("create")
@setting_options
@click.option("--timeout", type=float, default=60.0, show_default=True)
def topics_create(timeout: float, **flags: Any) -> None:
    """Create every topic pushflow uses (idempotent) and exit."""
    from streams.admin import ensure_topics
    from streams.topics import topic_specs

    settings = build_settings(**flags)
    _require_broker(settings)
    specs = topic_specs(settings)
    _run(lambda: ensure_topics(settings.bootstrap_servers, specs,
                               client_config=settings.confluent_config(), timeout=timeout))
    log.info("topics ready: %s", ", ".join(sorted(specs)))


def _register_offline_commands() -> None:
    """Commands that need no broker: replay, convert, evaluate."""
    from streams.evaluate import evaluate_command
    from streams.obd import convert_command
    from streams.replay import replay_command

    main.add_command(replay_command, "replay")
    main.add_command(convert_command, "convert")
    main.add_command(evaluate_command, "evaluate")


_register_offline_commands()


def _require_broker(settings: Settings) -> None:
    if settings.broker is None:
        raise click.UsageError("set --broker or PUSHFLOW_BROKER")


def _run(action: Callable[[], Any]) -> None:
    try:
        action()
    except PushflowError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
