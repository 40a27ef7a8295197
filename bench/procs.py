"""Worker processes for the benchmark: start, poll over HTTP, measure memory, stop by PID.

Every wait is a loop on a condition with a deadline; a process that misses one is stopped and
its log tail is part of the error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
POLL_S = 0.2


class BenchError(RuntimeError):
    """A benchmark step did not reach its condition before its deadline."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], T | None], deadline_s: float, what: str,
             poll_s: float = POLL_S) -> T:
    """Poll ``condition`` until it returns something truthy; BenchError after the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise BenchError(f"timed out after {deadline_s:.0f}s waiting for {what}")
        time.sleep(poll_s)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """(status, body), or None while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return None


@dataclass
class Proc:
    """One child process we started, with its log file and web port."""

    name: str
    argv: list[str]
    web_port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    stopped: dict[str, float | bool] = field(default_factory=dict)
    # Also stop the processes this one started (found before it is asked to stop).
    tree: bool = False

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.started_at = time.monotonic()
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.web_port}{path}"

    def get(self, path: str) -> tuple[int, bytes] | None:
        self.check_alive()
        return http_get(self.url(path))

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")

    def memory_kib(self) -> dict[str, int]:
        """VmHWM (peak RSS) and VmRSS of the process, in KiB, from /proc."""
        found: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in ("VmHWM", "VmRSS"):
                    found[name] = int(rest.split()[0])
        return found

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return "<no log>"

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM this PID, wait, SIGKILL if it does not exit; returns the exit code.

        How long the graceful stop took, and whether it needed SIGKILL, is kept in
        ``stopped``: a worker killed on noida leaves its group stuck (never evicted).
        """
        popen = self.popen
        children = descendants(popen.pid) if self.tree and popen is not None else []
        try:
            return self._stop(timeout)
        finally:
            for pid in children:
                _stop_pid(pid)

    def _stop(self, timeout: float) -> int | None:
        popen = self.popen
        if popen is None or popen.returncode is not None:
            return None if popen is None else popen.returncode
        asked = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)
        try:
            code = popen.wait(timeout)
            killed = False
        except subprocess.TimeoutExpired:
            popen.kill()
            code, killed = popen.wait(10), True
        self.stopped = {"seconds": round(time.monotonic() - asked, 2), "killed": killed}
        return code


def descendants(pid: int) -> list[int]:
    """PIDs of the processes below ``pid`` (children first), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM one PID we started (indirectly), SIGKILL it if it is still there."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < end:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def _jiffies(pid: int | str) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuProbe:
    """CPU used over an interval: by our processes, and by everything else on the machine.

    Other work on a shared 2-core machine halves the figures; ``foreign_share`` (0..1 of
    all cores) says how much of the machine something else took during a measurement.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {**pids, "bench": os.getpid()}
        self.start = self._read()

    def _read(self) -> tuple[float, dict[str, int], tuple[int, int]]:
        return time.monotonic(), {n: _jiffies(p) for n, p in self.pids.items()}, _machine_jiffies()

    def report(self) -> dict[str, float]:
        (t0, ours0, (busy0, total0)), (t1, ours1, (busy1, total1)) = self.start, self._read()
        hz, span = os.sysconf("SC_CLK_TCK"), max(1, total1 - total0)
        ours = {n: (ours1[n] - ours0[n]) for n in self.pids}
        foreign = max(0, (busy1 - busy0) - sum(ours.values()))
        found = {f"cores_{n}": round(j / hz / max(1e-9, t1 - t0), 2) for n, j in ours.items()}
        return {**found, "foreign_share": round(foreign / span, 3)}


def wait_until_quiet(max_wait_s: float, share: float = 0.15, window_s: float = 2.0) -> float:
    """Wait (up to ``max_wait_s``) for a ``window_s`` in which other work used < ``share``."""
    end = time.monotonic() + max_wait_s
    while True:
        probe = CpuProbe({})
        time.sleep(window_s)  # the measurement window itself, not a synchronisation
        foreign = probe.report()["foreign_share"]
        if foreign < share or time.monotonic() > end:
            return foreign


class Procs:
    """Every process the benchmark started, so a failure anywhere still stops them all."""

    def __init__(self) -> None:
        self.running: list[Proc] = []

    def start(self, proc: Proc) -> Proc:
        self.running.append(proc.start())
        return proc

    def stop(self, proc: Proc, timeout: float = 90.0) -> int | None:
        code = proc.stop(timeout)
        if proc in self.running:
            self.running.remove(proc)
        return code

    def stop_all(self) -> None:
        for proc in list(self.running):
            self.stop(proc, timeout=10.0)
