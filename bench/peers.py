"""The counter job on frameworks a user could pick instead of Faust: Quix Streams and Bytewax.

Each runs as its own process over the same input topics, and does what the ``counter``
baseline of ``bench/baselines.py`` does, plus a JSON decode: every event is parsed with
``orjson`` and counted per user (the message key, which is the ``user_id``).

``quix``
    Quix Streams: the two input topics' ``StreamingDataFrame`` s concatenated (``concat``),
    then ``update(..., stateful=True)`` keeping the count in its ``State`` (a RocksDB store
    per partition under ``--state-dir``, with its changelog topic), consumer group
    ``--group`` from the earliest offset.
``bytewax``
    Bytewax: ``bytewax.connectors.kafka`` input from the beginning, ``stateful_map`` per
    user (in memory: no recovery store is configured). Bytewax's Kafka source assigns the
    partitions itself and keeps no group offsets (``--group`` only names the client).

Both serve ``GET /count`` (events counted, and users whose count reached one) on
``--web-port`` so the benchmark can tell when they have read everything and check that they
counted each event once::

    python bench/peers.py quix --bootstrap 127.0.0.1:9092 --group b-quix --web-port 6071 \\
        --state-dir /tmp/b-quix

They need the ``bench`` extra (``pip install -e '.[bench]'``); :func:`missing` names what
is not installed. ``python bench/peers.py --check`` prints, as JSON, what each peer lacks (or
null) and the versions found, in the interpreter that runs it: ``bench/run.py`` asks the
interpreter it will run the peers with (``--peer-python``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson

INPUT_TOPICS = ("user-events", "notification-candidates")
# peer -> (module that must be importable, what to install)
REQUIRES = {
    "quix": ("quixstreams", "quixstreams"),
    "bytewax": ("bytewax.connectors.kafka", "bytewax[kafka]"),
}
NAMES = {
    "quix": "Quix Streams per-event + State counter (RocksDB)",
    "bytewax": "Bytewax stateful_map counter (in memory)",
}


def missing(peer: str) -> str | None:
    """Why ``peer`` cannot run in this interpreter, or None if it can.

    >>> missing("nothing-of-that-name")
    'unknown peer nothing-of-that-name'
    """
    if peer not in REQUIRES:
        return f"unknown peer {peer}"
    module, package = REQUIRES[peer]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if found:
        return None
    return f"{package} is not installed (pip install -e '.[bench]')"


def versions() -> dict[str, str | None]:
    """Versions of the peers' packages (and their Kafka client) in this interpreter."""
    found: dict[str, str | None] = {}
    for package in ("quixstreams", "bytewax", "confluent-kafka", "orjson"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


class Counts:
    """Events counted and distinct users, read by the ``/count`` page from another thread."""

    def __init__(self) -> None:
        self.seen = 0
        self.users = 0

    def add(self, new_count: int) -> None:
        self.seen += 1
        if new_count == 1:
            self.users += 1

    def serve(self, port: int) -> ThreadingHTTPServer:
        counts = self

        class Page(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = orjson.dumps({"count": counts.seen, "users": counts.users})
                self.send_response(200 if self.path == "/count" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Page)
        threading.Thread(target=server.serve_forever, name="count-page", daemon=True).start()
        return server


def run_quix(args: argparse.Namespace, counts: Counts) -> None:
    from quixstreams import Application, State

    app = Application(
        broker_address=args.bootstrap, consumer_group=args.group,
        auto_offset_reset="earliest", state_dir=args.state_dir, loglevel="WARNING",
    )

    def count(value: bytes, state: State) -> None:
        orjson.loads(value)
        total = state.get("count", 0) + 1
        state.set("count", total)
        counts.add(total)

    frames = []
    for name in INPUT_TOPICS:
        topic = app.topic(name, key_deserializer="bytes", value_deserializer="bytes")
        # tansu's DescribeConfigs leaves retention.ms out, and Quix Streams needs it to derive
        # the changelog topic's config: say "keep forever", as the topics are created.
        topic.broker_config.extra_config.setdefault("retention.ms", "-1")
        frames.append(app.dataframe(topic))
    # One count per user over both topics (like the Faust counter's one Table): a stateful
    # step on each topic's own dataframe would keep one store, and one count, per topic.
    events = frames[0].concat(frames[1])
    events.update(count, stateful=True)
    app.run()


def run_bytewax(args: argparse.Namespace, counts: Counts) -> None:
    import bytewax.operators as op
    from bytewax.connectors.kafka import operators as kop
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.run import cli_main
    from confluent_kafka import OFFSET_BEGINNING

    class Discard(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            pass

    class DiscardSink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Discard:
            return Discard()

    def parse(message: Any) -> tuple[str, Any]:
        return (message.key or b"").decode(), orjson.loads(message.value)

    def count(total: int | None, _event: Any) -> tuple[int, int]:
        total = (total or 0) + 1
        counts.add(total)
        return total, total

    flow = Dataflow("bench-counter")
    read = kop.input("kafka-in", flow, brokers=[args.bootstrap], topics=list(INPUT_TOPICS),
                     starting_offset=OFFSET_BEGINNING, add_config={"client.id": args.group})
    keyed = op.map("parse", read.oks, parse)
    counted = op.stateful_map("count", keyed, count)
    op.output("discard", counted, DiscardSink())
    cli_main(flow, workers_per_process=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("peer", nargs="?", choices=sorted(REQUIRES))
    parser.add_argument("--check", action="store_true",
                        help="print what each peer lacks and the versions found, then exit")
    parser.add_argument("--bootstrap", help="host:port of the broker")
    parser.add_argument("--group")
    parser.add_argument("--web-port", type=int)
    parser.add_argument("--state-dir")
    args = parser.parse_args()
    if args.check:
        sys.stdout.buffer.write(orjson.dumps({"missing": {p: missing(p) for p in REQUIRES},
                                              "versions": versions()}) + b"\n")
        return
    if args.peer is None or None in (args.bootstrap, args.group, args.web_port, args.state_dir):
        parser.error("a peer, --bootstrap, --group, --web-port and --state-dir are required")
    counts = Counts()
    counts.serve(args.web_port)
    (run_quix if args.peer == "quix" else run_bytewax)(args, counts)


if __name__ == "__main__":
    main()
