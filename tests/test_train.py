"""Train stage on real CMU-1 tiles: learning beats predict-zero, exact resume after a kill,
two-process DDP equals one process at twice the batch, bf16 autocast, NaN stop, diffusers loading."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from histosynth.config import load_config
from histosynth.console import HistosynthError
from histosynth.runfolder import RunFolder
from histosynth.workspace import Workspace
from test_latents import TILE, tiles_template  # noqa: F401  (session fixture: real tiles + embeddings)

# A 1 M-parameter U-Net on 16 x 16 x 4 latents: seconds per test on one thread.
SMALL = ["unet.block_out_channels=[32,64]", "unet.cross_attention_levels=[false,true]", "unet.layers_per_block=1",
         "train.batch_size=8", "train.lr=1e-3", "train.warmup_steps=2", "train.validation_images=2",
         "sample.steps=3", "train.heldout_tiles=16"]


@pytest.fixture(scope="session")
def encoded_template(tiles_template, tmp_path_factory):  # noqa: F811
    """Real tiles, embeddings, a random f=4 VAE with its data scaling factor, cached latents."""
    from histosynth.latents.encode import encode_workspace
    from histosynth.latents.vae import build_vae, latent_std
    from histosynth.slides.store import TileStore

    root = tmp_path_factory.mktemp("encoded") / "ws"
    shutil.copytree(tiles_template, root)
    ws, cfg = Workspace(root), load_config("tiny-cpu", overrides=["vae.dihedral_check_tiles=0"])
    torch.manual_seed(0)
    vae = build_vae(cfg.vae, sample_size=TILE)
    vae.register_to_config(scaling_factor=1.0 / latent_std(vae, TileStore(ws), list(range(16))))
    vae.save_pretrained(ws.vae_dir)
    encode_workspace(ws, cfg)
    return root


@pytest.fixture
def ws(encoded_template, tmp_path):
    shutil.copytree(encoded_template, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def config(*extra):
    return load_config("tiny-cpu", overrides=SMALL + list(extra))


def losses(run: Path) -> list[float]:
    with open(run / "logs" / "loss.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def results(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["results"]


def test_short_run_beats_predict_zero_and_loads_with_diffusers(ws):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from histosynth.train.trainer import train

    run = train(ws, config("train.steps=40", "train.checkpoint_every=20", "train.keep_checkpoints=1"), budget=35)
    res = results(run)
    assert res["heldout_split"] == "test"
    assert res["heldout_loss"] < 0.6 * res["heldout_zero_baseline"]  # clearly better than predicting zeros
    assert res["memory_kind"] == "cpu-rss-above-baseline" and res["peak_memory_bytes"] > 0
    assert res["step_time_s"] > 0 and res["samples_per_s"] > 0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-40"]  # the last K=1 kept
    for folder in (run / "unet", run / "unet_ema", run / "checkpoints" / "step-40" / "unet"):
        unet = UNet2DConditionModel.from_pretrained(folder)
        assert unet.config.cross_attention_dim == 384
    assert AutoencoderKL.from_pretrained(run / "vae").config.scaling_factor != 0.18215
    assert DDPMScheduler.from_pretrained(run / "scheduler").config.beta_schedule == "scaled_linear"
    index = json.loads((run / "model_index.json").read_text())
    assert set(index) >= {"unet", "unet_ema", "vae", "scheduler"}
    condition = RunFolder(run).read_condition()
    assert condition.context_length == 16 and condition.budget == 35 and condition.width == 384
    assert condition.source_workspace == str(ws.root.resolve()) and condition.template == "{summary}"
    assert (run / "samples" / "validation" / "step-40.png").exists()


def test_killed_and_resumed_run_repeats_the_loss_curve(ws, monkeypatch):
    from histosynth.train import trainer

    cfg = config("train.steps=6", "train.checkpoint_every=3")
    whole = losses(trainer.train(ws, cfg, budget=35, run_name="whole"))

    real_log = trainer.log_step

    def dies_at_step_5(run, writer, step, *args):
        if step == 5:
            raise KeyboardInterrupt  # killed after step 5's update, with step 4 logged past the checkpoint
        real_log(run, writer, step, *args)

    monkeypatch.setattr(trainer, "log_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(ws, cfg, budget=35, run_name="killed")
    assert len(losses(ws.run_dir("killed"))) == 4
    monkeypatch.setattr(trainer, "log_step", real_log)
    resumed = trainer.train(ws, cfg, budget=35, run_name="killed")
    assert results(resumed)["resumed_from"] == 3
    assert losses(resumed) == whole  # bit-identical on the CPU
    from safetensors.torch import load_file

    a = load_file(ws.run_dir("whole") / "unet_ema" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "unet_ema" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_autocast_on_cpu_and_v_prediction_min_snr(ws):
    from histosynth.train.trainer import train

    run = train(ws, config("train.steps=3", "train.mixed_precision=fp16", "diffusion.prediction_type=v_prediction",
                           "train.min_snr_gamma=5.0", "train.grad_accum=2", "train.gradient_checkpointing=true"),
                budget=35)
    curve = losses(run)
    assert len(curve) == 3 and all(0 < x < 10 for x in curve)
    from safetensors.torch import load_file

    weights = load_file(run / "unet" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}  # master weights stay fp32


def test_nan_loss_stops_and_keeps_last_good_checkpoint(ws, monkeypatch):
    from histosynth.train import trainer

    real_loss = trainer.diffusion_loss
    calls = {"n": 0}

    def goes_nan(*args):
        calls["n"] += 1
        return real_loss(*args) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(trainer, "diffusion_loss", goes_nan)
    with pytest.raises(HistosynthError, match=r"loss is nan at step 3; stopped. Last good checkpoint: .*step-2"):
        trainer.train(ws, config("train.steps=6", "train.checkpoint_every=2"), budget=35)
    run = ws.run_dir("budget-35")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-2"]
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"


def test_two_process_ddp_matches_one_process_at_twice_the_batch(ws):
    from histosynth.train.trainer import train

    common = ["train.steps=3", "train.checkpoint_every=3", "train.log_samples=true", "train.validation_images=0"]
    single = train(ws, config("train.batch_size=8", *common), budget=35, run_name="single")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    histosynth = str(Path(sys.executable).with_name("histosynth"))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           histosynth, "-q", "train", "-w", str(ws.root), "--budget", "35", "--name", "ddp",
           *[a for item in SMALL + common + ["train.batch_size=4"] for a in ("--set", item)]]
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = ws.run_dir("ddp")
    assert results(ddp)["world_size"] == 2 and results(ddp)["global_batch"] == 8
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-4)

    def seen(run, rank):
        return [line.split()[2:] for line in (run / "logs" / f"samples-rank{rank}.txt").read_text().splitlines()]

    for step, (r0, r1, one) in enumerate(zip(seen(ddp, 0), seen(ddp, 1), seen(single, 0))):
        assert not set(r0) & set(r1) and len(r0) == len(r1) == 4  # disjoint halves
        assert r0 + r1 == one  # together exactly the single process's batch


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HISTOSYNTH_SLOW") != "1", reason="pathldm U-Net (400 M parameters); HISTOSYNTH_SLOW=1")
def test_pathldm_unet_one_step_at_batch_1():
    import time

    from histosynth.manifest import PeakMemory
    from histosynth.train.unet import build_unet, count_parameters

    cfg = load_config("pathldm")
    unet = build_unet(cfg, cross_attention_dim=512, latent_channels=3, sample_size=64)
    n = count_parameters(unet)
    assert 390e6 < n < 410e6
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.train.lr)
    x, ctx = torch.randn(1, 3, 64, 64), torch.randn(1, 154, 512)
    times = []
    with PeakMemory() as mem:
        for _ in range(2):  # the second step is the warm one
            t0 = time.perf_counter()
            loss = unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample.pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    print(f"pathldm U-Net: {n} parameters; warm step {times[-1]:.1f} s; "
          f"peak RSS above baseline {(mem.peak - mem.baseline) / 2**30:.2f} GiB")
    assert torch.isfinite(loss)


@pytest.mark.unit
def test_init_from_loads_a_runs_unet_strictly(tmp_path):
    """Fine-tuning (e.g. a converted PathLDM run) starts from the run's U-Net, EMA weights first."""
    import pytest
    import torch

    from histosynth.config import load_config
    from histosynth.console import HistosynthError
    from histosynth.train.trainer import init_weights
    from histosynth.train.unet import build_unet

    cfg = load_config("tiny-cpu", overrides=["unet.block_out_channels=[32,32]", "unet.cross_attention_levels=[false,true]",
                                             "unet.layers_per_block=1", "unet.attention_head_dim=16"])
    torch.manual_seed(0)
    source = build_unet(cfg, cross_attention_dim=8, latent_channels=4, sample_size=8)
    source.save_pretrained(tmp_path / "run" / "unet_ema")
    torch.manual_seed(1)
    target = build_unet(cfg, cross_attention_dim=8, latent_channels=4, sample_size=8)
    init_weights(target, str(tmp_path / "run"))
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name
    wider = build_unet(cfg, cross_attention_dim=16, latent_channels=4, sample_size=8)
    with pytest.raises(HistosynthError, match="does not match"):
        init_weights(wider, str(tmp_path / "run"))


