"""The Faust wiring: a worker built by a factory from one Settings object.

Agents are thin loops around the pure core: ``decide`` reads one user's state record, calls
:class:`~streams.pipeline.Decider`, writes the record back and sends what it produced;
``train`` learns from resolved labels and publishes model snapshots. A timer moves event time
forward per partition so labels expire and held pushes are released even for silent users.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from typing import Any

import faust
import orjson
from faust.serializers import codecs
from faust.types import EventT
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streams.config import decider_config, fresh_model
from streams.contracts import (
    ContractError,
    dead_letter,
    encode,
    parse_candidate,
    parse_user_event,
)
from streams.errors import ProcessingError
from streams.evaluation import Prequential
from streams.features import UserState, state_from_bytes, state_to_bytes
from streams.metrics import Metrics
from streams.model import PushModel
from streams.pipeline import Decider, StepOutput
from streams.settings import Settings
from streams.snapshots import ModelHolder

log = logging.getLogger(__name__)
STATE_CODEC = "pushflow-user-state"


class _StateCodec(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes:
        return state_to_bytes(obj)

    def _loads(self, s: bytes) -> Any:
        return state_from_bytes(s)


codecs.register(STATE_CODEC, _StateCodec())


class UserStateValue:
    """Faust value type of the user-state table: Faust reads the changelog codec from
    ``_options.serializer`` and hands the decoded value to ``from_data``."""

    class _options:  # noqa: N801 - the attribute name Faust looks up
        serializer = STATE_CODEC

    @classmethod
    def from_data(cls, data: Any, preferred_type: Any = None) -> Any:
        return data


def faust_credentials(settings: Settings) -> Any:
    """SASL / TLS settings passed through to aiokafka; None for PLAINTEXT."""
    protocol = settings.security_protocol.upper()
    ssl_context = None
    if "SSL" in protocol:
        ssl_context = ssl.create_default_context(cafile=settings.ssl_cafile)
    if "SASL" in protocol:
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get() if settings.sasl_password else None,
            mechanism=settings.sasl_mechanism,
            ssl_context=ssl_context,
        )
    return None if ssl_context is None else faust.SSLCredentials(ssl_context)


class _FaustSensor(faust.Sensor):
    """What Faust itself knows and pushflow exports: send errors and rebalances."""

    # A mode service logs its start/stop steps; file them with Faust's (quiet at info).
    logger = logging.getLogger("faust.sensors.pushflow")

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        self._metrics.producer_errors.inc()
        log.error("send failed: %s", exc)

    def on_rebalance_start(self, app: Any) -> dict[str, Any]:
        self._metrics.rebalances.inc()
        return {"started": time.monotonic()}

    def on_rebalance_end(self, app: Any, state: dict[str, Any]) -> None:
        self._metrics.rebalance_seconds.observe(time.monotonic() - state["started"])


class PushflowWorker:
    """One worker process: the Faust app, its topics, table, agents, metrics and model."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.models = ModelHolder(fresh_model(settings))
        self.trainer: PushModel | None = None
        self.training_offset = 0
        self.last_published = -1
        self.prequential = Prequential()
        self.decider = Decider(lambda: self.models.serving, decider_config(settings))
        # Event time per partition (newest input seen); derived, rebuilt from traffic.
        self.watermarks: dict[int, int] = {}
        self.due: dict[int, set[bytes]] = defaultdict(set)
        self.due_built = False
        # Next offset to process per input partition, for the consumer-lag gauge.
        self.positions: dict[tuple[str, int], int] = {}
        self.dead_letter_codes: Counter[str] = Counter()
        self.was_ready = False
        self.broker_ok = True
        self.app = self._build_app()
        self._wire()

    # --- construction ---------------------------------------------------------------------

    def _build_app(self) -> faust.App:
        s = self.settings
        brokers = [f"kafka://{h}" for h in s.bootstrap_servers.split(",")]
        return faust.App(
            s.app_id,
            broker=brokers,
            broker_credentials=faust_credentials(s),
            store="memory://",
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication,
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=max(0.5, s.session_timeout_s / 5),
            consumer_auto_offset_reset="earliest",
            web_enabled=True,
            web_port=s.web_port,
            web_bind=s.web_host,
            web_host=s.web_host,
            datadir=s.data_dir,
            autodiscover=False,
            producer_acks=-1,
            producer_max_request_size=max(1_048_576, 4 * s.max_message_bytes),
            processing_guarantee=s.processing_guarantee,
        )

    def _raw_topic(self, *names: str, partitions: int | None = None) -> faust.TopicT:
        return self.app.topic(
            *names,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=partitions,
        )

    def _wire(self) -> None:
        s = self.settings
        self.inputs = self._raw_topic(s.topic("user_events_topic"), s.topic("candidates_topic"))
        self.intents = self._raw_topic(s.topic("intents_topic"))
        self.decisions = self._raw_topic(s.topic("decisions_topic"))
        self.dead_letters = self._raw_topic(s.topic("dead_letters_topic"))
        self.training = self._raw_topic(s.topic("training_topic"), partitions=1)
        self.snapshots = self._raw_topic(s.topic("snapshots_topic"), partitions=1)
        self.table = self.app.Table(
            "user-state", partitions=s.partitions, key_type=bytes, value_type=UserStateValue
        )
        self.app.agent(self.inputs, name="pushflow.decide")(self._decide_agent)
        self.app.agent(self.training, name="pushflow.train")(self._train_agent)
        self.app.timer(s.tick_interval_s, name="pushflow.tick")(self._tick)
        self.app.timer(s.snapshot_interval_s, name="pushflow.snapshot")(self._snapshot_timer)
        self.app.timer(5.0, name="pushflow.gauges")(self._update_gauges)
        self.app.timer(s.ttl_sweep_interval_s, name="pushflow.expire")(self._expire_inactive)
        self.app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        self.app.sensors.add(_FaustSensor(self.metrics))
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        self.app.on_before_shutdown.connect(self._on_shutdown)  # type: ignore[arg-type]
        self._add_pages()

    def _add_pages(self) -> None:
        registry, worker = self.registry, self

        async def metrics(web: Any, request: Any) -> Any:
            body = generate_latest(registry)
            return web.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def health(web: Any, request: Any) -> Any:
            return web.json({"status": "ok"})

        async def ready(web: Any, request: Any) -> Any:
            ok = worker.is_ready()
            return web.json({"ready": ok}, status=200 if ok else 503)

        self.app.page("/metrics", name="pushflow-metrics")(metrics)
        self.app.page("/healthz", name="pushflow-health")(health)
        self.app.page("/readyz", name="pushflow-ready")(ready)

    def _recovered(self) -> bool:
        return bool(self.app.tables.recovery.completed.is_set())  # type: ignore[attr-defined]

    def is_ready(self) -> bool:
        app = self.app
        recovered = self._recovered()
        ready = bool(
            recovered and self.broker_ok and not app.rebalancing and app.consumer.assignment()
        )
        self.metrics.ready.set(1 if ready else 0)
        if ready and not self.was_ready:
            log.info("worker ready: %d partitions assigned, state recovered",
                     len(app.consumer.assignment()))
        self.was_ready = ready
        return ready

    # --- the decision agent ---------------------------------------------------------------

    async def _decide_agent(self, stream: faust.StreamT) -> AsyncIterator[None]:
        async for event in stream.events():
            await self.handle(event)
            yield None

    async def handle(self, event: EventT) -> None:
        """One input message: parse, step the user's state, write it, send the outputs."""
        started = time.monotonic()
        message = event.message
        topic = message.topic
        self.positions[(topic, message.partition)] = message.offset + 1
        try:
            parsed = self._parse(topic, event.key, event.value)
        except ContractError as exc:
            await self._dead_letter(event, exc)
            return
        key = message.key or b""  # the contract checked it is the user id
        state = self.table.get(key) or UserState(parsed.user_id)
        state.partition = message.partition
        try:
            if topic == self.settings.topic("candidates_topic"):
                out = self.decider.on_candidate(state, parsed)
            else:
                out = self.decider.on_event(state, parsed)
        except Exception as exc:  # a bug: surface it loudly, keep the partition moving
            log.exception(
                "processing failed for %s[%d]@%d", topic, message.partition, message.offset
            )
            await self._dead_letter(event, ProcessingError(f"{type(exc).__name__}: {exc}"))
            return
        self.table[key] = state
        self._track(message.partition, key, state)
        await self._emit(key, out)
        self._count_input(topic, out)
        if topic == self.settings.topic("candidates_topic"):
            self._observe_decision(parsed, out, started)

    def _parse(self, topic: str, key: bytes | None, raw: bytes | None) -> Any:
        limit = self.settings.max_message_bytes
        latest = int((time.time() + self.settings.max_future_s) * 1000)
        if topic == self.settings.topic("candidates_topic"):
            return parse_candidate(raw or b"", key, limit, latest)
        return parse_user_event(raw or b"", key, limit, latest)

    def _track(self, partition: int, key: bytes, state: UserState) -> None:
        self.watermarks[partition] = max(self.watermarks.get(partition, 0), state.watermark_ms)
        if state.pending or state.outbox:
            self.due[partition].add(key)
        else:
            self.due[partition].discard(key)

    async def _emit(self, key: bytes, out: StepOutput) -> None:
        for decision in out.decisions:
            await self.decisions.send(key=key, value=encode(decision))
            labels = {"action": decision["action"], "reason": decision["reason"]}
            self.metrics.decisions.labels(**labels).inc()
        for intent in out.intents:
            await self.intents.send(key=key, value=encode(intent))
            self.metrics.intents.labels(explore=str(intent["explore"]).lower()).inc()
        for example in out.examples:
            await self.training.send(key=key, value=encode(example))
            self.metrics.labeled.labels(outcome=example.outcome).inc()

    async def _dead_letter(self, event: EventT, error: ContractError) -> None:
        message = event.message
        record = dead_letter(
            raw=message.value,
            key=message.key,
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            error=error,
            failed_at_ms=int(time.time() * 1000),
        )
        await self.dead_letters.send(key=message.key, value=encode(record))
        self.metrics.dead_letters.labels(topic=message.topic, error_code=error.code).inc()
        self.metrics.input_messages.labels(topic=message.topic, outcome="dead_letter").inc()
        log.debug(
            "dead letter %s[%d]@%d %s: %s",
            message.topic, message.partition, message.offset, error.code, str(error)[:200],
        )
        self.dead_letter_codes[error.code] += 1

    def _count_input(self, topic: str, out: StepOutput) -> None:
        outcome = "ignored" if out.ignored else "processed"
        self.metrics.input_messages.labels(topic=topic, outcome=outcome).inc()
        if out.ignored:
            self.metrics.ignored.labels(topic=topic, reason=out.ignored).inc()

    def _observe_decision(self, candidate: Any, out: StepOutput, started: float) -> None:
        for decision in out.decisions:
            if decision["candidate_id"] == candidate.candidate_id:
                lag_s = (decision["decided_at_ms"] - candidate.created_at_ms) / 1000
                self.metrics.decision_latency.labels(clock="event").observe(max(0.0, lag_s))
                if decision["p_open"] is not None:
                    self.metrics.p_open.observe(decision["p_open"])
        elapsed = time.monotonic() - started
        self.metrics.decision_latency.labels(clock="processing").observe(elapsed)

    # --- event-time ticks -----------------------------------------------------------------

    def _active_partitions(self) -> set[int]:
        """Input partitions this worker owns (not standbys, not other topics' partitions)."""
        topic = self.settings.topic("user_events_topic")
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    async def _tick(self) -> None:
        """Expire labels and release held pushes on every active partition's event time."""
        if not self.due_built:
            if not self._recovered():
                return
            self._rebuild_due_index()
        for partition in self._active_partitions():
            now = self.watermarks.get(partition)
            if now is not None:
                await self._tick_partition(partition, now)

    def _rebuild_due_index(self) -> None:
        """Users with pending labels or held pushes, from the (recovered) state table."""
        self.due.clear()
        for key, state in self.table.data.items():
            if state.pending or state.outbox:
                self.due[state.partition].add(key)
                self.watermarks[state.partition] = max(
                    self.watermarks.get(state.partition, 0), state.watermark_ms
                )
        self.due_built = True

    async def _tick_partition(self, partition: int, now_ms: int) -> None:
        for key in list(self.due[partition]):
            state = self.table.data.get(key)
            if state is None or state.partition != partition:
                self.due[partition].discard(key)
                continue
            out = self.decider.on_tick(state, now_ms)
            if out.decisions or out.examples or out.intents:
                self.table.data[key] = state
                self.table.send_changelog(partition, key, state)
                self._track(partition, key, state)
                await self._emit(key, out)

    async def _expire_inactive(self) -> None:
        """Forget users inactive for ``user_ttl_s`` of event time with nothing in flight."""
        active = self._active_partitions()
        ttl_ms = self.settings.user_ttl_s * 1000
        expired = [
            (key, state.partition)
            for key, state in self.table.data.items()
            if state.partition in active
            and not state.pending
            and not state.outbox
            and self.watermarks.get(state.partition, 0) - state.watermark_ms > ttl_ms
        ]
        for key, partition in expired:
            del self.table.data[key]
            self.table.send_changelog(partition, key, None, value_serializer="raw")
        if expired:
            self.metrics.expired_users.inc(len(expired))
            log.info("expired %d users inactive for %ds", len(expired), self.settings.user_ttl_s)

    async def _on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        """Take over training if it is ours now; the due index is rebuilt after recovery."""
        self.due_built = False
        inputs = sorted(tp.partition for tp in assigned if tp.topic in self.inputs.topics)
        log.info("partitions assigned: %s", sorted(set(inputs)),
                 extra={"event": "assigned", "partitions": sorted(set(inputs))})
        training_tp = {tp for tp in assigned if tp.topic == self.settings.topic("training_topic")}
        if training_tp and self.trainer is None:
            self._start_training()
        elif not training_tp and self.trainer is not None:
            self.trainer = None
            log.info("training moved to another worker")

    async def _on_revoked(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        """Forget what this worker no longer owns: positions and lag series."""
        gone = sorted({tp.partition for tp in revoked if tp.topic in self.inputs.topics})
        for tp in revoked:
            self.positions.pop((tp.topic, tp.partition), None)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        self.was_ready = False
        if gone:
            log.info("partitions revoked: %s", gone, extra={"event": "revoked", "partitions": gone})

    async def _on_shutdown(self, sender: Any, **kwargs: Any) -> None:
        """Snapshot what was learned since the last snapshot: it acks the training examples
        Faust would otherwise wait for, and a restart then loses nothing."""
        log.info("worker stopping: committing offsets and flushing outputs",
                 extra={"event": "stopping"})
        if self.trainer is not None and self.trainer.version > self.last_published:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.publish_snapshot(), 5.0)

    # --- training -------------------------------------------------------------------------

    async def _train_agent(self, stream: faust.StreamT) -> AsyncIterator[None]:
        """Learn each resolved label once. Examples already inside the restored snapshot
        (offset below its ``training_offset``) are skipped, so a re-read after a restart never
        learns a label twice; a kill -9 loses at most what was learned since the last
        snapshot (``snapshot_interval_s``)."""
        async for event in stream.events():
            if event.message.offset >= self.training_offset:
                self.learn(orjson.loads(event.value))
                self.training_offset = event.message.offset + 1
            due = self.trainer.version - self.last_published if self.trainer else 0
            if due >= self.settings.snapshot_every:
                await self.publish_snapshot()
            yield None

    def learn(self, example: dict[str, Any]) -> None:
        if self.trainer is None:
            self._start_training()
        assert self.trainer is not None
        if example.get("p_open") is not None:
            self.prequential.update(example["p_open"], example["label"])
        self.trainer.learn(
            example["features"], opened=bool(example["label"]), disabled=bool(example["disabled"])
        )
        self.metrics.learned.inc()

    def _start_training(self) -> None:
        self.trainer = self.models.serving.clone()
        self.training_offset = self.models.training_offset
        self.last_published = self.trainer.version
        log.info("training here from model version %d (training offset %d)",
                 self.trainer.version, self.training_offset)

    async def _snapshot_timer(self) -> None:
        if self.trainer is not None and self.trainer.version > self.last_published:
            await self.publish_snapshot()

    async def publish_snapshot(self) -> None:
        assert self.trainer is not None
        model = self.trainer.clone()
        meta = {"training_offset": self.training_offset}
        await self.snapshots.send(key=b"model", value=model.to_snapshot(meta))
        self.last_published = model.version
        self.models.offer(model, int(time.time() * 1000), self.training_offset)
        self.metrics.model_version.set(model.version)
        log.debug("published model snapshot version %d", model.version)

    # --- gauges ---------------------------------------------------------------------------

    def _log_dead_letters(self) -> None:
        """One warning per gauge interval for all dead letters, not one per message."""
        if self.dead_letter_codes:
            total = sum(self.dead_letter_codes.values())
            log.warning("%d inputs dead-lettered since the last report: %s",
                        total, dict(self.dead_letter_codes))
            self.dead_letter_codes.clear()

    async def _update_lag(self) -> None:
        tps = [tp for tp in self.app.assignor.assigned_actives()
               if tp.topic in self.inputs.topics]
        if not tps:
            return
        try:
            highwaters = await asyncio.wait_for(self.app.consumer.highwaters(*tps), 3.0)
        except Exception as exc:  # broker unreachable: not ready until it answers again
            if self.broker_ok:
                log.warning("broker not answering (%s): reporting not ready", type(exc).__name__)
            self.broker_ok = False
            return
        if not self.broker_ok:
            log.info("broker answering again")
        self.broker_ok = True
        committed = self.app.consumer._committed_offset  # type: ignore[attr-defined]
        for tp, highwater in highwaters.items():
            position = max(
                self.positions.get((tp.topic, tp.partition), 0), (committed.get(tp) or 0)
            )
            lag = max(0, highwater - position)
            self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)

    async def _update_gauges(self) -> None:
        m = self.metrics
        m.model_version.set(self.models.serving.version)
        if self.models.published_at_ms is not None:
            m.snapshot_age.set(time.time() - self.models.published_at_ms / 1000)
        report = self.prequential.report()
        m.rolling_auc.set(report["rolling_auc"])
        m.log_loss.set(report["log_loss"])
        m.calibration_error.set(report["calibration_error"])
        m.base_rate.set(report["base_rate"])
        await self._update_lag()
        self._log_dead_letters()
        active = self._active_partitions()
        states = [state for state in self.table.data.values() if state.partition in active]
        m.table_keys.labels(table="user-state").set(len(states))
        m.outbox_size.set(sum(len(s.outbox) for s in states))
        m.pending_labels.set(sum(len(s.pending) for s in states))
        self.is_ready()
