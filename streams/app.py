"""The Faust wiring: a worker built by a factory from one Settings object.

Agents are thin loops around the pure core: ``decide`` reads one user's state record, calls
:class:`~streams.pipeline.Decider`, writes the record back and sends what it produced;
``train`` learns from resolved labels and publishes model snapshots. A timer moves event time
forward per partition so labels expire and held pushes are released even for silent users.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import ssl
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import orjson
from faust.serializers import codecs
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streams.config import challenger_specs, decider_config, fresh_model, model_defaults
from streams.contracts import (
    DEAD_LETTER_RESERVE,
    Candidate,
    ContractError,
    dead_letter,
    dead_letter_key,
    encode,
    parse_candidate,
    parse_tick,
    parse_user_event,
)
from streams.coordination import keep_member_id_on_illegal_generation, retry_failed_commits
from streams.errors import ConfigError, OutputTooLarge, ProcessingError
from streams.features import UserState, state_from_bytes, state_to_bytes
from streams.ingestion import BatchedConsumer
from streams.item_service import ItemCounter, item_page
from streams.item_stats import ItemStatsTable
from streams.metrics import Metrics
from streams.pipeline import Decider, StepOutput
from streams.producer import OutputProducer, Record
from streams.redelivery import (
    Output,
    already_applied,
    applied_beyond,
    forget_committed,
    remember,
    stored,
)
from streams.settings import Settings
from streams.snapshot_format import MAX_SNAPSHOT_BYTES
from streams.snapshots import ModelHolder
from streams.traffic import producer_config
from streams.training import Trainer
from streams.web import AppWithoutRootIndex, web_settings

log = logging.getLogger(__name__)
STATE_CODEC = "pushflow-user-state"
REWIND_WAIT_S = 10.0  # how long a commit waits for skipped inputs to be read again
REWIND_RESEEK_S = 0.5  # how long a seek back has to take effect before it is repeated
WRITES_IN_FLIGHT = 8  # batched ingestion: applied parts of fetches waiting for a write
EVENTS, CANDIDATES, TICKS = "events", "candidates", "ticks"  # the decision agent's inputs
# How far a tick may lead its partition's event time: the worker writes ticks from that very
# event time, so only a tick it did not write leads it; one minute absorbs a state write that
# a crash lost after its tick was acknowledged.
TICK_LEAD_MS = 60_000
OUTPUT_TOPICS = ("decisions_topic", "intents_topic", "training_topic", "dead_letters_topic",
                 "ticks_topic", "item_feedback_topic", "item_stats_topic")


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


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the brokers against ``ssl_cafile`` (the system's CAs if unset) and, for mutual
    TLS, presents ``ssl_certfile``. A file that cannot be used is a ConfigError at start."""
    try:
        context = ssl.create_default_context(cafile=settings.ssl_cafile)
    except OSError as exc:  # ssl.SSLError included
        raise ConfigError(f"ssl_cafile {settings.ssl_cafile!r} cannot be used: {exc}") from None
    if settings.ssl_certfile:
        password = settings.ssl_key_password
        try:
            # Without a password OpenSSL would prompt on the terminal for an encrypted key.
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile,
                                    password.get() if password else _no_key_password)
        except OSError as exc:
            raise ConfigError(
                f"ssl_certfile {settings.ssl_certfile!r} / ssl_keyfile {settings.ssl_keyfile!r} "
                f"cannot be used (an encrypted key needs ssl_key_password): {exc}") from None
    return context


def _no_key_password() -> str:
    return ""


def faust_credentials(settings: Settings) -> Any:
    """SASL / TLS settings passed through to aiokafka; None for PLAINTEXT."""
    protocol = settings.security_protocol.upper()
    ssl_context = tls_context(settings) if "SSL" in protocol else None
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


@dataclass(slots=True)
class Rewind:
    """A partition read again from ``first_missing``: the consumer jumped to ``jumped_to``."""

    tp: Any
    first_missing: int
    jumped_to: int
    sought_at: float | None = None


@dataclass(slots=True)
class Batch:
    """What the inputs since the last write did: the user states they touched, the outputs
    in order."""

    latest_ms: int  # event times beyond this are refused (bad_time)
    started: float  # monotonic time of the batch's first input
    states: dict[bytes, UserState] = field(default_factory=dict)
    outputs: list[tuple[str, bytes | None, dict[str, Any]]] = field(default_factory=list)
    inputs: int = 0
    candidates: int = 0

    def add(self, key: bytes, outputs: list[Output]) -> None:
        self.outputs += [(topic_field, key, record) for topic_field, record in outputs]

    def followed_by(self, later: Batch) -> Batch:
        """This batch and a later one as one, in order (to write again what failed)."""
        return Batch(latest_ms=later.latest_ms, started=self.started,
                     states={**self.states, **later.states},
                     outputs=self.outputs + later.outputs,
                     inputs=self.inputs + later.inputs,
                     candidates=self.candidates + later.candidates)


def models_page(holder: ModelHolder) -> dict[str, Any]:
    """``/models``: the model served, and every model's figures on the same labels as of the
    newest snapshot (the comparison travels in it, so any worker can show it)."""
    return {"serving": holder.serving_name, "version": holder.serving.version,
            "published_at_ms": holder.published_at_ms, "comparison": holder.comparison}


def record_time_ms(message: Any) -> int:
    """The broker timestamp of an input's record (Faust gives seconds); the worker's clock
    when the record has none."""
    stamp = message.timestamp
    if not stamp or stamp <= 0:
        return int(time.time() * 1000)
    return round(stamp * 1000)