def test_kill_after_final_checkpoint_re_exports_it_and_a_finished_run_is_left_alone(ws, monkeypatch):
    """Issue 13: a kill between the final checkpoint and the export left unet/ at an older step; the
    rerun must export the final checkpoint (equal by hash), and a rerun of a finished run changes nothing."""
    from histosynth.runfolder import weights_hash
    from histosynth.train import trainer

    cfg = config("train.steps=6", "train.checkpoint_every=3", "train.validation_images=0")
    real_export = trainer.export_checkpoint

    def killed_at_final_export(run, checkpoint):
        if checkpoint.name.endswith("-6"):
            raise KeyboardInterrupt  # kill -9 right after the final checkpoint was written
        return real_export(run, checkpoint)

    monkeypatch.setattr(trainer, "export_checkpoint", killed_at_final_export)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(ws, cfg, budget=35)
    run = ws.run("budget-35")
    final = run.checkpoint_dir(6)
    assert (final / "state.json").exists() and run.finished() is None
    assert weights_hash(run.unet_dir) != weights_hash(final / "unet")  # stale: still step 3's
    monkeypatch.setattr(trainer, "export_checkpoint", real_export)

    trainer.train(ws, cfg, budget=35)
    for name, folder in (("unet", run.unet_dir), ("unet_ema", run.unet_ema_dir)):
        assert weights_hash(folder) == weights_hash(final / name)
        assert run.finished()["weights"][name] == weights_hash(folder)
    res = results(run.path)
    assert res["final_loss"] == pytest.approx(losses(run.path)[-1], rel=1e-6) and res["resumed_from"] == 6
    assert res["step_time_s"] is None  # no step ran in this process: nothing made up
    json.loads(run.manifest_path.read_text())  # valid JSON (no NaN)

    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    trainer.train(ws, cfg, budget=35)
    after = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    assert after == before  # a finished run is recognised and left as it is
    trainer.train(ws, config("train.steps=7", "train.checkpoint_every=3", "train.validation_images=0"), budget=35)
    assert run.finished()["step"] == 7 and weights_hash(run.unet_dir) == weights_hash(run.checkpoint_dir(7) / "unet")


