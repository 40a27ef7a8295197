"""The trainer: learns every resolved label once and publishes versioned model snapshots.

One worker trains at a time: the one that owns the single partition of ``training-examples``.
It starts from the newest snapshot (where that snapshot's ``training_offset`` says it stopped)
and publishes a snapshot every ``snapshot_every`` labels or ``snapshot_interval_s``, which every
worker, itself included, then serves (:mod:`streams.snapshots`).

Each label is learned once: examples below the restored snapshot's ``training_offset`` are
skipped on a re-read, and so is an example the decision agent emitted again after a crash (its
``source`` position is not newer than the last one learned from that input partition; the
positions travel in the snapshot). A kill -9 loses at most what was learned since the last
snapshot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from streams import challengers
from streams.challengers import Shadows
from streams.contracts import DEFAULT_MAX_BYTES, parse_training_example
from streams.evaluation import Prequential
from streams.metrics import Metrics
from streams.model import PushModel
from streams.snapshots import ModelHolder, Shadowed

log = logging.getLogger(__name__)


class Trainer:
    """Learning and snapshot publishing for the worker that owns the training partition.

    Parameters
    ----------
    models
        The worker's serving model; training starts from it and offers each snapshot to it.
    metrics
        Where learning is counted.
    publish
        Writes one snapshot (bytes) to the snapshot topic.
    snapshot_every
        Labels learned between two snapshots (a timer also publishes, see the worker).
    champion, challenger_specs
        The spec the worker scores with and the specs shadowed beside it
        (:mod:`streams.challengers`).
    defaults
        The worker's model settings a spec starts from (learning rate, seed).
    """

    def __init__(
        self,
        models: ModelHolder,
        metrics: Metrics,
        publish: Callable[[bytes], Awaitable[None]],
        snapshot_every: int,
        retry_after_s: float = 5.0,
        champion: str = "hashed-lr",
        challenger_specs: tuple[str, ...] = (),
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.models = models
        self.metrics = metrics
        self.publish = publish
        self.snapshot_every = snapshot_every
        self.model: PushModel | None = None
        self.training_offset = 0
        self.learned_upto: dict[str, list[int]] = {}
        self.last_published = -1
        self.prequential = Prequential()
        self.retry_after_s = retry_after_s
        self._retry_at = 0.0  # monotonic: no publish attempt before, after a failed one
        self.champion_spec = champion  # as configured; ``champion`` is the one trained
        self.champion = champion
        self.challenger_specs = challenger_specs
        self.defaults = dict(defaults or {})
        self.shadows = Shadows(champion, {})

    @property
    def active(self) -> bool:
        return self.model is not None

    def start(self) -> None:
        """Train here from the newest snapshot this worker serves."""
        held = self.models
        self.model, self.champion, replaced = challengers.promoted(
            self.champion_spec, held.serving, held.serving_name, held.challenger_states)
        states = dict(held.challenger_states)
        if replaced is not None:  # the old champion, learned as it is, may be judged on
            states[replaced] = held.serving.state()
        self.shadows = challengers.restore(self.champion, self.challenger_specs, states,
                                           self.defaults)
        self.training_offset = self.models.training_offset
        self.learned_upto = dict(self.models.learned_upto)
        self.last_published = self.model.version
        log.info("training here from model %s version %d (training offset %d); "
                 "challengers: %s", self.champion, self.model.version, self.training_offset,
                 ", ".join(self.shadows.models) or "none")

    def stop(self) -> None:
        self.model = None
        log.info("training moved to another worker")

    async def on_example(self, offset: int, raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        """One record of the training topic at ``offset``; a ContractError if it is not a
        valid training example (it is passed over, and learning goes on with the next)."""
        if offset >= self.training_offset:
            self.training_offset = offset + 1
            self.learn(parse_training_example(raw, max_bytes))
        if self.unpublished >= self.snapshot_every and time.monotonic() >= self._retry_at:
            await self.publish_snapshot()

    @property
    def unpublished(self) -> int:
        """Labels learned since the last snapshot."""
        return 0 if self.model is None else self.model.version - self.last_published

    def learn(self, example: dict[str, Any]) -> None:
        if self.model is None:
            self.start()
        assert self.model is not None
        if self._learned_before(example.get("source")):
            self.metrics.learned_duplicates.inc()
            return
        if example.get("p_open") is not None:
            self.prequential.update(example["p_open"], example["label"])
        features = example["features"]
        opened, disabled = bool(example["label"]), bool(example["disabled"])
        self.shadows.observe(self.model, features, opened=opened, disabled=disabled)
        self.model.learn(features, opened=opened, disabled=disabled)
        self.metrics.learned.inc()

    def _learned_before(self, source: dict[str, Any] | None) -> bool:
        """Whether an example from this source position was learned already."""
        if source is None:
            return False
        where = f"{source['topic']}:{source['partition']}"
        position = [source["offset"], source["index"]]
        if position <= self.learned_upto.get(where, [-1, -1]):
            return True
        self.learned_upto[where] = position
        return False

    async def publish_snapshot(self) -> bool:
        """Publish the model as it is; False if the broker refused or did not answer. A
        failure never stops learning: it is counted and logged, and the labels stay
        unpublished until a later attempt (not before ``retry_after_s``) succeeds."""
        assert self.model is not None
        model = self.model.clone()
        upto = dict(self.learned_upto)
        shadowed = Shadowed(self.champion, self.shadows.states(), self.comparison())
        meta = {"training_offset": self.training_offset, "learned_upto": upto,
                "model": shadowed.name, "challengers": shadowed.states,
                "comparison": shadowed.comparison}
        snapshot = self.models.encode(model, meta)
        try:
            await self.publish(snapshot)
        except Exception as exc:  # the broker's answer, whatever it is: learning goes on
            self._retry_at = time.monotonic() + self.retry_after_s
            self.metrics.snapshot_publish_failures.inc()
            log.warning("model snapshot version %d (%d bytes) not published: %s: %s; "
                        "learning goes on, next attempt in %.0fs", model.version,
                        len(snapshot), type(exc).__name__, exc, self.retry_after_s)
            return False
        self._retry_at = 0.0
        self.metrics.snapshot_bytes.set(len(snapshot))
        self.last_published = model.version
        self.models.offer(model, int(time.time() * 1000), self.training_offset, upto, shadowed)
        self.metrics.model_version.set(model.version)
        log.debug("published model snapshot version %d", model.version)
        return True

    def comparison(self) -> dict[str, dict[str, Any]]:
        """Every model's figures on the same labels (no reliability table), JSON-safe."""
        keep = ("role", "n", "window", "rolling_auc", "log_loss", "calibration_error")
        return {name: {k: _finite(report[k]) for k in keep}
                for name, report in self.shadows.report().items()}


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value
