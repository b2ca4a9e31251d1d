"""Sample stage: HistoSynthPipeline on a tiny random run folder, determinism, provenance, --from-summaries."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from histosynth.config import ConfigError, load_config
from histosynth.console import HistosynthError
from histosynth.fileio import write_json
from histosynth.imageio import load_rgb, png_metadata
from histosynth.runfolder import Condition, RunFolder, pipeline_components
from histosynth.sample.generate import sample_run
from histosynth.sample.pipeline import HistoSynthPipeline

WIDTH = 32        # text width = the U-Net's cross_attention_dim
TEMPLATE = "{tumor} tumor; {summary}"


def tiny_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=WIDTH, attention_head_dim=2, norm_num_groups=8,
    )


def make_run(ws: Path, name: str = "tiny", attend_padding: bool = False, legacy: bool = False) -> Path:
    """A run folder as `histosynth train` writes it, with random tiny components (not a trained model).

    legacy: as histosynth 0.1 wrote it (text_encoder.json without budget or workspace, the budget
    only in manifest.json, no text encoder in the model index)."""
    import diffusers
    from diffusers import AutoencoderKL

    from histosynth.schedules import training_scheduler
    from histosynth.text.testing import save_random_clip

    run = RunFolder(ws / "runs" / name)
    cfg = load_config(preset="tiny-cpu", overrides=["sample.steps=3", "sample.batch_size=2",
                                                    f"text.template={TEMPLATE}"])
    run.path.mkdir(parents=True)
    run.write_config(cfg)
    tiny_unet(0).save_pretrained(run.unet_dir)
    tiny_unet(1).save_pretrained(run.unet_ema_dir)
    torch.manual_seed(2)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                  sample_size=16, scaling_factor=0.5).save_pretrained(run.vae_dir)
    training_scheduler(cfg.diffusion).save_pretrained(run.scheduler_dir)
    save_random_clip(run.text_encoder_dir, hidden=WIDTH)
    condition = Condition(encoder="openai/clip-vit-base-patch32", context_length=24, attend_padding=attend_padding,
                          template=TEMPLATE, levels=("low", "high"), budget=35, width=WIDTH,
                          source_workspace=str(ws))
    components = pipeline_components("AutoencoderKL", ema=True)
    if legacy:
        record = {k: v for k, v in condition.to_dict().items() if k not in ("budget", "source_workspace", "extra")}
        write_json(run.path / "text_encoder.json", record)
        write_json(run.manifest_path, {"stage": "train", "results": {"budget": 35}})
        components.pop("text_encoder")
    else:
        run.write_condition(condition)
    run.write_model_index(components, diffusers.__version__)
    return run.path


def make_workspace_text(ws: Path) -> None:
    """Tile index and budget-35 summaries: case A (train) and case B (test)."""
    import pandas as pd

    (ws / "tiles").mkdir(parents=True, exist_ok=True)
    (ws / "summaries").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"tile_id": np.arange(6, dtype=np.int64), "case_id": list("AAABBB"),
                  "split": ["train"] * 3 + ["test"] * 3, "prob_tumor": [0.1, 0.2, 0.3, 0.9, 0.2, 1.0]}
                 ).to_parquet(ws / "tiles" / "index.parquet")
    pd.DataFrame({"case_id": ["A", "B"], "budget": 35, "summary": ["lobular carcinoma", "ductal carcinoma grade 3"]}
                 ).to_parquet(ws / "summaries" / "budget-35.parquet")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    make_workspace_text(ws)
    return make_run(ws)


@pytest.fixture(scope="module")
def pipe(run) -> HistoSynthPipeline:
    return HistoSynthPipeline.from_pretrained(run, device="cpu")


@pytest.mark.unit
def test_pipeline_is_deterministic_per_seed(pipe):
    a = pipe(prompt=["high tumor; a", "low tumor; b", "high tumor; c"], seed=[5, 6, 7], output_type="np").images
    again = pipe(prompt=["high tumor; a", "low tumor; b", "high tumor; c"], seed=[5, 6, 7], output_type="np").images
    alone = pipe(prompt="low tumor; b", seed=6, output_type="np").images
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, again)
    # An image does not depend on the batch it was made in (up to batched-conv round-off).
    assert np.abs(a[1].astype(int) - alone[0].astype(int)).max() <= 1
    # DDIM's eta noise also comes from each image's own generator.
    noisy = pipe(prompt=["a", "b"], seed=[5, 6], eta=1.0, output_type="np").images
    noisy_alone = pipe(prompt="b", seed=6, eta=1.0, output_type="np").images
    assert np.abs(noisy[1].astype(int) - noisy_alone[0].astype(int)).max() <= 1
    other_seed = pipe(prompt="low tumor; b", seed=99, output_type="np").images
    assert np.abs(other_seed[0].astype(int) - alone[0].astype(int)).mean() > 1


def raw_pipe(run):
    return HistoSynthPipeline.from_pretrained(run, use_ema=False, device="cpu")


def test_pipeline_uses_run_defaults_and_ema(pipe, run):
    assert pipe.uses_ema and not raw_pipe(run).uses_ema
    assert pipe.defaults.steps == 3 and pipe.scheduler.__class__.__name__ == "DDIMScheduler"
    raw = raw_pipe(run)
    assert raw.checkpoint_hash != pipe.checkpoint_hash
    a = pipe(prompt="x", seed=0, output_type="np").images
    b = raw(prompt="x", seed=0, output_type="np").images
    assert not np.array_equal(a, b)


def test_scheduler_swaps_as_in_diffusers(run):
    from diffusers import DPMSolverMultistepScheduler

    pipe = HistoSynthPipeline.from_pretrained(run, device="cpu")
    ddim = pipe(prompt="x", seed=3, num_inference_steps=4, guidance_scale=2.0, output_type="np").images
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    dpm = pipe(prompt="x", seed=3, num_inference_steps=4, guidance_scale=2.0, output_type="np").images
    assert dpm.shape == ddim.shape and not np.array_equal(dpm, ddim)
    pil = pipe(prompt="x", seed=3, num_inference_steps=2).images
    assert pil[0].size == (16, 16)


def test_attend_padding_passes_no_mask(tmp_path):
    pipe = HistoSynthPipeline.from_pretrained(make_run(tmp_path, attend_padding=True), device="cpu")
    hidden, mask = pipe.encode_prompt(["high tumor; x"])
    assert mask is None and hidden.shape == (1, 24, WIDTH)


def test_sample_run_writes_provenance_and_resumes(run, tmp_path, capsys):
    out = sample_run(run, ["high tumor; a", "low tumor; b"], n=5, batch_size=2, out_dir=tmp_path / "s")
    files = sorted(p.name for p in out.glob("0*.png"))
    assert files == [f"{i:05d}.png" for i in range(5)]
    meta = png_metadata(out / "00003.png")
    assert meta["synthetic"] == "true" and meta["generator"].startswith("histosynth")
    assert meta["prompt"] == "low tumor; b" and meta["seed"] == "3" and meta["checkpoint_hash"].startswith("dir:")
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [0, 1, 2, 3, 4]
    assert {r["sampler"] for r in records} == {"ddim"} and records[0]["steps"] == 3 and records[0]["guidance"] == 1.5
    assert (out / "contact_sheet.png").exists() and json.loads((out / "manifest.json").read_text())["status"] == "ok"

    # Another batch size gives the same images; a rerun keeps finished images.
    other = sample_run(run, ["high tumor; a", "low tumor; b"], n=5, batch_size=3, out_dir=tmp_path / "t")
    for i in range(5):
        diff = load_rgb(out / f"{i:05d}.png").astype(int) - load_rgb(other / f"{i:05d}.png").astype(int)
        assert np.abs(diff).max() <= 1
    (out / "00004.png").unlink()
    sample_run(run, ["high tumor; a", "low tumor; b"], n=5, batch_size=2, out_dir=out)
    assert json.loads((out / "manifest.json").read_text())["results"]["generated"] == 1

    # A folder of an older histosynth (no status record): the PNGs' provenance decides once, then the record.
    from histosynth.status import WorkLog

    (out / "status.json").unlink()
    sample_run(run, ["high tumor; a", "low tumor; b"], n=5, batch_size=2, out_dir=out)
    assert json.loads((out / "manifest.json").read_text())["results"]["generated"] == 0
    assert len(WorkLog(out / "status.json").by_state("done")) == 5
    # Other sampler settings into the same folder: every image made again, and the run says so.
    capsys.readouterr()
    sample_run(run, ["high tumor; a", "low tumor; b"], n=5, batch_size=2, steps=2, out_dir=out)
    assert json.loads((out / "manifest.json").read_text())["results"]["generated"] == 5
    assert "5 images were made from another prompt, seed, checkpoint or sampler setting" in capsys.readouterr().err


def test_sample_from_test_summaries(run):
    out = sample_run(run, None, n=4, sampler="dpmpp", steps=2, from_summaries=True, split="test")
    assert out.parent == run / "samples" and "dpmpp" in out.name
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 4 and {r["split"] for r in records} == {"test"} and {r["case_id"] for r in records} == {"B"}
    by_tile = {0.9: "high", 0.2: "low", 1.0: "high"}
    prob = dict(zip(range(3, 6), [0.9, 0.2, 1.0]))
    for r in records:
        assert r["prompt"] == f"{by_tile[prob[r['tile_id']]]} tumor; ductal carcinoma grade 3"
    results = json.loads((out / "manifest.json").read_text())["results"]
    assert results["source"]["budget"] == 35 and results["split"] == "test"


def test_cli_requires_one_prompt_source(run, tmp_path):
    from typer.testing import CliRunner

    from histosynth.cli import app

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("high tumor; a\n\nlow tumor; b\n")
    result = CliRunner().invoke(app, ["sample", "--run", str(run), "--prompts", str(prompts), "--n", "2",
                                      "--steps", "2", "--guidance", "1.0", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "cli").glob("0*.png"))) == 2
    result = CliRunner().invoke(app, ["sample", "--run", str(run), "--n", "2"])
    assert result.exit_code != 0


BAD_OPTIONS = [
    (["--steps", "0"], "--steps 0"),
    (["--steps", "-2"], "--steps -2"),
    (["--guidance", "nan"], "--guidance nan"),
    (["--guidance", "inf"], "--guidance inf"),
    (["--guidance", "-1"], "--guidance -1"),
    (["--eta", "-0.5"], "--eta -0.5"),
    (["--batch", "0"], "--batch 0"),
    (["--n", "0"], "--n 0"),
    (["--sampler", "euler"], "--sampler euler"),
    (["--height", "24"], "--height 24"),
    (["--set", "sample.steps=0"], "sample.steps"),
    (["--set", "unet.layers_per_block=3"], "unet"),
    (["--cfg", "1.5"], "--guidance"),
]


@pytest.mark.parametrize("args,named", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_options_exit_2_in_one_line_and_write_nothing(run, tmp_path, args, named):
    exe = Path(sys.executable).with_name("histosynth")
    prompts = tmp_path / "p.txt"
    prompts.write_text("high tumor; a\n")
    done = subprocess.run([str(exe), "sample", "--run", str(run), "--prompts", str(prompts), "--n", "1",
                           "--out", str(tmp_path / "out"), *args], capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_copied_run_samples_the_same_images_without_its_workspace(tmp_path):
    ws = tmp_path / "ws"
    make_workspace_text(ws)
    run = make_run(ws)
    before = sample_run(run, ["high tumor; a", "low tumor; b"], n=3, seed=11, out_dir=tmp_path / "before")
    moved = tmp_path / "elsewhere" / "my-run"
    shutil.copytree(run, moved)
    shutil.rmtree(ws)
    after = sample_run(moved, ["high tumor; a", "low tumor; b"], n=3, seed=11, out_dir=tmp_path / "after")
    for i in range(3):
        np.testing.assert_array_equal(load_rgb(before / f"{i:05d}.png"), load_rgb(after / f"{i:05d}.png"))
    with pytest.raises(HistosynthError, match="workspace not found"):  # its source workspace is gone
        sample_run(moved, None, n=1, from_summaries=True, out_dir=tmp_path / "s")


def test_from_summaries_takes_the_workspace_option_and_the_recorded_budget_only(tmp_path):
    ws = tmp_path / "ws"
    make_workspace_text(ws)
    legacy = make_run(tmp_path / "elsewhere", legacy=True)   # 0.1 run: no budget, no workspace recorded
    with pytest.raises(HistosynthError, match="no source workspace; pass --workspace"):
        sample_run(legacy, None, n=1, from_summaries=True)
    with pytest.raises(HistosynthError, match="records no summary budget; pass --budget"):
        sample_run(legacy, None, n=1, from_summaries=True, workspace=ws)  # manifest.json's budget is not used
    out = sample_run(legacy, None, n=2, from_summaries=True, workspace=ws, budget=35, out_dir=tmp_path / "s")
    assert {json.loads(l)["case_id"] for l in (out / "metadata.jsonl").read_text().splitlines()} == {"B"}
    current = make_run(ws, name="current")
    with pytest.raises(ConfigError, match="--budget 50: the run was trained at budget 35"):
        sample_run(current, None, n=1, from_summaries=True, budget=50)


@pytest.mark.unit
def test_preset_replaces_only_the_sampling_defaults_of_a_run(run):
    from histosynth.config import preset_dict
    from histosynth.sample.generate import resolve_config

    folder = RunFolder(run)
    recorded = folder.read_config()
    cfg = resolve_config(folder, "pathldm", None, ["sample.eta=0.5"])
    pathldm = preset_dict("pathldm").get("sample", {})
    assert cfg.sample.steps == pathldm.get("steps", 50) != recorded.sample.steps and cfg.sample.eta == 0.5
    assert (cfg.unet, cfg.text, cfg.vae, cfg.diffusion) == (recorded.unet, recorded.text, recorded.vae, recorded.diffusion)
    assert resolve_config(folder, None, None, []) == recorded


@pytest.mark.unit
def test_model_card_states_what_the_run_records_and_no_more(run, tmp_path):
    import yaml

    from histosynth.modelcard import write_model_card

    folder = RunFolder(tmp_path / "card-run")
    shutil.copytree(run, folder.path)
    text = write_model_card(folder).read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["license"] == "other" and meta["histosynth"]["budget_tokens"] == 35
    assert "licence: unknown" in text and "Not for diagnosis" in text
    cc = [{"name": "Kather 2016 tiles", "license": "CC-BY-4.0", "attribution": "Kather et al. 2016, Zenodo 53169"}]
    meta = yaml.safe_load(write_model_card(folder, data=cc).read_text().split("---")[1])
    assert meta["license"] == "CC-BY-4.0" and meta["datasets"] == ["Kather 2016 tiles"]