def test_nan_guard_names_a_checkpoint_that_had_not_diverged(ws, monkeypatch):
    """Checkpoint 4 follows exploding losses (50x the first): when the loss turns NaN the guard
    names step 2, the last checkpoint with finite weights and finite, non-exploding losses."""
    from histosynth.train import trainer
    from histosynth.train.checkpoints import is_good

    real_loss = trainer.diffusion_loss
    calls = {"n": 0}

    def explodes(*args):
        calls["n"] += 1
        scale = {3: 50.0, 4: 50.0, 5: float("nan")}.get(calls["n"], 1.0)
        return real_loss(*args) * scale

    monkeypatch.setattr(trainer, "diffusion_loss", explodes)
    with pytest.raises(HistosynthError, match=r"loss is nan at step 5; stopped. Last good checkpoint: \S*step-2 "):
        trainer.train(ws, config("train.steps=8", "train.checkpoint_every=2", "train.keep_checkpoints=1",
                                 "train.validation_images=0"), budget=35)
    run = ws.run("budget-35")
    kept = sorted(p.name for p in run.checkpoints_dir.iterdir())
    assert kept == ["step-2", "step-4"]  # keep=1, but the newest good checkpoint is never pruned
    assert is_good(run.checkpoint_dir(2)) and not is_good(run.checkpoint_dir(4))


