"""Every Prometheus metric of a worker, created against an injected registry.

No user ids or other unbounded values are used as labels. The catalogue is docs/metrics.md.

>>> from prometheus_client import CollectorRegistry
>>> registry = CollectorRegistry()
>>> m = Metrics(registry)
>>> m.decisions.labels(action="send", reason="above_threshold").inc()
>>> registry.get_sample_value(
...     "pushflow_decisions_total", {"action": "send", "reason": "above_threshold"})
1.0
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

P_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)
# SnapshotError.reason values, plus a bug met on bad data and the Kafka client failing
SNAPSHOT_REFUSALS = ("invalid", "incompatible", "too_large", "unsigned", "bad_signature",
                     "unexpected", "follower_error")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600)


class Metrics:
    """One typed bundle of the worker's metrics (the shape of Faust's Prometheus sensor)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.input_messages = Counter(
            "pushflow_input_messages", "Input messages by topic and outcome.",
            ["topic", "outcome"], registry=registry,
        )
        self.ignored = Counter(
            "pushflow_ignored_messages", "Valid inputs that changed nothing, by reason.",
            ["topic", "reason"], registry=registry,
        )
        self.dead_letters = Counter(
            "pushflow_dead_letters", "Messages sent to the dead-letter topic.",
            ["topic", "error_code"], registry=registry,
        )
        self.decisions = Counter(
            "pushflow_decisions", "Decisions by action and reason.",
            ["action", "reason"], registry=registry,
        )
        self.intents = Counter(
            "pushflow_intents_emitted", "Notification intents emitted.",
            ["explore"], registry=registry,
        )
        self.p_open = Histogram(
            "pushflow_p_open", "Predicted open probability of scored candidates.",
            buckets=P_BUCKETS, registry=registry,
        )
        self.decision_latency = Histogram(
            "pushflow_decision_latency_seconds",
            "Candidate to decision: event time (clock=event) and wall time (clock=processing).",
            ["clock"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.labeled = Counter(
            "pushflow_labeled_examples", "Resolved labels by outcome.",
            ["outcome"], registry=registry,
        )
        self.learned = Counter(
            "pushflow_model_examples_learned", "Labeled examples the model learned from.",
            registry=registry,
        )
        self.model_version = Gauge(
            "pushflow_model_version", "Version of the model used for scoring.", registry=registry
        )
        self.rolling_auc = Gauge(
            "pushflow_model_rolling_auc", "Prequential ROC AUC over the last labeled examples.",
            registry=registry,
        )
        self.log_loss = Gauge(
            "pushflow_model_log_loss", "Prequential log loss over the last labeled examples.",
            registry=registry,
        )
        self.calibration_error = Gauge(
            "pushflow_model_calibration_error",
            "Expected calibration error over the last labeled examples.", registry=registry,
        )
        self.base_rate = Gauge(
            "pushflow_model_base_rate", "Open rate over the last labeled examples.",
            registry=registry,
        )
        # Champion and challengers, each scored on every label just before learning it
        # (streams.challengers); only the worker that trains exports them.
        compare = ["model", "role"]
        self.compare_auc = Gauge(
            "pushflow_model_compare_auc", "Rolling ROC AUC of each model on the same labels, "
            "scored when the label arrived, before learning it.", compare, registry=registry,
        )
        self.compare_log_loss = Gauge(
            "pushflow_model_compare_log_loss", "Rolling log loss of each model on the same "
            "labels.", compare, registry=registry,
        )
        self.compare_calibration_error = Gauge(
            "pushflow_model_compare_calibration_error", "Expected calibration error of each "
            "model on the same labels.", compare, registry=registry,
        )
        self.compare_labels = Gauge(
            "pushflow_model_compare_labels", "Labels each model was scored on since it "
            "started learning here.", compare, registry=registry,
        )
        self.snapshots_refused = Counter(
            "pushflow_model_snapshots_refused",
            "Records of the snapshot topic that were not served, by reason.",
            ["reason"], registry=registry,
        )
        self.snapshots_ok = Gauge(
            "pushflow_model_snapshots_ok",
            "1 while the snapshot follower runs and the newest record it read was valid.",
            registry=registry,
        )
        self.snapshot_publish_failures = Counter(
            "pushflow_model_snapshot_publish_failures",
            "Snapshots the trainer could not publish (it keeps learning and tries again).",
            registry=registry,
        )
        self.snapshot_bytes = Gauge(
            "pushflow_model_snapshot_bytes", "Size of the newest snapshot the trainer published.",
            registry=registry,
        )
        self.snapshot_age = Gauge(
            "pushflow_model_snapshot_age_seconds", "Seconds since the model in use was published.",
            registry=registry,
        )
        self.outbox_size = Gauge(
            "pushflow_outbox_size", "Pushes held for a later send time.", registry=registry
        )
        self.pending_labels = Gauge(
            "pushflow_pending_labels", "Sent pushes waiting for their outcome.", registry=registry
        )
        self.item_feedback = Counter(
            "pushflow_item_feedback",
            "Sends, opens and dismissals counted into the statistics of the items this worker "
            "owns.", ["outcome"], registry=registry,
        )
        self.item_stats_items = Gauge(
            "pushflow_item_stats_items",
            "Content and creators whose statistics this worker holds (read from item-stats).",
            registry=registry,
        )
        self.item_stats_refused = Counter(
            "pushflow_item_stats_refused",
            "Records of the item-stats topic that were not taken, by reason.",
            ["reason"], registry=registry,
        )
        self.table_keys = Gauge(
            "pushflow_table_keys", "Keys in local state tables.", ["table"], registry=registry
        )
        self.consumer_lag = Gauge(
            "pushflow_consumer_lag", "Messages behind the high watermark.",
            ["topic", "partition"], registry=registry,
        )
        self.ready = Gauge(
            "pushflow_ready",
            "1 when partitions are assigned, recovery is done and snapshots are followed.",
            registry=registry,
        )
        self.expired_users = Counter(
            "pushflow_expired_users", "Inactive users whose state was deleted (user_ttl_s).",
            registry=registry,
        )
        self.producer_errors = Counter(
            "pushflow_producer_errors", "Failed sends to output topics.", registry=registry
        )
        self.reemitted = Counter(
            "pushflow_reemitted_outputs",
            "Outputs emitted again, byte for byte, for inputs re-read after a crash.",
            registry=registry,
        )
        self.outdated_states = Counter(
            "pushflow_outdated_state_records",
            "Changelog records older than the state this worker holds, not restored over it "
            "(the broker lost acknowledged writes); the state is written again.",
            registry=registry,
        )
        self.learned_duplicates = Counter(
            "pushflow_model_duplicate_examples",
            "Re-emitted training examples the trainer skipped (already learned).",
            registry=registry,
        )
        self.rebalances = Counter(
            "pushflow_rebalances", "Consumer-group rebalances this worker went through.",
            registry=registry,
        )
        self.input_batch = Histogram(
            "pushflow_input_batch_records",
            "Input records the consumer handed over at once (one fetch; batched ingestion).",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500), registry=registry,
        )
        self.rebalance_seconds = Histogram(
            "pushflow_rebalance_duration_seconds", "Time from rebalance start to end.",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=registry,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._start_known_labels()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once per label set (the hot path's way)."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def _start_known_labels(self) -> None:
        """Closed label sets start at zero, so ratios read 0 instead of 'no data'."""
        for explore in ("true", "false"):
            self.intents.labels(explore=explore)
        for clock in ("event", "processing"):
            self.decision_latency.labels(clock=clock)
        for reason in SNAPSHOT_REFUSALS:
            self.snapshots_refused.labels(reason=reason)
        for outcome in ("send", "open", "dismiss"):
            self.item_feedback.labels(outcome=outcome)
        for reason in ("bad_key", "bad_record", "follower_error"):
            self.item_stats_refused.labels(reason=reason)
