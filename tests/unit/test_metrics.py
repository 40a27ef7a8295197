"""The metric bundle: one per injected registry, closed label sets, nothing secret exported.

docs/metrics.md against the registry (names, types, labels, buckets) is checked by
tests/unit/test_deploy.py; the label values a running worker produces are checked against
their closed sets by tests/integration/test_prometheus.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from streams.metrics import Metrics
from streams.settings import Settings

PASSWORD = "s3cr3t-Pa55word-do-not-log"
SEND = {"action": "send", "reason": "above_threshold"}

# Every label a worker metric may carry, and the closed set its values come from. A new label
# must be added here with its bound; a label naming an entity (user, candidate, content) has
# none and does not belong on a metric.
BOUNDED_LABELS = {
    "topic": "the input topic names of Settings",
    "partition": "0 .. Settings.partitions - 1",
    "outcome": "input outcomes and training-example outcomes (message schemas)",
    "reason": "decision and ignore reasons: constants of the pure core",
    "error_code": "ContractError.code values (dead-letter schema)",
    "action": "send, hold, suppress",
    "explore": "true, false",
    "clock": "event, processing",
    "table": "the worker's table names",
    "model": "the configured model specs (PUSHFLOW_MODEL and PUSHFLOW_CHALLENGERS)",
    "role": "champion, challenger",
}


def collectors(bundle: Metrics) -> list[MetricWrapperBase]:
    return [c for c in vars(bundle).values() if isinstance(c, MetricWrapperBase)]


def test_two_bundles_on_two_registries_are_independent() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    a, b = Metrics(first), Metrics(second)
    a.decisions.labels(**SEND).inc()
    b.decisions.labels(**SEND).inc(3)
    assert first.get_sample_value("pushflow_decisions_total", SEND) == 1.0
    assert second.get_sample_value("pushflow_decisions_total", SEND) == 3.0


def test_a_registry_holds_one_bundle() -> None:
    """Registration really happens on the injected registry (a second bundle clashes)."""
    registry = CollectorRegistry()
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry)


def test_nothing_is_registered_on_the_global_registry() -> None:
    import streams.app  # noqa: F401 - importing the Faust layer must register nothing

    Metrics(CollectorRegistry())
    assert not [m.name for m in REGISTRY.collect() if m.name.startswith("pushflow")]


def test_every_label_has_a_closed_value_set() -> None:
    for collector in collectors(Metrics(CollectorRegistry())):
        (family,) = collector.describe()
        unbounded = set(collector._labelnames) - set(BOUNDED_LABELS)
        assert not unbounded, f"{family.name}: labels {sorted(unbounded)} have no known bound"


def test_histograms_are_labelled_only_by_a_small_set() -> None:
    """Each histogram series costs ~15 bucket series: at most one small label."""
    for collector in collectors(Metrics(CollectorRegistry())):
        if collector._type == "histogram":
            assert set(collector._labelnames) <= {"clock"}, collector._name


def test_known_label_values_start_at_zero() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for explore in ("true", "false"):
        assert registry.get_sample_value(
            "pushflow_intents_emitted_total", {"explore": explore}) == 0.0
    for clock in ("event", "processing"):
        assert registry.get_sample_value(
            "pushflow_decision_latency_seconds_count", {"clock": clock}) == 0.0


def worker_settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {"PUSHFLOW_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "PUSHFLOW_SASL_MECHANISM": "PLAIN",
         "PUSHFLOW_SASL_USERNAME": "svc", "PUSHFLOW_SASL_PASSWORD": PASSWORD},
        broker="kafka://127.0.0.1:9092", data_dir=str(tmp_path),
    )


def test_the_exposition_never_shows_the_password(tmp_path: Path) -> None:
    from streams.app import PushflowWorker

    worker = PushflowWorker(worker_settings(tmp_path), registry=CollectorRegistry())
    worker.metrics.decisions.labels(**SEND).inc()
    body = generate_latest(worker.registry).decode()
    assert "pushflow_decisions_total" in body
    assert PASSWORD not in body and "sasl" not in body.lower()


def test_the_worker_registry_has_process_metrics(tmp_path: Path) -> None:
    from streams.app import PushflowWorker

    registry = CollectorRegistry()
    PushflowWorker(worker_settings(tmp_path), registry=registry)
    names = {family.name for family in registry.collect()}
    assert {"process_resident_memory_bytes", "process_start_time_seconds", "python_info"} <= names
