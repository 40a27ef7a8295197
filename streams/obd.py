"""Open Bandit Dataset (OBD) -> pushflow input messages, to replay real logged clicks.

OBD (ZOZOTOWN; Saito, Aihara, Matsutani, Narita 2020) logs fashion items shown by a bandit
policy, each with the exact probability that the policy chose it (``propensity_score``) and
whether it was clicked. Each logged impression becomes, for one synthetic user (a hash of the
four user-feature columns):

1. an ``app_open`` at the impression time: the user was on the site;
2. a ``notification-candidate`` for the shown item (``content_id`` ``item-{item_id}``, the
   same for every impression of that item; OBD names no brand or seller, so no
   ``creator_id``), its kind from the item's category, with
   what the logging policy did in the envelope: ``logged_action: send``,
   ``logging_propensity`` and ``logged_reward`` (the click);
3. one second later, ``push_opened`` naming the intent id our worker gives that candidate if
   it was clicked; else nothing (the label expires as not opened), or ``push_dismissed``.

``docs/replay.md`` states the mapping's limits.

>>> row = {"": "7", "timestamp": "2019-11-24 00:00:34.762830+00:00", "item_id": "3",
...        "position": "2", "click": "1", "propensity_score": "0.0125", "user_feature_0": "a",
...        "user_feature_1": "b", "user_feature_2": "c", "user_feature_3": "d"}
>>> [(e["topic"], e["value"].get("type")) for _, e in impression(row, {}, "random-all")]
[('user-events', 'app_open'), ('notification-candidates', None), ('user-events', 'push_opened')]
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import itertools
import tarfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import click
import orjson

from streams.contracts import intent_id_for
from streams.progress import bar, done

TZ = "Asia/Tokyo"  # ZOZOTOWN serves Japan; the log's timestamps are UTC
FEEDBACK_DELAY_MS = 1_000  # OBD has no click time: feedback lands one second after
EXPIRY_MS = 3_600_000
USER_COLUMNS = tuple(f"user_feature_{i}" for i in range(4))
POLICIES, CAMPAIGNS = ("random", "bts"), ("all", "men", "women")
NO_CLICK = ("silent", "dismissed")


def synthetic_user_id(row: Mapping[str, str]) -> str:
    """A stable id for the rows sharing all four user features (a cohort, not a person).

    >>> synthetic_user_id(dict.fromkeys(USER_COLUMNS, "x"))
    'obd-365016eeacc27f23'
    """
    joined = "\x1f".join(row[c] for c in USER_COLUMNS).encode()
    return "obd-" + hashlib.blake2b(joined, digest_size=8).hexdigest()


def item_kinds(rows: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """item_id -> candidate kind, from the item's hashed category (``item_feature_1``).

    >>> item_kinds([{"item_id": "0", "item_feature_1": "aed790911d03"}])
    {'0': 'item_cat_aed790'}
    """
    return {row["item_id"]: f"item_cat_{row['item_feature_1'][:6]}" for row in rows}


def _epoch_ms(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp() * 1000)


def impression(
    row: Mapping[str, str], kinds: Mapping[str, str], source: str, no_click: str = "silent"
) -> list[tuple[int, dict[str, Any]]]:
    """The (event time, envelope) lines of one logged impression."""
    at_ms, user_id = _epoch_ms(row["timestamp"]), synthetic_user_id(row)
    candidate_id = f"obd-{source}-{row['']}"
    item, clicked = row["item_id"], int(row["click"])
    visit = _event(f"{candidate_id}:visit", user_id, "app_open", at_ms, None)
    candidate = {
        "candidate_id": candidate_id, "user_id": user_id, "kind": kinds.get(item, "item_unknown"),
        "content_id": f"item-{item}", "created_at_ms": at_ms,
        "expires_at_ms": at_ms + EXPIRY_MS, "tz": TZ,
        "title": f"item {item} at position {row['position']}",
    }
    logged = {"logged_action": "send", "logging_propensity": float(row["propensity_score"]),
              "logged_reward": clicked}
    lines = [(at_ms, _envelope("user-events", visit)),
             (at_ms, {**_envelope("notification-candidates", candidate), **logged})]
    if clicked or no_click == "dismissed":
        kind = "push_opened" if clicked else "push_dismissed"
        feedback = _event(f"{candidate_id}:{kind}", user_id, kind, at_ms + FEEDBACK_DELAY_MS,
                          intent_id_for(user_id, candidate_id))
        lines.append((at_ms + FEEDBACK_DELAY_MS, _envelope("user-events", feedback)))
    return lines


def _event(event_id: str, user_id: str, kind: str, at_ms: int, intent: str | None) -> dict:
    event = {"event_id": event_id, "user_id": user_id, "type": kind, "event_time_ms": at_ms,
             "tz": TZ}
    if intent is not None:
        event["intent_id"] = intent
    else:
        event["props"] = {"source": "obd_impression"}
    return event


def _envelope(topic: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"topic": topic, "key": value["user_id"], "value": value}


def convert(
    rows: Iterable[Mapping[str, str]],
    kinds: Mapping[str, str],
    source: str,
    no_click: str = "silent",
) -> Iterator[dict[str, Any]]:
    """Envelopes of every impression, in event-time order (rows are in time order)."""
    delayed: deque[tuple[int, dict[str, Any]]] = deque()
    for row in rows:
        lines = impression(row, kinds, source, no_click)
        while delayed and delayed[0][0] <= lines[0][0]:
            yield delayed.popleft()[1]
        yield from (envelope for at, envelope in lines if at == lines[0][0])
        delayed.extend(line for line in lines if line[0] > lines[0][0])
    yield from (envelope for _, envelope in delayed)


# --- where the sample is ----------------------------------------------------------------


def installed_obd() -> Path:
    """``dataset/obd`` of the installed ``obp`` package, or FileNotFoundError."""
    spec = importlib.util.find_spec("obp")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "obp is not installed (obp 0.5.7 needs Python < 3.11): pass --data with the "
            "obp-0.5.7.tar.gz from `pip download --no-deps --ignore-requires-python "
            "obp==0.5.7`, or a directory holding {policy}/{campaign}/{campaign}.csv"
        )
    return Path(spec.origin).parent / "dataset" / "obd"


def open_sample(data: Path, policy: str, campaign: str, stack: ExitStack) -> list[TextIO]:
    """[log rows, item context] text streams from an obd directory or the obp sdist."""
    names = [f"{policy}/{campaign}/{campaign}.csv", f"{policy}/{campaign}/item_context.csv"]
    if data.is_dir():
        return [stack.enter_context(open(data / name, newline="")) for name in names]
    archive = stack.enter_context(tarfile.open(data))  # noqa: SIM115 - the stack closes it
    members = {m.name.split("dataset/obd/", 1)[-1]: m for m in archive.getmembers()}
    streams: list[TextIO] = []
    for name in names:
        member = members.get(name)
        raw = archive.extractfile(member) if member is not None else None
        if raw is None:
            raise FileNotFoundError(f"{data} holds no {name}")
        streams.append(io.TextIOWrapper(raw, newline=""))
    return streams


def write_jsonl(envelopes: Iterable[dict[str, Any]], out: Any) -> int:
    """One envelope per line; returns the number of lines written."""
    count = 0
    for count, envelope in enumerate(envelopes, 1):  # noqa: B007 - the count is the result
        out.write(orjson.dumps(envelope) + b"\n")
    return count


@click.group("convert")
def convert_command() -> None:
    """Convert public logged data sets into a replayable JSONL log."""


@convert_command.command("obd")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="obd directory or obp-0.5.7.tar.gz (default: the installed obp package).")
@click.option("--policy", type=click.Choice(POLICIES), default="random", show_default=True,
              help="Logging policy of the sample: uniform random or Bernoulli TS.")
@click.option("--campaign", type=click.Choice(CAMPAIGNS), default="all", show_default=True,
              help="Campaign of the sample: all items, or the men's or women's.")
@click.option("--no-click", type=click.Choice(NO_CLICK), default="silent", show_default=True,
              help="An impression without a click: no feedback (expires), or push_dismissed.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Convert only the first N impressions.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              show_default=True, help="Where the JSONL goes (- : stdout).")
def obd(data: Path | None, policy: str, campaign: str, no_click: str, limit: int | None,
        output: str) -> None:
    """Open Bandit Dataset sample -> JSONL of pushflow messages with logging propensities."""
    try:
        root = data if data is not None else installed_obd()
        with ExitStack() as stack:
            log_file, items_file = open_sample(root, policy, campaign, stack)
            kinds = item_kinds(csv.DictReader(items_file))
            rows = csv.DictReader(log_file)
            limited = itertools.islice(rows, limit)
            with bar(limit, "convert", "rows") as shown:
                envelopes = convert(_counted(limited, shown), kinds, f"{policy}-{campaign}",
                                    no_click)
                with click.open_file(output, "wb") as out:
                    count = write_jsonl(envelopes, out)
    except FileNotFoundError as exc:
        raise click.UsageError(str(exc)) from None
    except KeyError as exc:  # a CSV without a column the converter needs
        raise click.UsageError(f"{data}: no column {exc} in the sample: not an obd CSV") from None
    except tarfile.TarError:
        raise click.UsageError(f"{data}: neither an obd directory nor a tar archive") from None
    except (OSError, csv.Error, ValueError) as exc:
        raise click.UsageError(f"{data}: {exc}") from None
    done(f"convert: wrote {count} lines to {output}")


def _counted(rows: Iterable[dict[str, str]], shown: Any) -> Iterator[dict[str, str]]:
    for row in rows:
        shown.update(1)
        yield row
