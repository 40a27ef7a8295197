"""Kafka administration helpers: wait for a broker and create topics idempotently.

Everything here speaks the Kafka protocol through confluent-kafka's
:class:`~confluent_kafka.admin.AdminClient`, so it works the same against Apache Kafka and
against the embedded brokers of :mod:`streams.broker`. The module deliberately imports
nothing from Faust: it is used by the test suite and by the ``pushflow demo`` command
before any Faust app exists.

Examples
--------
>>> spec = TopicSpec("events", partitions=4, config={"cleanup.policy": "compact"})
>>> spec.partitions, dict(spec.config)
(4, {'cleanup.policy': 'compact'})
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from streams.errors import BrokerError
from streams.logs import client_logging

__all__ = [
    "BrokerUnavailableError",
    "TopicSetupError",
    "TopicSpec",
    "ensure_topics",
    "make_admin_client",
    "wait_for_broker",
    "wait_for_names",
]

#: Upper bound for a single metadata or create request, so that one slow request never
#: eats the whole deadline and the loop can retry.
_MAX_REQUEST_TIMEOUT = 5.0
#: Pause between attempts; short, because every loop here is bounded by a deadline.
_RETRY_PAUSE = 0.1

#: CreateTopics errors that no amount of retrying fixes: the request itself is wrong.
#: Anything else (timeouts, not-controller, too few brokers registered yet for the
#: replication factor, ...) is retried until the deadline.
_FATAL_CREATE_ERRORS = frozenset(
    {
        KafkaError.TOPIC_EXCEPTION,  # invalid topic name
        KafkaError.INVALID_PARTITIONS,
        KafkaError.INVALID_CONFIG,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.INVALID_REQUEST,
    }
)


class BrokerUnavailableError(BrokerError, TimeoutError):
    """No successful metadata request to the broker before the deadline."""


class TopicSetupError(BrokerError):
    """Topics could not be created or verified as requested."""


@dataclass(frozen=True)
class TopicSpec:
    """What a topic must look like.

    Parameters
    ----------
    name : str
        Topic name.
    partitions : int, default 1
        Number of partitions; must be at least 1.
    replication : int, default 1
        Replication factor; must be at least 1. Single-broker setups (the embedded
        brokers, a one-node docker-compose Kafka) need 1.
    config : Mapping[str, str], optional
        Topic configuration, e.g. ``{"cleanup.policy": "compact"}``. Stored as a
        read-only mapping; it takes no part in hashing.

    Raises
    ------
    ValueError
        If the name is empty or a count is below 1.
    """

    name: str
    partitions: int = 1
    replication: int = 1
    config: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("topic name must not be empty")
        if self.partitions < 1:
            raise ValueError(f"{self.name}: partitions must be >= 1, got {self.partitions}")
        if self.replication < 1:
            raise ValueError(f"{self.name}: replication must be >= 1, got {self.replication}")
        frozen = MappingProxyType({str(k): str(v) for k, v in self.config.items()})
        object.__setattr__(self, "config", frozen)


def make_admin_client(
    bootstrap: str, client_config: Mapping[str, str] | None = None
) -> AdminClient:
    """Build an AdminClient that retries connections quickly.

    Parameters
    ----------
    bootstrap : str
        ``host:port[,host:port...]``; overrides any ``bootstrap.servers`` in
        ``client_config``.
    client_config : Mapping[str, str], optional
        Extra librdkafka settings (security, timeouts, ...). Values given here win over
        the defaults below except for ``bootstrap.servers``.

    Returns
    -------
    AdminClient
        A client whose reconnect back-off is capped at 500 ms instead of librdkafka's
        10 s, so waiting for a broker that is just starting does not overshoot.
    """
    config: dict[str, str | int | float | bool] = {
        "reconnect.backoff.ms": "50",
        "reconnect.backoff.max.ms": "500",
    }
    config.update(client_config or {})
    config["bootstrap.servers"] = bootstrap
    return AdminClient(client_logging(config))


def _request_timeout(deadline: float) -> float:
    """Time allowed for one request: what is left, capped, but never zero."""
    return max(0.05, min(_MAX_REQUEST_TIMEOUT, deadline - time.monotonic()))


def _list_topics_until(admin: AdminClient, deadline: float, what: str) -> ClusterMetadata:
    """Retry ``list_topics`` until it succeeds or the deadline passes."""
    last_error: Exception | None = None
    while True:
        try:
            return admin.list_topics(timeout=_request_timeout(deadline))
        except KafkaException as exc:
            last_error = exc
        finally:
            admin.poll(0)  # hands librdkafka's log lines to Python logging
        if time.monotonic() + _RETRY_PAUSE >= deadline:
            raise BrokerUnavailableError(f"{what}: no answer before the deadline "
                                         f"({_reason(last_error)})")
        time.sleep(_RETRY_PAUSE)


def _reason(error: Exception | None) -> str:
    kafka_error = error.args[0] if error is not None and error.args else None
    return kafka_error.str() if isinstance(kafka_error, KafkaError) else str(error)


def wait_for_names(bootstrap: str, deadline: float) -> None:
    """Block until every host of ``bootstrap`` resolves, or raise BrokerUnavailableError.

    librdkafka resolves on its own threads, and a lookup it started can hold up closing the
    client well past any deadline; resolving here first keeps a wrong host name within the
    deadline and names it in the error.
    """
    for server in bootstrap.split(","):
        host = server.rpartition(":")[0].strip("[]")
        error = _resolve_until(host, deadline)
        if error is not None:
            raise BrokerUnavailableError(f"broker host {host!r} does not resolve: {error}")


def _resolve_until(host: str, deadline: float) -> str | None:
    """None once ``host`` resolves; why it did not if the deadline passes first."""
    while True:
        outcome: list[str | None] = []
        lookup = threading.Thread(target=_resolve, args=(host, outcome), daemon=True)
        lookup.start()
        lookup.join(max(0.0, deadline - time.monotonic()))
        if outcome and outcome[0] is None:
            return None
        why = outcome[0] if outcome else "no answer from the resolver"
        if time.monotonic() + _RETRY_PAUSE >= deadline:
            return why
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic() - _RETRY_PAUSE)))


def _resolve(host: str, outcome: list[str | None]) -> None:
    try:
        socket.getaddrinfo(host, None)
        outcome.append(None)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        outcome.append(getattr(exc, "strerror", None) or str(exc))


def wait_for_broker(
    bootstrap: str,
    client_config: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> ClusterMetadata:
    """Block until a Kafka metadata request to ``bootstrap`` succeeds.

    Parameters
    ----------
    bootstrap : str
        ``host:port[,host:port...]`` of the cluster.
    client_config : Mapping[str, str], optional
        Extra librdkafka settings, see :func:`make_admin_client`.
    timeout : float, default 30.0
        Seconds to keep trying.

    Returns
    -------
    ClusterMetadata
        The first successful metadata answer (brokers, topics, controller).

    Raises
    ------
    BrokerUnavailableError
        If no metadata request succeeded before the deadline.
    """
    deadline = time.monotonic() + timeout
    wait_for_names(bootstrap, deadline)
    admin = make_admin_client(bootstrap, client_config)
    return _list_topics_until(admin, deadline, f"broker {bootstrap}")


def _topic_problem(metadata: ClusterMetadata, spec: TopicSpec) -> str | None:
    """Why the topic is not (yet) as requested, or None if it is."""
    topic = metadata.topics.get(spec.name)
    if topic is None:
        return "missing from metadata"
    if topic.error is not None:
        return f"metadata error {topic.error}"
    partitions = topic.partitions
    if len(partitions) != spec.partitions:
        return f"has {len(partitions)} partitions, wanted {spec.partitions}"
    for pid, partition in partitions.items():
        if partition.error is not None:
            return f"partition {pid}: {partition.error}"
        if partition.leader < 0:
            return f"partition {pid} has no leader yet"
    return None


def _partition_mismatch(metadata: ClusterMetadata, spec: TopicSpec) -> int | None:
    """The partition count of an existing topic if it differs from the spec."""
    topic = metadata.topics.get(spec.name)
    if topic is None or topic.error is not None or not topic.partitions:
        return None
    count = len(topic.partitions)
    return count if count != spec.partitions else None


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, TopicSpec],
    *,
    client_config: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Create the given topics unless they exist, then verify them.

    Idempotent: a topic that already exists (or that the broker answers with
    ``TOPIC_ALREADY_EXISTS``) counts as created. Afterwards every topic must appear in
    the cluster metadata with the requested partition count and a leader for every
    partition. Transient failures (broker still starting, request timeouts, metadata
    not yet propagated) are retried until the deadline.

    Only existence and partition count are verified; the configuration of a topic that
    existed before is not compared with ``spec.config``.

    Parameters
    ----------
    bootstrap : str
        ``host:port[,host:port...]`` of the cluster.
    topics : Mapping[str, TopicSpec]
        Topic name to spec; every key must equal its ``spec.name``.
    client_config : Mapping[str, str], optional
        Extra librdkafka settings, see :func:`make_admin_client`.
    timeout : float, default 30.0
        Overall deadline in seconds, covering waiting for the broker, creating and
        verifying.

    Raises
    ------
    ValueError
        If a key differs from its spec's name.
    TopicSetupError
        If a topic already exists with a different partition count, the broker rejects a
        spec outright (invalid config, policy, authorization), or the topics are still
        not as requested when the deadline passes.
    BrokerUnavailableError
        If a broker host does not resolve, or the broker never answered a metadata
        request, before the deadline.
    """
    for key, spec in topics.items():
        if key != spec.name:
            raise ValueError(f"topic key {key!r} differs from its spec name {spec.name!r}")
    if not topics:
        return

    deadline = time.monotonic() + timeout
    wait_for_names(bootstrap, deadline)
    admin = make_admin_client(bootstrap, client_config)
    specs = list(topics.values())
    problems: dict[str, str] = {}
    first_round = True

    while True:
        metadata = _list_topics_until(admin, deadline, f"broker {bootstrap}")
        problems = {}
        to_create: list[TopicSpec] = []
        for spec in specs:
            present = spec.name in metadata.topics and metadata.topics[spec.name].error is None
            if not present:
                to_create.append(spec)
                continue
            existing = _partition_mismatch(metadata, spec)
            if existing is not None and first_round:
                raise TopicSetupError(
                    f"topic {spec.name!r} already exists with {existing} partitions, "
                    f"wanted {spec.partitions}; not altering an existing topic"
                )
            problem = _topic_problem(metadata, spec)
            if problem is not None:
                problems[spec.name] = problem
        first_round = False

        created_now = False
        if to_create:
            futures = admin.create_topics(
                [
                    NewTopic(
                        spec.name,
                        num_partitions=spec.partitions,
                        replication_factor=spec.replication,
                        config=dict(spec.config),
                    )
                    for spec in to_create
                ],
                request_timeout=_request_timeout(deadline),
                operation_timeout=_request_timeout(deadline),
            )
            for spec in to_create:
                try:
                    futures[spec.name].result(timeout=_request_timeout(deadline) + 1.0)
                    created_now = True
                except KafkaException as exc:
                    error = exc.args[0] if exc.args else None
                    code = error.code() if isinstance(error, KafkaError) else None
                    if code in _FATAL_CREATE_ERRORS:
                        raise TopicSetupError(
                            f"broker rejected topic {spec.name!r}: {error}"
                        ) from exc
                    if code != KafkaError.TOPIC_ALREADY_EXISTS:
                        problems[spec.name] = f"create failed: {error}"
                        continue
                except Exception as exc:  # future timed out or client-side failure
                    problems[spec.name] = f"create failed: {exc!r}"
                    continue
                # Created, or created meanwhile by someone else: verify on the next round.
                problems[spec.name] = "created, not yet visible in metadata"

        if not problems:
            return
        if time.monotonic() + _RETRY_PAUSE >= deadline:
            detail = "; ".join(f"{name}: {why}" for name, why in sorted(problems.items()))
            raise TopicSetupError(f"topics not ready on {bootstrap} before the deadline: {detail}")
        if not created_now:
            # New topics usually show up at once, so only pause when nothing was created.
            time.sleep(_RETRY_PAUSE)
