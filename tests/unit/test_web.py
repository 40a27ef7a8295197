"""The worker's web server routes /metrics, /healthz and /readyz and nothing of Faust's,
whatever Faust's own environment variables say. (Served over HTTP on a real broker:
tests/integration/test_decision_loop.py.)"""

from __future__ import annotations

from pathlib import Path

import faust
import pytest
from prometheus_client import CollectorRegistry

from streams.app import PushflowWorker
from streams.settings import Settings

OUR_PAGES = {"/metrics", "/healthz", "/readyz", "/items", "/models"}
# Faust's settings read from the environment, each of which would open one of its pages or
# move the server off the configured address if the worker read them.
FAUST_ENV = {
    "APP_DEBUG": "1",
    "APP_WEB_ROUTER_ENABLED": "1",
    "APP_WEB_TABLES_ENABLED": "1",
    "APP_WEB_STATS_ENABLED": "1",
    "APP_WEB_GRAPH_ENABLED": "1",
    "APP_WEB_METRICS_ENABLED": "1",
    "WEB_BIND": "0.0.0.0",
    "WEB_PORT": "1",
}


def routes(app: faust.App) -> set[str]:
    web = app.web
    web.init_server()
    return {route.resource.canonical for route in web.web_app.router.routes()}  # type: ignore


def worker(tmp_path: Path) -> PushflowWorker:
    settings = Settings.from_env({}, broker="kafka://127.0.0.1:9092", data_dir=str(tmp_path),
                                 web_host="127.0.0.1", web_port=6077)
    return PushflowWorker(settings, registry=CollectorRegistry())


def test_faust_alone_serves_its_own_pages() -> None:
    """What the worker turns off: a Faust app at its defaults routes these."""
    served = routes(faust.App("plain-faust", store="memory://"))
    assert {"/", "/router/", "/router/topics", "/table/"} <= served


def test_the_worker_routes_only_its_own_pages(tmp_path: Path) -> None:
    assert routes(worker(tmp_path).app) == OUR_PAGES


def test_faust_environment_variables_open_no_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in FAUST_ENV.items():
        monkeypatch.setenv(name, value)
    app = worker(tmp_path).app
    assert routes(app) == OUR_PAGES
    assert (app.conf.web_bind, app.conf.web_port) == ("127.0.0.1", 6077)