def arrival_ms(message: Any) -> int:
    """When an input reached the worker: its record's timestamp, bounded by this worker's
    clock (a producer's clock ahead cannot date it in the future)."""
    return min(record_time_ms(message), int(time.time() * 1000))


def _event_message(event: Any) -> Any:
    return event.message


def _message(message: Any) -> Any:
    return message


def in_record_time_order(
    events: Iterable[Any], rank: dict[str, int], key: Callable[[Any], Any] = _event_message
) -> list[Any]:
    """A fetch (or a taken list: ``key`` gives an item's message) with each partition's input
    topics merged by record timestamp, as Kafka Streams merges co-partitioned inputs: a user's
    event produced before a candidate is applied before it, even if the consumer read the
    candidates' records first.

    Each topic keeps its own order (the merge only picks the earliest head, so offsets per
    topic-partition stay monotonic for the re-read bookkeeping); ties go to the topic ranked
    first in ``rank`` (user events before candidates). The record timestamp stands for event
    time: it costs no parse here, and a device's skewed clock cannot reorder the stream.
    """
    queues: dict[int, dict[str, list[Any]]] = defaultdict(dict)
    for event in events:
        message = key(event)
        queues[message.partition].setdefault(message.topic, []).append(event)
    merged: list[Any] = []
    for topics in queues.values():
        if len(topics) == 1:
            merged += next(iter(topics.values()))
            continue
        ordered = [topics[topic] for topic in sorted(topics, key=lambda t: rank.get(t, len(rank)))]
        merged += heapq.merge(*ordered, key=lambda event: key(event).timestamp or 0.0)
    return merged


