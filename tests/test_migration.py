"""What 0.1 wrote still loads, or fails in one line naming the fix."""

from __future__ import annotations

import json

import pytest
import yaml

from histosynth.config import ConfigError, load_config, to_yaml
from histosynth.runfolder import RunFolder
from histosynth.workspace import Workspace

pytestmark = pytest.mark.unit


def test_saved_config_with_removed_fields_loads_with_a_warning(tmp_path, capsys):
    old = yaml.safe_load(to_yaml(load_config(preset="tiny-cpu")))
    old["train"] |= {"log_every": 10, "num_workers": 0}
    old["vae"]["perceptual_weight"] = 0.0
    ws = Workspace(tmp_path)
    ws.config_path.write_text(yaml.safe_dump(old))
    cfg = ws.config()
    assert not hasattr(cfg.train, "log_every") and cfg.train.steps == old["train"]["steps"]
    err = capsys.readouterr().err
    assert "train.log_every was removed" in err and "vae.perceptual_weight was removed" in err


def test_setting_a_removed_field_names_why(tmp_path):
    with pytest.raises(ConfigError, match=r"--set train.num_workers=2: train.num_workers was removed"):
        load_config(preset="tiny-cpu", overrides=["train.num_workers=2"])


def test_a_run_of_0_1_reads_its_condition_from_text_encoder_json(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.write_config(load_config(preset="tiny-cpu"))
    (run.path / "text_encoder.json").write_text(json.dumps({
        "encoder": "minilm", "context_length": 37, "long_context": "chunked", "attend_padding": False,
        "template": "{summary}", "levels": ["low", "high"], "budget": 35, "width": 384, "embeddings": "x"}))
    condition = run.read_condition()
    assert (condition.encoder, condition.context_length, condition.budget, condition.width) == ("minilm", 37, 35, 384)
    assert condition.levels == ("low", "high")


def test_a_folder_that_is_not_a_run_fails_in_one_line(tmp_path):
    from histosynth.console import HistosynthError

    with pytest.raises(HistosynthError, match="is .* a run folder made by `histosynth train`"):
        RunFolder(tmp_path).read_config()


# ---- resumable work: older markers read once, then recorded in the stage's status record ---------

def tile_one(sample_dir, ws, *overrides):
    from histosynth.sample_data import SLIDES, slide_filename
    from histosynth.slides.tiler import tile_slides

    path = sample_dir / "slides" / slide_filename(SLIDES[0].case_id)
    return path.stem, tile_slides(ws, ws.ensure_config(preset="tiny-cpu", overrides=list(overrides)), [path])


def test_tiles_without_a_status_record_are_kept_and_recorded(sample_dir, tmp_path, capsys):
    from histosynth.status import WorkLog

    ws = Workspace(tmp_path / "ws")
    unit, _ = tile_one(sample_dir, ws)
    status_path = ws.status_path(ws.tiles_dir)
    record = WorkLog(status_path).get(unit)
    assert record.state == "done" and record.output["settings"]["size"] == ws.config().slides.size
    status_path.unlink()                                   # as 0.1 left it: the HDF5 alone says what it is
    before = ws.slide_path(unit).stat().st_mtime_ns
    _, summary = tile_one(sample_dir, ws)
    assert summary["skipped_finished"] == 1 and ws.slide_path(unit).stat().st_mtime_ns == before
    assert WorkLog(status_path).get(unit).inputs == record.inputs   # read from the attributes once, recorded

    log = WorkLog(status_path)                             # the record decides: one claiming other settings
    log.mark(unit, "other", "done", output={**record.output, "settings": {**record.output["settings"], "size": 999}})
    capsys.readouterr()
    _, summary = tile_one(sample_dir, ws)
    assert summary["tiled"] == 1 and "tiles were 999 px" in capsys.readouterr().err
    assert WorkLog(status_path).done(unit, record.inputs)
