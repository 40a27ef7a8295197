"""Two reference Faust apps that bound what the pushflow worker could reach on one process.

``noop``
    Reads the input topics in batches (``stream.take(1000, within=1)``) and does nothing per
    event: Faust's own ceiling on this machine and broker.
``counter``
    A plain per-event agent with one Table counter per user (``table[key] += 1``): one
    changelog record per event, the cost every naive stateful Faust agent pays.

Each runs as its own process with its own app id (= consumer group) and serves the number of
events it has seen at ``GET /count`` so the benchmark can tell when it has read everything::

    python bench/baselines.py noop --broker kafka://127.0.0.1:9092 --app-id b-noop \\
        --web-port 6070 --data-dir /tmp/b-noop
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

import faust

INPUT_TOPICS = ("user-events", "notification-candidates")


class Baseline:
    """One Faust app with one agent over the input topics and a ``/count`` page."""

    def __init__(self, kind: str, broker: str, app_id: str, web_port: int, data_dir: str,
                 partitions: int, session_timeout_s: float) -> None:
        self.kind = kind
        self.seen = 0
        self.app = faust.App(
            app_id, broker=broker, store="memory://", topic_partitions=partitions,
            broker_session_timeout=session_timeout_s,
            broker_heartbeat_interval=max(0.5, session_timeout_s / 5),
            consumer_auto_offset_reset="earliest", web_enabled=True, web_port=web_port,
            web_bind="127.0.0.1", web_host="127.0.0.1", datadir=data_dir, autodiscover=False,
        )
        self.inputs = self.app.topic(*INPUT_TOPICS, key_type=bytes, value_type=bytes,
                                     key_serializer="raw", value_serializer="raw")
        self.counts = self.app.Table(
            "events-per-user", default=int, partitions=partitions,
            schema=faust.Schema(key_type=bytes, key_serializer="raw", value_serializer="json"),
        )
        agent = self._noop_agent if kind == "noop" else self._counter_agent
        self.app.agent(self.inputs, name=f"baseline.{kind}")(agent)
        self._add_count_page()

    async def _noop_agent(self, stream: faust.StreamT) -> AsyncIterator[None]:
        async for batch in stream.take(1000, within=1):
            self.seen += len(batch)
            yield None

    async def _counter_agent(self, stream: faust.StreamT) -> AsyncIterator[None]:
        async for event in stream.events():
            self.counts[event.key] += 1
            self.seen += 1
            yield None

    def _add_count_page(self) -> None:
        baseline = self

        async def count(web: Any, request: Any) -> Any:  # Faust pages are plain functions
            return web.json({"count": baseline.seen, "kind": baseline.kind})

        self.app.page("/count", name="baseline-count")(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("noop", "counter"))
    parser.add_argument("--broker", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--web-port", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--session-timeout", type=float, default=6.0)
    args = parser.parse_args()
    baseline = Baseline(args.kind, args.broker, args.app_id, args.web_port, args.data_dir,
                        args.partitions, args.session_timeout)
    faust.Worker(baseline.app, loglevel="warning", quiet=True,
                 redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
