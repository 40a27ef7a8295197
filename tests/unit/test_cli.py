"""The command line's surface: which options each command lists, their help, their variables,
and errors as one line (the failures themselves run as subprocesses in
tests/integration/test_cli.py)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from streams.cli import main
from streams.errors import ConfigError
from streams.evaluate import EvalOptions, evaluate
from streams.settings import Settings

WORKER_ONLY = {"--app-id", "--threshold", "--attribution-window-s", "--web-host", "--web-port",
               "--data-dir"}


def commands(group: click.Group = main, path: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(commands(command, f"{path}{name} "))
        else:
            found[path + name] = command
    return found


def options(command: click.Command) -> dict[str, click.Option]:
    return {p.opts[0]: p for p in command.params if isinstance(p, click.Option)}


def test_every_command_is_reachable() -> None:
    assert set(commands()) == {"worker", "demo", "simulate", "topics create", "replay",
                               "replay-figures", "convert obd", "evaluate"}


# Flags that set a Settings field of the same name (others share a name, not a meaning:
# replay's --snapshot-every, evaluate's --volume-target and --seed are the run's own).
SETTING_FLAGS = {
    "worker": {"--broker", "--app-id", "--partitions", "--threshold", "--attribution-window-s",
               "--web-host", "--web-port", "--data-dir", "--startup-timeout-s", "--log-format",
               "--log-level"},
    "simulate": {"--broker", "--startup-timeout-s", "--log-format", "--log-level"},
    "topics create": {"--broker", "--partitions", "--log-format", "--log-level"},
    "demo": {"--broker", "--startup-timeout-s", "--web-port", "--log-format", "--log-level"},
    "replay": {"--threshold", "--daily-cap", "--min-gap-s", "--quiet-start-hour",
               "--quiet-end-hour", "--holdout-share", "--explore-share", "--disable-weight",
               "--attribution-window-s", "--learning-rate", "--seed", "--tick-interval-s",
               "--model"},
    "evaluate": {"--threshold"},
    "convert obd": set(),
    "replay-figures": set(),
}


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_option_has_help_and_a_setting_shows_its_variable(name: str) -> None:
    listed = options(commands()[name])
    assert SETTING_FLAGS[name] <= set(listed), name
    for flag, option in listed.items():
        assert option.help, f"{name} {flag} has no help text"
        if flag in SETTING_FLAGS[name]:
            assert option.envvar == "PUSHFLOW_" + flag[2:].replace("-", "_").upper(), flag
        if option.envvar:
            assert option.show_envvar, f"{name} {flag} hides {option.envvar}"


@pytest.mark.parametrize("name", ["simulate", "topics create", "demo"])
def test_commands_list_no_worker_only_flags(name: str) -> None:
    honoured = {"--web-port"} if name == "demo" else set()  # the demo's worker serves on it
    assert not (WORKER_ONLY - honoured) & set(options(commands()[name])), name


@pytest.mark.parametrize("name", ["simulate", "topics create"])
def test_commands_that_need_a_broker_do_not_promise_an_embedded_one(name: str) -> None:
    broker = options(commands()[name])["--broker"]
    assert broker.help and "embedded" not in broker.help and "required" in broker.help


def test_a_usage_error_is_one_line_naming_the_command() -> None:
    result = CliRunner().invoke(main, ["evaluate", "--users", "-5"])
    assert result.exit_code == 2
    (line,) = result.output.strip().split("\n")
    assert "evaluate" in line and "--users" in line and "--help" in line


@pytest.mark.parametrize("url", ["localhost:9092", "kafka://", "kafka://host", "kafka://:9092",
                                 "kafka://host:0", "kafka://host:65536", "kafka://a:1,b"])
def test_a_broker_url_that_names_no_host_and_port_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="kafka://host:port"):
        Settings(broker=url)


def test_evaluate_reports_every_simulated_hour_of_every_policy() -> None:
    options = EvalOptions(users=20, days=1.0, warmup_days=0.5, jobs=1)
    hours: list[int] = []
    evaluate(options, ["send-everything"], hours.append)
    assert sum(hours) == 24


def test_evaluate_reports_progress_from_its_worker_processes() -> None:
    options = EvalOptions(users=20, days=0.5, warmup_days=0.25, jobs=2)
    hours: list[int] = []
    evaluate(options, ["send-everything", "fixed-threshold"], hours.append)
    assert sum(hours) == 2 * 12
