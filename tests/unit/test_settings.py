"""Settings: environment and flags, validation, secrets, and the reference stays complete."""

from __future__ import annotations

import gc
from dataclasses import fields
from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.runner import tune_gc
from streams.settings import Secret, Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = DOC.read_text()
    missing = [f.name for f in fields(Settings) if f"| `{f.name}` |" not in text]
    assert missing == []


def test_environment_then_flags() -> None:
    env = {"PUSHFLOW_THRESHOLD": "0.3", "PUSHFLOW_WEB_PORT": "7000", "PUSHFLOW_BROKER": "kafka://a:1"}
    settings = Settings.from_env(env, threshold=0.5)
    assert (settings.threshold, settings.web_port, settings.bootstrap_servers) == (0.5, 7000, "a:1")


@pytest.mark.parametrize(
    "env",
    [{"PUSHFLOW_THRESHOLD": "1.5"}, {"PUSHFLOW_PARTITIONS": "zero"},
     {"PUSHFLOW_BROKER": "localhost:9092"}, {"PUSHFLOW_LOG_FORMAT": "xml"}],
)
def test_bad_values_are_config_errors(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_secrets_stay_secret_but_reach_the_client_config() -> None:
    settings = Settings.from_env({
        "PUSHFLOW_BROKER": "kafka://b:9093", "PUSHFLOW_SECURITY_PROTOCOL": "SASL_SSL",
        "PUSHFLOW_SASL_USERNAME": "svc", "PUSHFLOW_SASL_PASSWORD": "s3cr3t-value",
    })
    assert "s3cr3t-value" not in repr(settings) and "s3cr3t-value" not in str(settings)
    assert isinstance(settings.sasl_password, Secret)
    assert settings.confluent_config()["sasl.password"] == "s3cr3t-value"


def test_topic_prefix_applies_to_every_topic() -> None:
    settings = Settings(topic_prefix="staging-")
    assert settings.topic("intents_topic") == "staging-notification-intents"


def test_the_worker_collects_garbage_less_often_unless_told_not_to() -> None:
    before = gc.get_threshold()
    try:
        tune_gc(Settings().gc_threshold)
        assert gc.get_threshold() == (50_000, 20, 20)
        gc.set_threshold(*before)
        tune_gc(Settings(gc_threshold=0).gc_threshold)
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)
    with pytest.raises(ConfigError):
        Settings(gc_threshold=-1)
