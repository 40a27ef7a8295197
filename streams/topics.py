"""The topics a pushflow deployment needs, with partitions and configs from Settings.

All input and output topics share one partition count so each user's events, candidates,
feedback and state live on one partition (co-partitioning). Model snapshots and training
examples have one partition: one trainer, every worker follows the snapshots.

>>> specs = topic_specs(Settings(partitions=4))
>>> specs["user-events"].partitions, specs["model-snapshots"].config["cleanup.policy"]
(4, 'compact')
"""

from __future__ import annotations

from streams.admin import TopicSpec
from streams.settings import Settings

CO_PARTITIONED = (
    "user_events_topic",
    "candidates_topic",
    "intents_topic",
    "decisions_topic",
    "dead_letters_topic",
)
WEEK_MS = str(7 * 24 * 3600 * 1000)
DAY_MS = str(24 * 3600 * 1000)


def topic_specs(settings: Settings) -> dict[str, TopicSpec]:
    """Topic name -> spec, for :func:`streams.admin.ensure_topics`."""
    specs = [
        TopicSpec(settings.topic(f), settings.partitions, settings.replication)
        for f in CO_PARTITIONED
    ]
    specs.append(  # the decision agent reads these with the inputs of the same partition
        TopicSpec(
            settings.topic("ticks_topic"),
            settings.partitions,
            settings.replication,
            {"retention.ms": DAY_MS},
        )
    )
    specs.append(
        TopicSpec(
            settings.topic("training_topic"), 1, settings.replication, {"retention.ms": WEEK_MS}
        )
    )
    specs.append(  # keyed by item: each record goes to the worker owning the item
        TopicSpec(
            settings.topic("item_feedback_topic"),
            settings.partitions,
            settings.replication,
            {"retention.ms": DAY_MS},
        )
    )
    specs.append(  # the newest statistics of each item, read whole by every worker
        TopicSpec(
            settings.topic("item_stats_topic"),
            settings.partitions,
            settings.replication,
            {"cleanup.policy": "compact"},
        )
    )
    specs.append(
        TopicSpec(
            settings.topic("snapshots_topic"),
            1,
            settings.replication,
            {"cleanup.policy": "compact", "max.message.bytes": str(64 * 1024 * 1024)},
        )
    )
    return {spec.name: spec for spec in specs}
