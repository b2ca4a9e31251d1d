"""Foundation: config, presets, workspace split, manifests, the built-in sample, the CLI."""

from __future__ import annotations

import json
import mmap
import subprocess
import sys

import numpy as np
import pytest

from histosynth.config import ConfigError, load_config, preset_dict
from histosynth.manifest import recording, redact_command
from histosynth.workspace import Workspace


def test_preset_tiny_cpu_is_small():
    cfg = load_config("tiny-cpu")
    assert cfg.slides.size == 64 and cfg.train.ema is True
    assert cfg.text.encoder == "minilm"


def test_pathldm_preset_matches_pathldm():
    cfg = load_config("pathldm")
    assert (cfg.slides.size, cfg.slides.mpp) == (256, 1.0)
    assert cfg.unet.block_out_channels == [192 * m for m in (1, 2, 3, 5)]
    assert cfg.unet.cross_attention_levels == [False, True, True, True]
    assert cfg.unet.attention_head_dim is None and cfg.unet.transformer_layers_per_block == 1
    assert (cfg.text.context_length, cfg.text.attend_padding) == (154, True)
    assert (cfg.train.lr, cfg.train.warmup_steps, cfg.train.batch_size, cfg.train.ema) == (2.5e-5, 1000, 64, False)
    assert (cfg.sample.sampler, cfg.sample.steps, cfg.sample.eta, cfg.sample.guidance) == ("ddim", 50, 0.0, 1.5)
    assert cfg.vae.latent_channels == 3 and cfg.vae.kind == "vq"


def test_pathldm_betas_are_squared_linspace_of_roots():
    from histosynth.schedules import betas_of

    betas = betas_of(load_config("pathldm").diffusion).double().numpy()
    expected = np.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2
    np.testing.assert_allclose(betas, expected, rtol=1e-6)
    # and not diffusers' plain "linear", which would be linspace(0.0015, 0.0195)
    assert abs(betas[500] - np.linspace(0.0015, 0.0195, 1000)[500]) > 1e-4


def test_rao_gupta_inherits_pathldm_and_changes_the_papers_settings():
    cfg = load_config("rao-gupta")
    assert cfg.text.encoder == "openai/clip-vit-base-patch32"
    assert (cfg.train.batch_size, cfg.train.mixed_precision, cfg.sample.guidance) == (32, "fp16", 1.75)
    assert cfg.unet.block_out_channels == [192, 384, 576, 960]
    assert cfg.preset == "rao-gupta"


def test_overrides_parse_yaml_values_and_nest():
    cfg = load_config("tiny-cpu", overrides=["train.lr=1e-4", "unet.block_out_channels=[32,64]", "train.ema=false"])
    assert cfg.train.lr == 1e-4 and cfg.unet.block_out_channels == [32, 64] and cfg.train.ema is False


