"""Run one worker process: broker (embedded if none is configured), topics, model, Faust."""

from __future__ import annotations

import contextlib
import logging

import faust

from streams.admin import ensure_topics
from streams.app import PushflowWorker, tls_context
from streams.broker import EmbeddedBroker
from streams.garbage import tune_gc
from streams.item_service import ItemStatsFollower
from streams.settings import Settings
from streams.snapshots import SnapshotFollower
from streams.topics import topic_specs

log = logging.getLogger("pushflow")

def run_worker(settings: Settings) -> None:
    """Block until the worker stops (SIGTERM / SIGINT stop it cleanly)."""
    tune_gc(settings.gc_threshold)
    if "SSL" in settings.security_protocol:
        tls_context(settings)  # unusable TLS files: one clear error before any client starts
    with contextlib.ExitStack() as stack:
        if settings.broker is None:
            broker = stack.enter_context(EmbeddedBroker())
            settings = settings.replace(broker=broker.url)
            log.warning("no broker configured: started an embedded %s broker at %s",
                        broker.kind, broker.url)
        ensure_topics(settings.bootstrap_servers, topic_specs(settings),
                      client_config=settings.confluent_config(),
                      timeout=settings.startup_timeout_s)
        worker = PushflowWorker(settings)
        follower = SnapshotFollower(
            settings.confluent_config(),
            settings.topic("snapshots_topic"),
            worker.models,
            on_swap=worker.metrics.model_version.set,
        )
        follower.catch_up(timeout=30)
        if worker.models.published_at_ms is None:
            log.info("cold start: no model snapshot found, starting from a fresh model")
        else:
            log.info("warm start from model snapshot version %d", worker.models.serving.version)
        worker.metrics.model_version.set(worker.models.serving.version)
        follower.start()
        stack.callback(follower.stop)
        refused = worker.metrics.item_stats_refused
        items = ItemStatsFollower(
            settings.confluent_config(), settings.topic("item_stats_topic"), settings.partitions,
            worker.item_stats, on_refused=lambda reason: refused.labels(reason=reason).inc())
        items.catch_up(timeout=30)
        items.start()
        stack.callback(items.stop)
        log.info("worker %s starting; metrics on http://%s:%d/metrics",
                 settings.app_id, settings.web_host, settings.web_port)
        faust_worker = faust.Worker(
            worker.app,
            loglevel=settings.log_level,
            override_logging=False,
            quiet=True,
            redirect_stdouts=False,
        )
        faust_worker.spinner = None  # it writes terminal codes into the (JSON) log stream
        faust_worker.execute_from_commandline()