class PushflowWorker:
    """One worker process: the Faust app, its topics, table, agents, metrics and model."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        refused = self.metrics.snapshots_refused
        self.models = ModelHolder(fresh_model(settings), settings.snapshot_key,
                                  on_refused=lambda reason: refused.labels(reason=reason).inc())
        # Event time per partition, the clock of its ticks (see _advance_clock); derived,
        # rebuilt from the traffic read after a start or an assignment.
        self.watermarks: dict[int, int] = {}
        self.due: dict[int, set[bytes]] = defaultdict(set)
        self.due_built = False
        # Next offset to process per input partition, for the consumer-lag gauge.
        self.positions: dict[tuple[str, int], int] = {}
        # Input partitions owned, as the rebalance callbacks said: Faust's assignor still
        # lists the old assignment between a revocation and the next assignment.
        self.owned_inputs: set[Any] = set()
        self.lag_series: set[tuple[str, int]] = set()
        self.comparison_series: set[tuple[str, str]] = set()
        # Input partitions read again from an offset the consumer skipped (see _skipped).
        self.rewinding: dict[tuple[str, int], Rewind] = {}
        self.rewound: dict[tuple[str, int], int] = {}
        # Offsets holding no records that the batched path accepted as a gap, to tell Faust
        # (its drain loop leaves the inputs' gaps to the worker, streams.ingestion).
        self.gaps: list[tuple[Any, int, int]] = []
        # Per input partition, the offset after the last input this process counted: kept
        # across revocations, so an input handed over again is counted once (_apply).
        self.counted_to: dict[tuple[str, int], int] = {}
        # Keys whose changelog record was older than the live state, during a recovery
        self.outdated: dict[bytes, UserState] = {}
        # Inputs applied since the metrics were last updated, by (topic, reason ignored).
        self.counted: Counter[tuple[str, str | None]] = Counter()
        self.dead_letter_codes: Counter[str] = Counter()
        self.was_ready = False
        self.broker_ok = True
        self.topic_names = {f: settings.topic(f) for f in OUTPUT_TOPICS}
        self.topics_by_kind = {
            EVENTS: settings.topic("user_events_topic"),
            CANDIDATES: settings.topic("candidates_topic"),
            TICKS: settings.topic("ticks_topic"),
        }
        self.kinds = {topic: kind for kind, topic in self.topics_by_kind.items()}
        self.kind_rank = {topic: n for n, topic in enumerate(self.topics_by_kind.values())}
        self.batch = self._new_batch()
        self._write_lock = asyncio.Lock()
        # Batched ingestion: parts of fetches applied and waiting for their write
        self._in_flight = asyncio.Semaphore(WRITES_IN_FLIGHT)
        self._writes: set[asyncio.Future[None]] = set()
        # Every item's statistics, as published on item-stats (ItemStatsFollower fills it)
        self.item_stats = ItemStatsTable(
            half_life_ms=settings.item_half_life_s * 1000, ttl_ms=settings.item_ttl_s * 1000,
            max_items=settings.item_max_items)
        self.decider = Decider(lambda: self.models.serving, decider_config(settings),
                               self.item_stats)
        keep_member_id_on_illegal_generation()
        retry_failed_commits()
        self.app = self._build_app()
        self._wire()

    @functools.cached_property
    def output(self) -> OutputProducer:
        """The producer of everything the decision agent writes (created on first use)."""
        config = {**producer_config(self.settings), "acks": "all", "linger.ms": 5,
                  "message.timeout.ms": 30_000, "queue.buffering.max.messages": 1_000_000,
                  "message.max.bytes": self.settings.producer_max_bytes}

        def failed(error: Any) -> None:
            self.metrics.producer_errors.inc()
            log.error("send failed: %s", error)

        return OutputProducer(config, failed, self._refused_as_too_large)

    def _refused_as_too_large(self, record: Record, reason: str) -> Record | None:
        """A dead letter in place of a record refused as too large, half its size (so a
        broker limit below ``max_output_bytes`` ends in a dead letter that fits); None once
        even a dead letter without payload is refused."""
        topic, key, value, partition = record
        size = len(key or b"") + len(value or b"")
        dead_letters = self.topic_names["dead_letters_topic"]
        if topic == dead_letters and size <= DEAD_LETTER_RESERVE:
            return None
        error = OutputTooLarge(f"a record of {size} bytes for {topic} was refused: {reason}")
        letter = dead_letter(raw=value, key=key, source_topic=topic, partition=partition,
                             offset=None, error=error, failed_at_ms=int(time.time() * 1000),
                             max_bytes=min(self.settings.max_output_bytes, size // 2))
        self.metrics.dead_letters.labels(topic=topic, error_code=error.code).inc()
        log.error("%s: written as a dead letter", error)
        return dead_letters, dead_letter_key(key), encode(letter), None

    # --- construction ---------------------------------------------------------------------

    def _build_app(self) -> faust.App:
        s = self.settings
        brokers = [f"kafka://{h}" for h in s.bootstrap_servers.split(",")]
        return AppWithoutRootIndex(
            s.app_id,
            # Faust's environment variables (APP_DEBUG, WEB_BIND, APP_WEB_TABLES_ENABLED...)
            # would win over the settings below; pushflow's come from Settings alone.
            env={},
            broker=brokers,
            broker_credentials=faust_credentials(s),
            store="memory://",
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication,
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=max(0.5, s.session_timeout_s / 5),
            consumer_auto_offset_reset="earliest",
            **web_settings(s.web_host, s.web_port),
            datadir=s.data_dir,
            autodiscover=False,
            producer_acks=-1,
            # Faust's producer sends only the model snapshots (the worker writes the rest with
            # its own): their limit, which a model of hashed features reaches (1.1 MB after
            # 7,000 labels of the benchmark mix), not the outputs'.
            producer_max_request_size=max(s.producer_max_bytes, MAX_SNAPSHOT_BYTES + 65_536),
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
        self.inputs = self._raw_topic(*self.topics_by_kind.values())
        self.training = self._raw_topic(s.topic("training_topic"), partitions=1)
        self.snapshots = self._raw_topic(s.topic("snapshots_topic"), partitions=1)
        self.table = self.app.Table(
            "user-state", partitions=s.partitions, key_type=bytes, value_type=UserStateValue
        )
        self.changelog = self.table.changelog_topic.get_topic_name()
        self._guard_recovery(self.table)
        # The agent subscribes the inputs; with batched ingestion (the default) their records
        # never reach it: the consumer hands each fetched batch to _on_input_batch.
        self.app.agent(self.inputs, name="pushflow.decide")(self._decide_agent)
        if s.ingestion == "batched":
            self.app.transport.Consumer = BatchedConsumer  # type: ignore[misc]
            self.app.batched_inputs = dict.fromkeys(  # type: ignore[attr-defined]
                self.inputs.topics, self._on_input_batch)
        self.app.task(self._write_loop)
        if s.ingestion == "faust":
            self._install_commit_barrier()
        self.trainer = Trainer(self.models, self.metrics, self._publish, s.snapshot_every,
                               s.snapshot_interval_s, champion=s.model,
                               challenger_specs=challenger_specs(s),
                               defaults=model_defaults(s))
        self.app.agent(self.training, name="pushflow.train")(self._train_agent)
        self.items = ItemCounter(self)
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
            body: dict[str, Any] = {"ready": ok}
            if not worker.models.following:
                body["snapshots"] = worker.models.status  # e.g. "refused:bad_signature"
            return web.json(body, status=200 if ok else 503)

        self.app.page("/metrics", name="pushflow-metrics")(metrics)
        self.app.page("/healthz", name="pushflow-health")(health)
        self.app.page("/readyz", name="pushflow-ready")(ready)

        async def items(web: Any, request: Any) -> Any:
            key = request.query.get("key", "")
            return web.json(item_page(worker.item_stats, key))

        self.app.page("/items", name="pushflow-items")(items)

        async def models(web: Any, request: Any) -> Any:
            return web.json(models_page(worker.models))

        self.app.page("/models", name="pushflow-models")(models)

    def _recovered(self) -> bool:
        return bool(self.app.tables.recovery.completed.is_set())  # type: ignore[attr-defined]

    def is_ready(self) -> bool:
        app = self.app
        recovered = self._recovered()
        following = self.models.following
        self.metrics.snapshots_ok.set(1 if following else 0)
        ready = bool(
            recovered and self.broker_ok and following and not app.rebalancing
            and app.consumer.assignment()
        )
        self.metrics.ready.set(1 if ready else 0)
        if ready and not self.was_ready:
            log.info("worker ready: %d partitions assigned, state recovered",
                     len(app.consumer.assignment()))
        self.was_ready = ready
        return ready

    # --- the decision agent ---------------------------------------------------------------

    async def _decide_agent(self, stream: faust.StreamT) -> AsyncIterator[None]:
        """With ``ingestion`` = ``faust`` (with ``batched`` no input reaches it, see
        :meth:`_on_input_batch`): inputs are taken in lists of up to ``batch_max`` (or what
        came within ``batch_wait_s``); each, in partition order, is applied to its user's
        state in memory and its outputs join the open batch. :meth:`write_pending` writes
        the batch when it holds ``batch_max`` inputs, ``batch_wait_s`` after it was opened,
        and before Faust commits any offset (the commit barrier,
        :meth:`_install_commit_barrier`). Faust acknowledges a list once this loop asks for
        the next one, so every acknowledged input is applied (or passed over to be read
        again, :meth:`_skipped`), and every committed one is written."""
        settings = self.settings
        taken = cast(faust.Stream, stream).take_events(settings.batch_max, settings.batch_wait_s)
        async for events in taken:
            batch = self.batch
            for event in in_record_time_order(events, self.kind_rank):
                self._apply(event.message, batch)
            batch.inputs += len(events)
            self._publish_counts()
            if self.rewinding:
                await self._seek_back()
            if self.batch.inputs >= settings.batch_max:
                await self.write_pending()
            yield None

    async def _on_input_batch(self, messages: list[Any]) -> None:
        """The inputs of one fetch (:mod:`streams.ingestion`), merged by record time and
        applied in parts of ``batch_max``; each part is acknowledged to Faust only once a
        write that holds it (states, then outputs) is acknowledged by the broker, so no offset
        can be committed ahead of what its input did.

        The writes run beside the consumer (:meth:`_write_then_ack`): while one is in flight
        the next fetches are read and applied, and the write after it takes all of them
        (writes go one at a time, in order). At most ``WRITES_IN_FLIGHT`` parts wait for
        their write; the consumer waits beyond that."""
        self.metrics.input_batch.observe(len(messages))
        ordered = in_record_time_order(messages, self.kind_rank, key=_message)
        size = self.settings.batch_max
        for start in range(0, len(ordered), size):  # a large fetch is written in parts
            part = ordered[start:start + size]
            batch = self.batch
            for message in part:
                self._apply(message, batch)
            batch.inputs += len(part)
            self._publish_counts()
            if self.rewinding:
                await self._seek_back()
            await self._in_flight.acquire()
            task = asyncio.ensure_future(self._write_then_ack(part))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write_then_ack(self, messages: list[Any]) -> None:
        """Write what is open (``messages`` were applied to it, or to a batch a write before
        this one took) and acknowledge them. A failed write is tried again, the inputs
        unacknowledged meanwhile, until it is written or the worker stops."""
        try:
            delay = 0.05
            while True:
                try:
                    await self.write_pending()
                    break
                except Exception:  # the broker is away: write again; nothing is acknowledged
                    if self.app.should_stop:
                        raise
                    log.exception("writing a batch failed: writing it again in %.2f s", delay)
                    await asyncio.sleep(delay)
                    delay = min(2.0, delay * 2)
            consumer = cast(BatchedConsumer, self.app.consumer)
            while self.gaps:
                tp, first, last = self.gaps.pop(0)
                await consumer._add_gap(tp, first, last)
            consumer.ack_all(messages)
        finally:
            self._in_flight.release()

    def _new_batch(self) -> Batch:
        now = time.time()
        return Batch(latest_ms=int((now + self.settings.max_future_s) * 1000),
                     started=time.monotonic())

    async def write_pending(self) -> None:
        """Write the open batch (states, then outputs) and wait for the broker's
        acknowledgement; batches are written one at a time, in the order they were opened."""
        async with self._write_lock:
            batch, self.batch = self.batch, self._new_batch()
            if not (batch.inputs or batch.states or batch.outputs):
                return
            try:
                await self._write(batch)
            except BaseException:  # written again, whole, before what came since
                self.batch = batch.followed_by(self.batch)
                raise
        if batch.candidates:
            elapsed = time.monotonic() - batch.started
            histogram = self.metrics.child(self.metrics.decision_latency, "processing")
            for _ in range(batch.candidates):
                histogram.observe(elapsed)

    async def _write_loop(self) -> None:
        """Writes the open batch every ``batch_wait_s``, so a quiet stream's outputs do not
        wait for the batch to fill."""
        while not self.app.should_stop:
            await asyncio.sleep(self.settings.batch_wait_s)
            if self.rewinding:
                await self._seek_back()
            if self.batch.inputs or self.batch.outputs:
                try:
                    await self.write_pending()
                except Exception:  # a bug: say so; the batch is written again next time
                    log.exception("writing a batch failed")

    def _install_commit_barrier(self) -> None:
        """Faust flushes its producer before it commits offsets (and when partitions are
        revoked or the worker stops): write the open batch there first, so no offset is
        committed ahead of the states and outputs of the inputs below it."""
        producer = self.app.producer
        faust_flush = producer.flush

        async def flush() -> None:
            deadline = time.monotonic() + REWIND_WAIT_S
            while self.rewinding and not self.app.rebalancing and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # inputs being read again: commit after them
            await self.write_pending()
            await faust_flush()

        producer.flush = flush  # type: ignore[method-assign]

    def _apply(self, message: Any, batch: Batch) -> None:
        topic, partition, offset = message.topic, message.partition, message.offset
        if offset == self.positions.get((topic, partition), 0) - 1:
            # Faust hands a partition's last message over again when it re-fetches (e.g. once
            # recovery is done); this process has applied and written it already. Anything
            # else read again (a seek back after a rebalance) goes through already_applied.
            return
        if self._skipped(message):
            return
        self.positions[(topic, partition)] = offset + 1
        # Faust also hands over earlier inputs again, from the committed offset, when it seeks
        # there after a recovery or a rebalance (its commits trail what was applied). They
        # take the re-read path below (re-emit, or nothing), but this process counted them
        # when it first read them: count each input once, not each time it is handed over.
        counts = offset >= self.counted_to.get((topic, partition), 0)
        if counts:
            self.counted_to[(topic, partition)] = offset + 1
        kind = self.kinds[topic]
        if kind == TICKS:
            self._apply_tick(message, batch, counts)
            return
        try:
            parsed = self._parse(kind, message.key, message.value, batch.latest_ms)
        except ContractError as exc:
            self._dead_letter(message, exc, batch, counts)
            return
        self._advance_clock(message, parsed)
        key = message.key or b""  # the contract checked it is the user id
        state = (batch.states.get(key) or self.table.data.get(key)
                 or UserState(parsed.user_id, tz_known=False))
        if already_applied(state, kind, offset):
            self._reemit(key, state, kind, offset, batch, counts)
            return
        state.partition = partition
        try:
            if kind == CANDIDATES:
                out = self.decider.on_candidate(state, parsed, arrival_ms(message))
            else:
                out = self.decider.on_event(state, parsed)
        except Exception as exc:  # a bug: surface it loudly, keep the partition moving
            log.exception("processing failed for %s[%d]@%d", topic, partition, offset)
            error = ProcessingError(f"{type(exc).__name__}: {exc}")
            self._dead_letter(message, error, batch, counts)
            return
        outputs = self._outputs(out, topic, partition, offset)
        remember(state, kind, offset, outputs)
        batch.states[key] = state
        batch.add(key, outputs)
        if counts:
            self._count_input(topic, out.ignored)
        if kind == CANDIDATES:
            batch.candidates += 1
            self._observe_decision(parsed, out)

    def _skipped(self, message: Any) -> bool:
        """Whether to pass over this input because the consumer skipped inputs before it.

        Faust can move a partition's fetch position past inputs it never handed over (records
        dropped while its flow is paused around a recovery, then a seek to the committed offset
        that lands behind the fetch position); it counts them as a gap, i.e. done. The worker
        notices the jump, seeks back to the first missing offset and passes over everything
        until the re-read arrives; a second jump from the same offset is a real gap (e.g.
        transaction markers) and is accepted. No offset is committed past an input that was
        never applied: on the batched path Faust is told of no gap but that one
        (:meth:`_gap`), so its commits stop at the first missing offset until the re-read is
        acknowledged; on the ``faust`` path Faust marks the jump as a gap itself, and the
        commit barrier waits for the re-read.
        """
        where = (message.topic, message.partition)
        offset = message.offset
        rewind = self.rewinding.get(where)
        if rewind is not None:
            if not rewind.first_missing <= offset <= rewind.jumped_to:
                return True  # handed over before the seek, or applied already
            del self.rewinding[where]  # the re-read: from the first missing offset on, or
            self._gap(message, rewind.first_missing)  # from the same jump again (those
            return False  # offsets hold no records)
        expected = self.positions.get(where)
        if expected is None or offset <= expected:
            return False
        if self.rewound.get(where) == expected:
            self._gap(message, expected)
            return False
        log.warning("the consumer skipped %s[%d] offsets %d..%d: reading them again",
                    message.topic, message.partition, expected, offset - 1)
        self.rewinding[where] = Rewind(message.tp, expected, offset)
        self.rewound[where] = expected
        return True

    def _gap(self, message: Any, first: int) -> None:
        """Offsets ``first`` up to ``message``'s hold no records (read twice, the same jump):
        on the batched path Faust is told, so its commits can pass them once the inputs
        around them are acknowledged; Faust's own drain loop tells it on the other path."""
        if message.offset > first and self.settings.ingestion == "batched":
            self.gaps.append((message.tp, first, message.offset - 1))

    async def _seek_back(self) -> None:
        """Seek each partition being read again to its first missing offset, again every
        ``REWIND_RESEEK_S`` until the re-read arrives: Faust's fetcher can overwrite the read
        offset of a seek with a record it was handing over from before it."""
        now = time.monotonic()
        for where, rewind in list(self.rewinding.items()):
            if rewind.sought_at is not None and now - rewind.sought_at < REWIND_RESEEK_S:
                continue
            rewind.sought_at = now
            try:
                await self.app.consumer.seek(rewind.tp, rewind.first_missing)
            except Exception as exc:  # e.g. revoked meanwhile: its new owner reads it
                log.warning("seeking %s to %d failed: %r", rewind.tp, rewind.first_missing, exc)
                self.rewinding.pop(where, None)

    def _apply_tick(self, message: Any, batch: Batch, counts: bool = True) -> None:
        """Event time of this partition reached ``now_ms``: expire labels, release pushes."""
        partition, offset = message.partition, message.offset
        try:
            now_ms = parse_tick(message.value or b"", self.settings.max_message_bytes)
        except ContractError as exc:
            self._dead_letter(message, exc, batch, counts)
            return
        if self._tick_ahead(message, now_ms):
            if counts:  # an ignored tick, not an input: input counts cover the input topics
                self.metrics.child(self.metrics.ignored, message.topic, "tick_ahead").inc()
            self._reemit_tick(partition, offset, batch)
            return
        for key in list(self.due[partition]):
            state = batch.states.get(key) or self.table.data.get(key)
            if state is None or state.partition != partition:
                self.due[partition].discard(key)
            elif already_applied(state, TICKS, offset):
                batch.add(key, stored(state, TICKS, offset))
            else:
                out = self.decider.on_tick(state, now_ms)
                if out.decisions or out.intents or out.examples:
                    outputs = self._outputs(out, message.topic, partition, offset)
                    remember(state, TICKS, offset, outputs)
                    batch.states[key] = state
                    batch.add(key, outputs)
                elif not (state.pending or state.outbox):
                    self.due[partition].discard(key)  # its stored tick outputs went out

    def _reemit_tick(self, partition: int, offset: int, batch: Batch) -> None:
        """What a refused tick emitted before a crash still goes out: refusing it moves no
        time, but the outputs its first pass stored in users' states were decided already."""
        for key in list(self.due[partition]):
            state = batch.states.get(key) or self.table.data.get(key)
            if state is not None and state.partition == partition and already_applied(
                state, TICKS, offset
            ):
                batch.add(key, stored(state, TICKS, offset))

    def _tick_ahead(self, message: Any, now_ms: int) -> bool:
        """Whether a tick would move event time further than the partition's inputs took it
        (plus TICK_LEAD_MS): one written by anyone else, say for 2100, must not expire every
        label and held push of the partition. It moves nothing and is counted (ignored,
        ``tick_ahead``) and logged, not dead-lettered: a tick the worker wrote itself can
        lead for a moment after a crash lost the state write it came from, until the input
        is read again."""
        if not self.due_built and self._recovered():
            self._rebuild_due_index()  # the users of partitions assigned since
        partition = message.partition
        limit = self.watermarks.get(partition)
        if limit is not None and now_ms <= limit + TICK_LEAD_MS:
            return False
        skew_ms = self.settings.max_clock_skew_s * 1000
        if limit is None and now_ms <= arrival_ms(message) + skew_ms:
            # no input read since the start: the partition clock is bounded like an input's
            # (its record time plus the skew), so the ticks a crash left are still applied
            return False
        log.warning("passed over a tick to %d on partition %d: its inputs reached %s",
                    now_ms, partition, "no event time yet" if limit is None else limit)
        return True

    def _reemit(self, key: bytes, state: UserState, kind: str, offset: int, batch: Batch,
                counts: bool = True) -> None:
        """An input read again that this user's state already holds (a crash came between
        the state write and the offset commit): emit what it emitted, byte for byte."""
        outputs = stored(state, kind, offset)
        batch.add(key, outputs)
        self.metrics.reemitted.inc(len(outputs))
        if counts:
            topic = self.topics_by_kind[kind]
            self._count_input(topic, None if outputs else "already_applied")

    def _outputs(self, out: StepOutput, topic: str, partition: int, offset: int) -> list[Output]:
        outputs: list[Output] = [("decisions_topic", d) for d in out.decisions]
        outputs += [("intents_topic", i) for i in out.intents]
        outputs += [("item_feedback_topic", f) for f in out.feedback]
        for index, example in enumerate(out.examples):
            record = example.record()
            record["source"] = {"topic": topic, "partition": partition, "offset": offset,
                                "index": index}
            outputs.append(("training_topic", record))
        return outputs

    def _parse(self, kind: str, key: bytes | None, raw: bytes | None, latest_ms: int) -> Any:
        limit = self.settings.max_message_bytes
        if kind == CANDIDATES:
            return parse_candidate(raw or b"", key, limit, latest_ms)
        return parse_user_event(raw or b"", key, limit, latest_ms)

    def _advance_clock(self, message: Any, parsed: Any) -> None:
        """Move the partition's clock to this input's event time, but no further than its
        record's broker timestamp plus ``max_clock_skew_s``: the clock expires every user's
        labels and releases their held pushes, so one device's clock must not move it."""
        event_ms = parsed.created_at_ms if isinstance(parsed, Candidate) else parsed.event_time_ms
        bounded = min(event_ms, record_time_ms(message) + self.settings.max_clock_skew_s * 1000)
        partition = message.partition
        if bounded > self.watermarks.get(partition, 0):
            self.watermarks[partition] = bounded

    def _track(self, partition: int, key: bytes, state: UserState) -> None:
        if state.pending or state.outbox or any(e[0] == TICKS for e in state.unconfirmed):
            self.due[partition].add(key)
        else:
            self.due[partition].discard(key)

    async def _write(self, batch: Batch) -> None:
        """States first, then outputs: a crash in between re-emits the stored outputs.

        Each changelog partition written to then gets its last record once more, alone in
        its request: some brokers (tansu) report the high watermark as the start of the last
        batch + 1, and Faust's recovery would stop there and miss the rest of a batch.
        """
        committed = self._committed_by_partition()
        last: dict[int, tuple[bytes, bytes]] = {}
        for key, state in batch.states.items():
            forget_committed(state, committed.get(state.partition, {}))
            self.table.data[key] = state
            last[state.partition] = (key, state_to_bytes(state))
            self.output.produce(self.changelog, key, last[state.partition][1], state.partition)
            self._track(state.partition, key, state)
        if batch.states:
            await self.output.flush()
        for partition, (key, raw) in last.items():
            self.output.produce(self.changelog, key, raw, partition)
        for topic_field, output_key, record in batch.outputs:
            if topic_field == "item_feedback_topic":  # keyed by item, not by user
                output_key = record["item"].encode()
            self.output.produce(self.topic_names[topic_field], output_key, encode(record))
            self._count_output(topic_field, record)
        if batch.outputs or last:
            await self.output.flush()

    def _committed_by_partition(self) -> dict[int, dict[str, int]]:
        committed: dict[int, dict[str, int]] = defaultdict(dict)
        for tp, offset in self.app.consumer._committed_offset.items():  # type: ignore[attr-defined]
            kind = self.kinds.get(tp.topic)
            if kind is not None and offset is not None:
                committed[tp.partition][kind] = offset
        return committed

    def _count_output(self, topic_field: str, record: dict[str, Any]) -> None:
        m = self.metrics
        if topic_field == "decisions_topic":
            m.child(m.decisions, record["action"], record["reason"]).inc()
        elif topic_field == "intents_topic":
            m.child(m.intents, "true" if record["explore"] else "false").inc()
        elif topic_field == "training_topic":
            m.child(m.labeled, record["outcome"]).inc()

    def _dead_letter(self, message: Any, error: ContractError, batch: Batch,
                     counts: bool = True) -> None:
        record = dead_letter(
            raw=message.value,
            key=message.key,
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            error=error,
            failed_at_ms=int(time.time() * 1000),
            max_bytes=self.settings.max_output_bytes,
        )
        batch.outputs.append(("dead_letters_topic", dead_letter_key(message.key), record))
        self.metrics.dead_letters.labels(topic=message.topic, error_code=error.code).inc()
        if counts:
            self.metrics.input_messages.labels(topic=message.topic, outcome="dead_letter").inc()
        log.debug(
            "dead letter %s[%d]@%d %s: %s",
            message.topic, message.partition, message.offset, error.code, str(error)[:200],
        )
        self.dead_letter_codes[error.code] += 1

    def _count_input(self, topic: str, ignored: str | None) -> None:
        self.counted[(topic, ignored)] += 1  # published per taken list (_publish_counts)

    def _publish_counts(self) -> None:
        m = self.metrics
        for (topic, ignored), n in self.counted.items():
            m.child(m.input_messages, topic, "ignored" if ignored else "processed").inc(n)
            if ignored:
                m.child(m.ignored, topic, ignored).inc(n)
        self.counted.clear()

    def _observe_decision(self, candidate: Any, out: StepOutput) -> None:
        for decision in out.decisions:
            if decision["candidate_id"] == candidate.candidate_id:
                lag_s = (decision["decided_at_ms"] - candidate.created_at_ms) / 1000
                self.metrics.child(self.metrics.decision_latency, "event").observe(max(0.0, lag_s))
                if decision["p_open"] is not None:
                    self.metrics.p_open.observe(decision["p_open"])

    # --- event-time ticks -----------------------------------------------------------------

    def _active_partitions(self) -> set[int]:
        """Input partitions this worker owns (not standbys, not other topics' partitions)."""
        topic = self.settings.topic("user_events_topic")
        return {tp.partition for tp in self.owned_inputs if tp.topic == topic}

    async def _tick(self) -> None:
        """Send each active partition's event time, as a tick, to the decision agent: what a
        tick releases or expires is then tied to an input offset like any other output."""
        if not self.due_built:
            if not self._recovered():
                return
            self._rebuild_due_index()
        for partition in self._active_partitions():
            now = self.watermarks.get(partition)
            if now is not None and self.due[partition]:
                tick = orjson.dumps({"now_ms": now})
                self.output.produce(self.topic_names["ticks_topic"], None, tick, partition)
        self.output.poll()

    def _guard_recovery(self, table: Any) -> None:
        """Faust rebuilds an in-memory table from its whole changelog after every rebalance,
        over the states it holds; a broker that lost acknowledged writes (noida-db after a
        restart) would take a user back to an older state, whose inputs since are decided
        again, differently. A record older than the live state (``applied_beyond``) is not
        restored over it; the live state is written again once recovery is done."""
        faust_apply = table.apply_changelog_batch

        def apply_changelog_batch(batch: Any) -> None:
            data, kept = table.data, []
            for event in batch:
                live, record = data.get(event.key), event.value
                if isinstance(live, UserState) and isinstance(record, UserState) \
                        and applied_beyond(live, record):
                    self.outdated[event.key] = live
                    continue
                self.outdated.pop(event.key, None)
                kept.append(event)
            faust_apply(kept)

        table.apply_changelog_batch = apply_changelog_batch

    def _rewrite_outdated(self) -> None:
        """Write again the states whose changelog records were older than them (of the
        partitions this worker owns: a standby copy is the owner's to write)."""
        owned = self._active_partitions()
        kept = {key: state for key, state in self.outdated.items()
                if self.table.data.get(key) is state and state.partition in owned}
        self.outdated.clear()
        if kept:
            self.batch.states.update(kept)
            self.metrics.outdated_states.inc(len(kept))
            log.warning("%d user states in the changelog were older than the ones this worker "
                        "holds (the broker lost acknowledged writes): kept and written again",
                        len(kept))

    def _rebuild_due_index(self) -> None:
        """Users with pending labels or held pushes, from the (recovered) state table."""
        self._rewrite_outdated()
        self.due.clear()
        for key, state in self.table.data.items():
            self._track(state.partition, key, state)
        self.due_built = True

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
            self.output.produce(self.changelog, key, None, partition)
        if expired:
            self.metrics.expired_users.inc(len(expired))
            log.info("expired %d users inactive for %ds", len(expired), self.settings.user_ttl_s)
        s = self.settings
        forgotten = self.items.sweep(self._active_partitions(), s.item_ttl_s * 1000,
                                     s.item_max_items)
        if forgotten:
            log.info("forgot the statistics of %d items", forgotten)

    async def _on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        """Take over training if it is ours now; the due index is rebuilt after recovery."""
        self.due_built = False
        inputs = sorted(tp.partition for tp in assigned if tp.topic in self.inputs.topics)
        self.owned_inputs = {tp for tp in assigned if tp.topic in self.inputs.topics}
        self.items.dated.clear()  # what recovery restores may be newer than what it knew
        self._drop_lag_series(self.owned_inputs)
        log.info("partitions assigned: %s", sorted(set(inputs)),
                 extra={"event": "assigned", "partitions": sorted(set(inputs))})
        training_tp = {tp for tp in assigned if tp.topic == self.settings.topic("training_topic")}
        if training_tp and not self.trainer.active:
            self.trainer.start()
        elif not training_tp and self.trainer.active:
            self.trainer.stop()

    async def _on_revoked(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        """Forget what this worker no longer owns: positions and lag series."""
        gone = sorted({tp.partition for tp in revoked if tp.topic in self.inputs.topics})
        for tp in revoked:
            self.positions.pop((tp.topic, tp.partition), None)
            self.rewinding.pop((tp.topic, tp.partition), None)
            self.rewound.pop((tp.topic, tp.partition), None)
        self.owned_inputs -= set(revoked)
        self._drop_lag_series(self.owned_inputs)
        self.was_ready = False
        if gone:
            log.info("partitions revoked: %s", gone, extra={"event": "revoked", "partitions": gone})

    async def _on_shutdown(self, sender: Any, **kwargs: Any) -> None:
        """Snapshot what was learned since the last snapshot: it acks the training examples
        Faust would otherwise wait for, and a restart then loses nothing."""
        log.info("worker stopping: committing offsets and flushing outputs",
                 extra={"event": "stopping"})
        if self.trainer.unpublished:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.trainer.publish_snapshot(), 5.0)
        await self.write_pending()
        if self._writes:  # batched ingestion's writes still acknowledging their inputs
            await asyncio.wait(set(self._writes), timeout=5.0)
        if "output" in self.__dict__:
            await asyncio.get_running_loop().run_in_executor(None, self.output.close, 5.0)

    # --- training -------------------------------------------------------------------------

    async def _train_agent(self, stream: faust.StreamT) -> AsyncIterator[None]:
        """Every labeled example, once, to the trainer (:mod:`streams.training`); it is
        acknowledged as soon as it is learned. Anything else on the topic is dead-lettered
        (its dead letter is written with the open batch, before the next commit)."""
        limit = self.settings.max_output_bytes  # the largest example the worker could write
        async for event in stream.events():
            message = event.message
            try:
                await self.trainer.on_example(message.offset, message.value or b"", limit)
            except ContractError as exc:  # not an example the worker wrote: never learned
                self._dead_letter(message, exc, self.batch)
                await self.write_pending()  # written before Faust acknowledges the example
            yield None

    async def _publish(self, snapshot: bytes) -> None:
        await self.snapshots.send(key=b"model", value=snapshot)

    async def _snapshot_timer(self) -> None:
        # A refused record is the newest under the snapshot key: once compacted it would be the
        # only one, and a restart would begin cold. The trainer writes its model over it.
        if self.trainer.unpublished or (self.trainer.active and self.models.newest_refused):
            await self.trainer.publish_snapshot()

    # --- gauges ---------------------------------------------------------------------------

    def _log_dead_letters(self) -> None:
        """One warning per gauge interval for all dead letters, not one per message."""
        if self.dead_letter_codes:
            total = sum(self.dead_letter_codes.values())
            log.warning("%d inputs dead-lettered since the last report: %s",
                        total, dict(self.dead_letter_codes))
            self.dead_letter_codes.clear()

    def _update_comparison(self) -> None:
        """Champion and challengers' figures, while this worker trains; none otherwise."""
        m = self.metrics
        gauges = (m.compare_auc, m.compare_log_loss, m.compare_calibration_error,
                  m.compare_labels)
        report = self.trainer.shadows.report() if self.trainer.active else {}
        series = {(name, r["role"]) for name, r in report.items()}
        for gone in self.comparison_series - series:
            for gauge in gauges:
                gauge.remove(*gone)
        self.comparison_series = series
        for name, r in report.items():
            m.compare_auc.labels(name, r["role"]).set(r["rolling_auc"])
            m.compare_log_loss.labels(name, r["role"]).set(r["log_loss"])
            m.compare_calibration_error.labels(name, r["role"]).set(r["calibration_error"])
            m.compare_labels.labels(name, r["role"]).set(r["n"])

    def _drop_lag_series(self, owned: set[Any]) -> None:
        """Remove the lag series of every input partition not in ``owned``."""
        keep = {(tp.topic, tp.partition) for tp in owned}
        for topic, partition in self.lag_series - keep:
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(topic, str(partition))
        self.lag_series &= keep

    async def _update_lag(self) -> None:
        inputs = (self.topics_by_kind[EVENTS], self.topics_by_kind[CANDIDATES])  # not ticks
        tps = [tp for tp in self.owned_inputs if tp.topic in inputs]
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
        # A rebalance may have come while the broker answered: report only what is still
        # owned (the callbacks removed the series of what moved away).
        owned = self.owned_inputs
        committed = self.app.consumer._committed_offset  # type: ignore[attr-defined]
        for tp, highwater in highwaters.items():
            if tp not in owned:
                continue
            position = max(
                self.positions.get((tp.topic, tp.partition), 0), (committed.get(tp) or 0)
            )
            lag = max(0, highwater - position)
            self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
            self.lag_series.add((tp.topic, tp.partition))

    async def _update_gauges(self) -> None:
        m = self.metrics
        m.model_version.set(self.models.serving.version)
        if self.models.published_at_ms is not None:
            m.snapshot_age.set(time.time() - self.models.published_at_ms / 1000)
        report = self.trainer.prequential.report()
        m.rolling_auc.set(report["rolling_auc"])
        m.log_loss.set(report["log_loss"])
        m.calibration_error.set(report["calibration_error"])
        m.base_rate.set(report["base_rate"])
        self._update_comparison()
        await self._update_lag()
        self._log_dead_letters()
        active = self._active_partitions()
        states = [state for state in self.table.data.values() if state.partition in active]
        m.table_keys.labels(table="user-state").set(len(states))
        m.item_stats_items.set(len(self.item_stats))
        m.outbox_size.set(sum(len(s.outbox) for s in states))
        m.pending_labels.set(sum(len(s.pending) for s in states))
        self.is_ready()