def test_huge_learning_rate_stops_without_naming_a_diverged_checkpoint(ws):
    from safetensors.torch import load_file

    from histosynth.train.trainer import train

    with pytest.raises(HistosynthError, match=r"stopped. Last good checkpoint: (\S+)") as err:
        train(ws, config("train.lr=1e6", "train.steps=8", "train.checkpoint_every=1", "train.validation_images=0",
                         "train.warmup_steps=0"), budget=35)
    named = str(err.value).split("Last good checkpoint: ")[1].split(" ")[0]
    if named != "none":
        weights = load_file(Path(named) / "unet" / "diffusion_pytorch_model.safetensors")
        assert all(torch.isfinite(t).all() and t.abs().max() < 1e3 for t in weights.values())


def test_non_finite_numbers_are_refused_by_the_config_and_the_command_line(ws):
    from histosynth.config import ConfigError

    for item in ("train.lr=inf", "train.lr=.nan", "train.grad_clip=inf", "sample.guidance=nan", "vae.lr=-inf"):
        with pytest.raises(ConfigError, match=rf"{item.split('=')[0]}: Input should be a finite number"):
            load_config("tiny-cpu", overrides=[item])
    proc = subprocess.run([sys.executable, "-m", "histosynth.cli", "train", "-w", str(ws.root), "--set", "train.lr=inf"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not ws.runs_dir.exists()
    assert proc.stderr.strip().splitlines() == ["error: config: train.lr: Input should be a finite number"]


def test_run_files_and_folders_follow_the_umask(ws):
    import stat

    from histosynth.train.trainer import train

    old = os.umask(0o022)
    try:
        run = ws.run("umask")
        train(ws, config("train.steps=2", "train.checkpoint_every=2", "train.validation_images=0"), budget=35,
              run_name="umask")
    finally:
        os.umask(old)
    for path in [run.path, run.unet_dir, run.unet_ema_dir, run.vae_dir, run.scheduler_dir, run.checkpoint_dir(2),
                 *run.path.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_encode_with_another_vae_then_train_uses_its_latents(ws, tmp_path):
    """`encode --vae X` (= --set vae.pretrained=X) makes X's latents current; `train` trains on them."""
    from typer.testing import CliRunner

    from histosynth.cli import app
    from histosynth.latents.store import LatentsResult, vae_id
    from histosynth.latents.vae import build_vae
    from histosynth.train.data import TrainData

    cfg = config()
    torch.manual_seed(7)
    other = build_vae(cfg.vae, sample_size=TILE)
    other.register_to_config(scaling_factor=0.25)
    other.save_pretrained(tmp_path / "other-vae")
    for option in (["--vae", str(tmp_path / "other-vae")], ["--set", f"vae.pretrained={tmp_path / 'other-vae'}"]):
        result = CliRunner().invoke(app, ["encode", "-w", str(ws.root), "--set", "vae.dihedral_check_tiles=0",
                                          "--set", "vae.cache_dihedral=false", *option])
        assert result.exit_code == 0, result.output
        current = LatentsResult.read(ws)
        assert current.vae == str(tmp_path / "other-vae") and current.vae_id == vae_id(tmp_path / "other-vae")
        data = TrainData(ws, config(), budget=35)
        assert data.store.path == ws.latent_dir(vae_id(tmp_path / "other-vae")) and data.store.scaling_factor == 0.25
    run = train_small(ws)
    from diffusers import AutoencoderKL

    assert AutoencoderKL.from_pretrained(run / "vae").config.scaling_factor == 0.25  # the run carries X


def train_small(ws):
    from histosynth.train.trainer import train

    return train(ws, config("train.steps=1", "train.checkpoint_every=1", "train.validation_images=0"), budget=35)


def test_a_second_train_of_the_same_run_is_refused_naming_the_first(ws):
    from histosynth.locks import stage_lock
    from histosynth.train.trainer import train

    with stage_lock(ws.lock_path("train-budget-35"), "train"):  # as a running `histosynth train` holds it
        with pytest.raises(HistosynthError, match=rf"another `histosynth train` \(PID {os.getpid()}\) is running"):
            train(ws, config("train.steps=1"), budget=35)
    assert not ws.run("budget-35").path.exists()
