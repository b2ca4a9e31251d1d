"""histosynth.status.WorkLog: the one resumable-work record every stage uses."""

from __future__ import annotations

import pytest

from histosynth.console import HistosynthError
from histosynth.status import WorkLog, inputs_hash

pytestmark = pytest.mark.unit


def test_done_only_with_the_same_inputs(tmp_path):
    log = WorkLog(tmp_path / "status.json")
    key = inputs_hash(mpp=0.5, size=256)
    assert key == inputs_hash(size=256, mpp=0.5) and key != inputs_hash(mpp=0.5, size=128)
    log.mark("slide-a", key, "done", output={"tiles": 3})
    again = WorkLog(tmp_path / "status.json")                 # what a rerun reads
    assert again.done("slide-a", key) and not again.done("slide-a", inputs_hash(mpp=1.0, size=256))
    assert again.changed("slide-a", inputs_hash(mpp=1.0, size=256)) and not again.changed("slide-b", key)
    again.mark("slide-b", key, "failed", error="truncated file")
    assert WorkLog(tmp_path / "status.json").by_state("failed") == ["slide-b"]


def test_two_writers_of_disjoint_units_keep_each_others_units(tmp_path):
    first, second = WorkLog(tmp_path / "status.json"), WorkLog(tmp_path / "status.json")  # e.g. two tile shards
    first.mark("a", "1", "done")
    second.mark("b", "2", "done")
    first.mark("c", "3", "done", save=False)
    first.mark("d", "4", "done", save=False)
    first.save()
    assert sorted(WorkLog(tmp_path / "status.json").units) == ["a", "b", "c", "d"]
    second.forget("a")
    assert sorted(WorkLog(tmp_path / "status.json").units) == ["b", "c", "d"]


def test_an_unreadable_record_fails_in_one_line(tmp_path):
    (tmp_path / "status.json").write_text("{not json")
    with pytest.raises(HistosynthError, match="unreadable status record"):
        WorkLog(tmp_path / "status.json")