def test_config_file_merges_over_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  steps: 7\n")
    cfg = load_config("tiny-cpu", file=path, overrides=["train.batch_size=3"])
    assert (cfg.train.steps, cfg.train.batch_size, cfg.slides.size) == (7, 3, 64)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lr=-1", "train.lr: Input should be greater than 0"),
        ("train.lrr=1", "train.lrr: unknown field"),
        ("slides.overlap=64", "slides: overlap (64) must be smaller than size (64)"),
        ("train.mixed_precision=fp8", "train.mixed_precision:"),
        ("nonsense", "expected KEY=VALUE"),
    ],
)
def test_invalid_values_name_the_field(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config("tiny-cpu", overrides=[override])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        preset_dict("huge")


def test_split_is_deterministic_case_level_and_written_once(tmp_path):
    cases = [f"TCGA-AA-{i:04d}" for i in range(20)]
    a, b = Workspace(tmp_path / "a"), Workspace(tmp_path / "b")
    split_a = a.assign_split(cases, test_fraction=0.25, seed=3)
    split_b = b.assign_split(list(reversed(cases)), test_fraction=0.25, seed=3)
    assert split_a == split_b
    assert sum(s == "test" for s in split_a.values()) == 5
    # new cases never move old ones
    more = a.assign_split(cases + ["TCGA-AA-9999"], test_fraction=0.25, seed=3)
    assert all(more[c] == split_a[c] for c in cases)
    assert json.loads(a.split_path.read_text()) == more
    # a different seed gives a different split
    c = Workspace(tmp_path / "c").assign_split(cases, test_fraction=0.25, seed=4)
    assert c != split_a


def test_split_keeps_one_test_case_for_tiny_sets(tmp_path):
    split = Workspace(tmp_path).assign_split(["x", "y", "z"], test_fraction=0.34, seed=0)
    assert sorted(split.values()) == ["test", "train", "train"]


def test_workspace_config_is_saved_and_reused(tmp_path):
    ws = Workspace(tmp_path)
    ws.ensure_config(preset="tiny-cpu", overrides=["train.steps=5"])
    assert ws.config().train.steps == 5          # reused without a preset
    assert ws.config(overrides=["train.steps=6"]).train.steps == 6
    assert ws.config(preset="pathldm").slides.size == 256


def test_manifest_records_what_ran(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["histosynth", "summarize", "--api-key", "sk-secret", "--set", "x.token=abc"])
    data_file = tmp_path / "input.txt"
    data_file.write_text("hello")
    cfg = load_config("tiny-cpu")
    with recording("unit", tmp_path / "out", config=cfg, seeds={"train": 7}) as manifest:
        manifest.add_input(data_file, "input")
        buf = mmap.mmap(-1, 64 << 20)  # 64 MiB of fresh pages (malloc could reuse resident ones)
        for offset in range(0, len(buf), 4096):
            buf[offset] = 1
        manifest.results["n"] = 1
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    for key in ("command", "config", "versions", "git_commit", "seeds", "inputs", "wall_time_s", "memory", "status"):
        assert key in m
    assert m["status"] == "ok" and m["seeds"] == {"train": 7} and m["results"] == {"n": 1}
    assert m["inputs"]["input"].startswith("sha256:2cf24dba")
    assert m["config"]["train"]["steps"] == cfg.train.steps
    assert "torch" in m["versions"] and "python" in m["versions"]
    assert "sk-secret" not in json.dumps(m) and "abc" not in json.dumps(m["command"])
    assert m["memory"]["rss_peak_above_baseline_bytes"] >= 48 << 20
    buf.close()


def test_manifest_written_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with recording("unit", tmp_path):
            raise RuntimeError("boom")
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["status"] == "failed" and "boom" in m["error"]


def test_redact_command_masks_secret_options():
    assert redact_command(["x", "--api-key=abc", "--token", "t", "--set", "llm.api_key=z", "--budget", "35"]) == [
        "x", "--api-key=***", "--token", "***", "--set", "llm.api_key=***", "--budget", "35"]


def test_sample_slides_are_pyramids_openslide_reads(sample_dir):
    import openslide

    from histosynth.sample_data import NOMINAL_MPP, SLIDES, slide_filename

    for s in SLIDES:
        slide = openslide.OpenSlide(str(sample_dir / "slides" / slide_filename(s.case_id)))
        assert slide.level_count >= 2
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(NOMINAL_MPP, rel=1e-3)
        assert slide.level_downsamples[1] == pytest.approx(2.0)
        region = np.asarray(slide.read_region((0, 0), 0, slide.dimensions))[..., :3]
        margin, centre = region[:10, :10].astype(float), region[100:150, 100:150].astype(float)
        assert margin.mean() > 230 and centre.mean() < margin.mean() - 15  # tissue on light glass


def test_sample_regions_do_not_overlap_and_stains_differ(sample_dir):
    from skimage.color import rgb2hed

    from histosynth.imageio import load_rgb
    from histosynth.sample_data import SLIDES

    covered = np.zeros((512, 512), dtype=int)
    for s in SLIDES:
        covered[s.rows, s.cols] += 1
    assert covered.max() == 1  # no tissue appears in two cases: nothing leaks across the split
    import openslide

    from histosynth.sample_data import MARGIN, slide_filename

    dab = {}
    for s in SLIDES:
        slide = openslide.OpenSlide(str(sample_dir / "slides" / slide_filename(s.case_id)))
        rgb = np.asarray(slide.read_region((MARGIN, MARGIN), 0, (200, 200)))[..., :3]
        dab[s.case_id] = rgb2hed(rgb)[..., 2].mean()
    assert dab["TCGA-HS-0003"] < 0.5 * min(dab["TCGA-HS-0001"], dab["TCGA-HS-0002"])


def test_sample_reports_link_to_slides_and_say_they_are_illustrative(sample_dir):
    import pandas as pd

    from histosynth.slides.barcodes import parse_barcode

    reports = pd.read_csv(sample_dir / "reports.csv")
    slide_cases = {parse_barcode(p.name).case_id for p in (sample_dir / "slides").glob("*.tiff")}
    report_cases = {parse_barcode(p).case_id for p in reports["patient_filename"]}
    assert slide_cases == report_cases and len(slide_cases) == 3
    assert reports["text"].str.contains("ILLUSTRATIVE").all()
    assert reports["text"].str.contains("colon", case=False).all()


def test_cli_help_and_version():
    out = subprocess.run([sys.executable, "-m", "histosynth.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "sample-data" in out.stdout
    out = subprocess.run([sys.executable, "-m", "histosynth.cli", "--version"], capture_output=True, text=True)
    assert out.stdout.strip().startswith("histosynth ")


def test_cli_sample_data_writes_manifest(tmp_path):
    out = subprocess.run([sys.executable, "-m", "histosynth.cli", "-q", "sample-data", str(tmp_path / "s")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["status"] == "ok"
    assert len(list((tmp_path / "s" / "slides").glob("*.tiff"))) == 3


COMMANDS = ("sample-data", "tile", "tile-merge", "reports", "summarize", "summary-stats", "embed", "train-vae",
            "encode", "train", "sample", "evaluate", "ablate", "demo", "convert-pathldm")


def test_cli_lists_every_stage_command():
    out = subprocess.run([sys.executable, "-m", "histosynth.cli", "--help"], capture_output=True, text=True,
                         env={**__import__("os").environ, "COLUMNS": "200"})
    listed = {line.split("│")[1].split()[0] for line in out.stdout.splitlines()
              if line.startswith("│") and len(line.split("│")[1].split()) > 1}
    assert set(COMMANDS) <= listed


def test_cli_invalid_override_is_one_line_and_exit_2(tmp_path, sample_dir):
    out = subprocess.run([sys.executable, "-m", "histosynth.cli", "tile", str(sample_dir / "slides"),
                          "--workspace", str(tmp_path / "ws"), "--set", "slides.min_tissue=2"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "slides.min_tissue" in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "ws" / "tiles").exists()


@pytest.mark.unit
def test_quiet_and_debug_hold_for_one_in_process_command(tmp_path, capsys):
    """`-q --debug` through the app in-process (CliRunner, a notebook) must not silence what follows."""
    from typer.testing import CliRunner

    from histosynth.cli import app
    from histosynth.console import console_state, info

    result = CliRunner().invoke(app, ["-q", "--debug", "sample-data", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert console_state() == {"quiet": False, "debug": False}
    info("still heard")
    assert "still heard" in capsys.readouterr().err
