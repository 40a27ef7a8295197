"""The worker's web server serves ``/metrics``, ``/healthz`` and ``/readyz``, nothing of Faust's.

Faust mounts pages of its own on every worker's web server, without authentication:
``/router/`` (the URL of every worker), ``/table/`` (table keys and values), statistics,
the service graph, and a status index at ``/``. pushflow turns each one off: with a Faust
setting where Faust has one (:data:`FAUST_PAGES_OFF`), and with :class:`WebWithoutRootIndex`
for the index, which no setting reaches. Any other path answers 404.

>>> sorted(FAUST_PAGES_OFF)[:2]
['debug', 'web_graph_enabled']
>>> WebWithoutRootIndex.production_blueprints
()
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import faust
from faust.web.base import Web
from faust.web.drivers.aiohttp import Web as AiohttpWeb

# Faust's own pages, each off by its own setting (faust/types/settings/settings.py,
# web_*_enabled; faust/web/base.py BLUEPRINT_FLAGS).
FAUST_PAGES_OFF: dict[str, bool] = {
    "web_router_enabled": False,  # /router/: which worker owns which key, every worker's URL
    "web_tables_enabled": False,  # /table/: table names, keys and values
    "web_stats_enabled": False,  # / and /assignment/: sensor counters, partitions
    "web_graph_enabled": False,  # /graph/: the worker's service tree
    "web_metrics_enabled": False,  # /performance/: Faust's monitor as JSON
    "debug": False,  # the default of the stats and graph settings above
}


class WebWithoutRootIndex(AiohttpWeb):
    """Faust's aiohttp web server without the status index Faust mounts at ``/``.

    Faust serves ``{"status": "OK"}`` at ``/`` whenever its statistics page is off, and no
    setting turns that index off: ``Web._enabled_blueprints`` always adds
    ``PRODUCTION_BLUEPRINTS`` then
    (https://github.com/faust-streaming/faust/blob/master/faust/web/base.py). With none,
    ``/`` answers 404 like every path that is not one of pushflow's pages.
    """

    production_blueprints: ClassVar[tuple[tuple[str, str], ...]] = ()
    logger = logging.getLogger("faust.web.pushflow")  # quiet at info, as AppWithoutRootIndex


class AppWithoutRootIndex(faust.App):
    """A Faust app whose web server is :class:`WebWithoutRootIndex`.

    Faust builds its web server from the ``web`` setting, a driver URL (``aiohttp://``) that
    cannot name a class of ours (faust/app/base.py ``App._new_web``), so the app picks it.
    """

    # mode names a subclass's logger after its module (streams.web): one under "faust", so its
    # service steps stay quiet at info like the rest of Faust (streams.logs)
    logger = logging.getLogger("faust.app.pushflow")

    def _new_web(self) -> Web:
        return WebWithoutRootIndex(self)


def web_settings(host: str, port: int) -> dict[str, Any]:
    """Faust's web settings for a server on ``host:port`` with only pushflow's pages."""
    return {**FAUST_PAGES_OFF, "web_enabled": True, "web_port": port, "web_bind": host,
            "web_host": host}
