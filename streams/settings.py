"""One frozen ``Settings`` object, built once from the environment and CLI flags.

Every field ``name`` is read from the environment variable ``PUSHFLOW_<NAME>``; CLI flags
override the environment. The pure core receives the values it needs as arguments, never the
environment.

>>> s = Settings.from_env({"PUSHFLOW_THRESHOLD": "0.2", "PUSHFLOW_PARTITIONS": "4"})
>>> s.threshold, s.partitions, s.broker
(0.2, 4, None)
>>> Settings.from_env({}, sasl_password="hunter2")
Settings(...sasl_password=Secret('**********')...)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from streams.challengers import parse_spec, parse_specs
from streams.contracts import whole_dead_letter_bytes
from streams.errors import ConfigError

ENV_PREFIX = "PUSHFLOW_"
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# What a producer request needs around one record besides its key and value (batch and record
# headers, a few varints): the producers' limits are the largest output plus this.
RECORD_FRAMING_BYTES = 1024
MAX_PRODUCER_BYTES = 1_000_000_000  # librdkafka's ceiling for message.max.bytes


class Secret:
    """A string that never shows itself in ``repr``, logs or metrics.

    >>> Secret("hunter2")
    Secret('**********')
    >>> Secret("hunter2").get()
    'hunter2'
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, repr=True)
class Settings:
    """Configuration of one pushflow process. See ``docs/configuration.md`` for meanings."""

    # --- broker and topics
    broker: str | None = None  # kafka://host:port[,host:port]; None = embedded broker
    app_id: str = "pushflow"
    partitions: int = 8
    replication: int = 1
    topic_prefix: str = ""
    user_events_topic: str = "user-events"
    candidates_topic: str = "notification-candidates"
    intents_topic: str = "notification-intents"
    decisions_topic: str = "notification-decisions"
    dead_letters_topic: str = "dead-letters"
    training_topic: str = "training-examples"
    snapshots_topic: str = "model-snapshots"
    ticks_topic: str = "event-time-ticks"
    # sends, opens and dismissals keyed by content and creator, and what every worker reads
    # of them (streams.item_stats)
    item_feedback_topic: str = "item-feedback"
    item_stats_topic: str = "item-stats"
    session_timeout_s: float = 10.0
    # how long a command waits for the broker before it gives up with an error
    startup_timeout_s: float = 60.0
    # inputs decided per batch, and how long a batch waits to fill (adds to latency)
    batch_max: int = 500
    batch_wait_s: float = 0.01
    # "batched": each fetch of the inputs is handed over at once (streams.ingestion);
    # "faust": record by record through Faust's agent (the path before it, for comparison)
    ingestion: str = "batched"
    # --- security (passed through to both Kafka clients)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: str | None = None
    # mutual TLS: this client's certificate and private key (PEM), both or neither
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: Secret | None = None
    # --- input limits
    max_message_bytes: int = 65536
    late_tolerance_s: int = 7 * 24 * 3600
    max_future_s: int = 24 * 3600
    # the largest record (key + value) the worker writes: at most what the broker accepts
    # (Kafka's default message.max.bytes is 1048588); bigger dead letters are cut to fit
    max_output_bytes: int = 1_000_000
    # how far event time may run ahead of its record's broker timestamp and still move the
    # partition's clock (ticks: label expiry, held pushes of silent users)
    max_clock_skew_s: int = 300
    # --- model and learning
    threshold: float = 0.08
    attribution_window_s: int = 3600
    learning_rate: float = 0.05
    # the model every worker scores with, and the models shadowed beside it on the same
    # labels (space-separated specs: NAME or NAME:key=value,...; streams.challengers)
    model: str = "hashed-lr"
    challengers: str = "hashed-lr-fast"
    seed: int = 42
    snapshot_every: int = 200
    snapshot_interval_s: float = 5.0
    # HMAC-SHA256 key of model snapshots: the trainer signs, followers refuse unsigned ones
    snapshot_key: Secret | None = None
    # item statistics: half-life of their decayed counts, how long an item not pushed is
    # kept, and at most how many items each worker holds
    item_half_life_s: int = 6 * 3600
    item_ttl_s: int = 7 * 24 * 3600
    item_max_items: int = 1_000_000
    # whether the model scores with them (docs/model.md: off until it measures better)
    item_features: bool = False
    # --- policy
    daily_cap: int = 5
    min_gap_s: int = 4 * 3600
    quiet_start_hour: int = 22
    quiet_end_hour: int = 8
    holdout_share: float = 0.05
    explore_share: float = 0.05
    disable_weight: float = 1.0
    dismiss_weight: float = 0.1
    critical_in_quiet_hours: bool = True
    send_time: bool = True
    send_time_min_events: int = 20
    send_time_max_hold_s: int = 12 * 3600
    send_time_slots: int = 4
    send_time_min_gain: float = 0.01
    volume_target: float = 0.0
    volume_gain: float = 0.1
    outbox_limit: int = 16
    # recent-send similarity, active now, new or returning users, disable risk (docs/policy.md)
    similar_creator_factor: float = 0.7
    similar_kind_factor: float = 0.9
    similar_window_s: int = 6 * 3600
    active_now_s: int = 120
    pool_s: int = 0
    new_user_pushes: int = 3
    new_user_inactive_s: int = 7 * 24 * 3600
    new_user_daily_cap: int = 2
    new_user_min_gap_s: int = 8 * 3600
    p_disable_cap_at: float = 0.0
    # --- state lifetime
    user_ttl_s: int = 30 * 24 * 3600
    # a decided candidate id counts as decided this long (or until its expiry, if later)
    decided_horizon_s: int = 7 * 24 * 3600
    decided_limit: int = 1024
    ttl_sweep_interval_s: float = 60.0
    # --- process
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    data_dir: str = "/var/lib/pushflow"
    log_format: str = "text"
    log_level: str = "info"
    tick_interval_s: float = 5.0
    # allocations between young-generation collections (0 = Python's own thresholds)
    gc_threshold: int = 50_000

    def __post_init__(self) -> None:
        for name in ("sasl_password", "ssl_key_password", "snapshot_key"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, Secret(getattr(self, name)))
        object.__setattr__(self, "security_protocol", self.security_protocol.upper())
        object.__setattr__(self, "sasl_mechanism", self.sasl_mechanism.upper())
        object.__setattr__(self, "log_level", self.log_level.lower())
        self._check_choice("security_protocol", PROTOCOLS)
        self._check_choice("sasl_mechanism", SASL_MECHANISMS)
        self._check_choice("log_level", LOG_LEVELS)
        if "SASL" in self.security_protocol and not (self.sasl_username and self.sasl_password):
            raise ConfigError(f"{self.security_protocol} needs sasl_username and sasl_password")
        self._check_client_certificate()
        self._check_range("threshold", 0.0, 1.0)
        self._check_range("holdout_share", 0.0, 1.0)
        self._check_range("explore_share", 0.0, 1.0)
        self._check_range("partitions", 1, 100_000)
        self._check_range("batch_max", 1, 100_000)
        self._check_range("gc_threshold", 0, 10_000_000)
        self._check_range("batch_wait_s", 0.0, 10.0)
        self._check_range("quiet_start_hour", 0, 23)
        self._check_range("quiet_end_hour", 0, 23)
        self._check_range("startup_timeout_s", 0.1, 3600.0)
        self._check_choice("log_format", ("text", "json"))
        self._check_choice("ingestion", ("batched", "faust"))
        self._check_range("decided_limit", 1, 1_000_000)
        self._check_range("item_half_life_s", 1, 365 * 24 * 3600)
        self._check_range("item_ttl_s", 1, 365 * 24 * 3600)
        self._check_range("item_max_items", 1, 100_000_000)
        self._check_range("similar_creator_factor", 0.0, 1.0)
        self._check_range("similar_kind_factor", 0.0, 1.0)
        self._check_range("similar_window_s", 0, 24 * 3600)  # sends are kept for a day
        self._check_range("active_now_s", 0, 24 * 3600)
        self._check_range("pool_s", 0, 24 * 3600)
        self._check_range("new_user_pushes", 0, 1_000_000)
        self._check_range("new_user_inactive_s", 0, 365 * 24 * 3600)
        self._check_range("new_user_daily_cap", 0, 1_000_000)
        self._check_range("new_user_min_gap_s", 0, 7 * 24 * 3600)
        self._check_range("p_disable_cap_at", 0.0, 1.0)
        if not 0 < self.decided_horizon_s <= self.user_ttl_s:
            # an idle user's state, and the ids it remembers, is deleted after user_ttl_s
            raise ConfigError(f"decided_horizon_s must be within [1, user_ttl_s = "
                              f"{self.user_ttl_s}], not {self.decided_horizon_s!r}")
        self._check_output_limits()
        object.__setattr__(self, "model", parse_spec(self.model).name)
        object.__setattr__(self, "challengers", " ".join(parse_specs(self.challengers)))
        if self.broker is not None:
            check_broker_url(self.broker)

    def _check_client_certificate(self) -> None:
        """A certificate is useless without its key and the reverse, and both go only over
        TLS: refuse half a pair rather than connect without the certificate."""
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            given, missing = (("ssl_certfile", "ssl_keyfile") if self.ssl_certfile
                              else ("ssl_keyfile", "ssl_certfile"))
            raise ConfigError(f"{given} is set without {missing}: a client certificate needs "
                              f"both (PUSHFLOW_SSL_CERTFILE and PUSHFLOW_SSL_KEYFILE)")
        if self.ssl_key_password and not self.ssl_keyfile:
            raise ConfigError("ssl_key_password is set without ssl_keyfile")
        if self.ssl_certfile and "SSL" not in self.security_protocol:
            raise ConfigError(f"a client certificate is sent only over TLS: set "
                              f"security_protocol SSL or SASL_SSL, not {self.security_protocol}")

    def _check_output_limits(self) -> None:
        """Every input within ``max_message_bytes`` must fit whole in its dead letter, and
        the largest output must be sendable: else a valid setting would crash at run time."""
        self._check_range("max_message_bytes", 1, MAX_PRODUCER_BYTES)
        self._check_range("max_output_bytes", 1, MAX_PRODUCER_BYTES - RECORD_FRAMING_BYTES)
        needed = whole_dead_letter_bytes(self.max_message_bytes)
        if needed > self.max_output_bytes:
            raise ConfigError(
                f"max_message_bytes={self.max_message_bytes} needs outputs of up to {needed} "
                f"bytes (its dead letter holds the input in base64), more than "
                f"max_output_bytes={self.max_output_bytes}: lower the one or raise the other")

    @property
    def producer_max_bytes(self) -> int:
        """The producers' request limit (librdkafka ``message.max.bytes``, Faust's
        ``producer_max_request_size``): the largest output and its framing.

        >>> Settings().producer_max_bytes
        1001024
        """
        return self.max_output_bytes + RECORD_FRAMING_BYTES

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}")

    def _check_range(self, name: str, low: float, high: float) -> None:
        value = getattr(self, name)
        if not low <= value <= high:
            raise ConfigError(f"{name} must be within [{low}, {high}], not {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build from ``PUSHFLOW_*`` variables; keyword overrides (CLI flags) win."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _convert(f.name, f.type, raw)
        for name, value in overrides.items():
            if value is not None:
                values[name] = _convert(name, _field_type(name), value)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def topic(self, name: str) -> str:
        """Full topic name of the logical topic field ``name`` (e.g. ``"intents_topic"``)."""
        return self.topic_prefix + getattr(self, name)

    @property
    def bootstrap_servers(self) -> str:
        if self.broker is None:
            raise ConfigError("no broker configured")
        return self.broker.removeprefix("kafka://")

    def confluent_config(self) -> dict[str, str]:
        """Client configuration for confluent-kafka, security included."""
        config = {"bootstrap.servers": self.bootstrap_servers}
        config["security.protocol"] = self.security_protocol
        if "SASL" in self.security_protocol:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username or ""
            password = self.sasl_password
            config["sasl.password"] = password.get() if isinstance(password, Secret) else ""
        if self.ssl_cafile:
            config["ssl.ca.location"] = self.ssl_cafile
        if self.ssl_certfile and self.ssl_keyfile:
            config["ssl.certificate.location"] = self.ssl_certfile
            config["ssl.key.location"] = self.ssl_keyfile
        if self.ssl_key_password:
            config["ssl.key.password"] = self.ssl_key_password.get()
        return config

    def transport_warning(self) -> str | None:
        """What is unsafe about the connection to the brokers, in one line; None if nothing.

        >>> Settings(security_protocol="SASL_PLAINTEXT", sasl_username="svc",
        ...          sasl_password="x").transport_warning()  # doctest: +ELLIPSIS
        'security_protocol SASL_PLAINTEXT: the SASL PLAIN password and every message...'
        >>> Settings(security_protocol="SASL_SSL", sasl_username="svc",
        ...          sasl_password="x").transport_warning() is None
        True
        """
        if self.security_protocol != "SASL_PLAINTEXT":
            return None
        if self.sasl_mechanism == "PLAIN":
            exposed = "the SASL PLAIN password and every message cross the network unencrypted"
        else:
            exposed = (f"{self.sasl_mechanism} keeps the password off the wire, but every "
                       f"message crosses it unencrypted and the brokers are not authenticated")
        return (f"security_protocol SASL_PLAINTEXT: {exposed}; set "
                f"PUSHFLOW_SECURITY_PROTOCOL=SASL_SSL (and PUSHFLOW_SSL_CAFILE for a private CA)")


def check_broker_url(url: str) -> None:
    """A ConfigError unless ``url`` is ``kafka://host:port[,host:port]``.

    >>> check_broker_url("kafka://a:9092,b:9093")
    >>> check_broker_url("localhost:9092")
    Traceback (most recent call last):
    ...
    streams.errors.ConfigError: broker must look like kafka://host:port, not 'localhost:9092'
    """
    servers = url.removeprefix("kafka://")
    if servers == url or not servers:
        raise ConfigError(f"broker must look like kafka://host:port, not {url!r}")
    for server in servers.split(","):
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"broker must look like kafka://host:port, not {url!r} ({server!r} has no "
                "host or no port within 1-65535)")


def _field_type(name: str) -> str:
    for f in fields(Settings):
        if f.name == name:
            return str(f.type)
    raise ConfigError(f"unknown setting {name!r}")


def _convert(name: str, type_name: Any, raw: Any) -> Any:
    type_name = str(type_name)
    if not isinstance(raw, str):
        return Secret(raw) if "Secret" in type_name and isinstance(raw, str) else raw
    try:
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        if type_name.startswith("bool"):
            return raw.strip().lower() in ("1", "true", "yes", "on")
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from None
    if "Secret" in type_name:
        return Secret(raw)
    return raw
