"""docs/replay.md quotes replay figures: they must be what the code gives today.

The ``obd-sample`` block (the vendored Open Bandit slices and a simulated log) is generated
again in-process, exactly as ``pushflow replay-figures`` does; the test fails when the
document's block differs. The full Open Bandit samples are not shipped, so their block is
checked only by ``pushflow replay-figures --obp obp-0.5.7.tar.gz --check``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from streams import docfigures
from streams.docfigures import DOC, replace_block, replay_figures_command, sample_block


@pytest.fixture(scope="module")
def generated() -> str:
    pytest.importorskip("lightgbm")  # the tables have a LightGBM row
    return sample_block()


def test_the_sample_figures_of_the_replay_doc_are_what_the_code_gives(generated: str) -> None:
    text = DOC.read_text()
    assert replace_block(text, "obd-sample", generated) == text, (
        "docs/replay.md's obd-sample figures differ from the code's: run "
        "`python -m streams replay-figures` (with --obp for the full samples) and re-read "
        "the text around the tables")


def test_the_block_names_its_command_and_every_baseline(generated: str) -> None:
    assert "`pushflow replay-figures`" in generated
    for name in ("running_constant", "per_user", "per_content", "per_creator", "per_kind",
                 "batch_lr", "lightgbm", "constant"):
        assert re.search(rf"^\| {name} \|", generated, re.MULTILINE), name


def test_check_fails_on_a_stale_document(
    tmp_path: Path, generated: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docfigures, "sample_block", lambda: generated)  # generated once
    stale = tmp_path / "replay.md"
    stale.write_text("<!-- figures:obd-sample begin -->\nold\n<!-- figures:obd-sample end -->\n")
    result = CliRunner().invoke(replay_figures_command, ["--doc", str(stale), "--check"])
    assert result.exit_code == 1 and "differ" in result.output
    result = CliRunner().invoke(replay_figures_command, ["--doc", str(stale)])
    assert result.exit_code == 0 and generated in stale.read_text()
