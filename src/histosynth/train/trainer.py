"""`histosynth train`: text-conditioned latent diffusion on cached latents and embeddings.

One visible loop (nanoGPT style): accumulate gradients over micro-batches, clip, step AdamW and
the warm-up schedule, update EMA, log, validate, checkpoint. `accelerate` supplies devices, DDP
and autocast; the run folder is a set of diffusers components (docs/architecture.md, "Run").
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import schedules
from ..config import ConfigError
from ..console import HistosynthError, info, warn
from ..fileio import atomic_dir
from ..imageio import contact_sheet, save_png, to_uint8
from ..latents.store import TILES_NAME
from ..locks import stage_lock
from ..latents.vae import decode, load_vae
from ..modelcard import write_model_card
from ..results import TrainResult
from ..manifest import recording
from ..runfolder import TEXT_ENCODER_COMPONENT, Condition, RunFolder
from ..status import inputs_hash
from ..workspace import Workspace
from .checkpoints import (ema_unet, export_checkpoint, last_good_checkpoint, latest_checkpoint, load_checkpoint,
                          loss_stats, save_checkpoint)
from .data import Batch, TrainData
from .memory import MemoryMeter
from .unet import build_unet, count_parameters

WARMUP_STEPS_UNTIMED = 3  # first steps (allocation, autotuning) are left out of the step time
EXPLODED_LOSS_FACTOR = 1000.0  # a loss 1000x the first step's has diverged (healthy runs stay below ~2x)


def make_accelerator(tc):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # The state is a process-wide singleton; a second run in one process (tests, notebooks) may use
    # another precision. The distributed PartialState is kept.
    AcceleratorState._reset_state()
    cpu = not torch.cuda.is_available()
    precision = tc.mixed_precision
    if cpu and precision == "fp16":
        warn("train.mixed_precision=fp16 needs a GPU; using bf16 autocast on the CPU")
        precision = "bf16"
    accelerator = Accelerator(mixed_precision=precision, cpu=cpu)
    if cpu and accelerator.num_processes > 1 and "OMP_NUM_THREADS" not in os.environ:
        # ranks share the cores: oversubscribed threads make CPU steps many times slower
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return accelerator


def diffusion_loss(unet, batch: Batch, noise_scheduler, accelerator, tc) -> torch.Tensor:
    """The training step's loss (see denoising_loss)."""
    return denoising_loss(unet, batch, noise_scheduler, accelerator, tc)


def denoising_loss(unet, batch: Batch, noise_scheduler, accelerator, tc) -> torch.Tensor:
    """MSE between the U-Net's prediction and the target (eps or v), optionally Min-SNR weighted."""
    device = accelerator.device
    latents, noise, t = batch.latents.to(device), batch.noise.to(device), batch.timesteps.to(device)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, t)
    else:
        target = noise
    mask = batch.mask.to(device) if batch.mask is not None else None
    with accelerator.autocast():
        pred = unet(noisy, t, encoder_hidden_states=batch.hidden.to(device), encoder_attention_mask=mask).sample
    # The loss in fp32 whatever the autocast dtype: no half-precision reductions, no dtype mismatch.
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if tc.min_snr_gamma is not None:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(noise_scheduler, t)
        weight = torch.clamp(snr, max=tc.min_snr_gamma)
        weight = weight / (snr + 1 if noise_scheduler.config.prediction_type == "v_prediction" else snr)
        per_sample = per_sample * weight
    return per_sample.mean()


@torch.no_grad()
def heldout_losses(unet, data: TrainData, noise_scheduler, accelerator, tc) -> dict:
    """Denoising loss on a fixed held-out batch, and what predicting zeros would score there."""
    batch = data.heldout(tc.heldout_tiles, noise_scheduler)
    loss = float(diffusion_loss(unet, batch, noise_scheduler, accelerator, tc.model_copy(update={"min_snr_gamma": None})))
    latents, t = batch.latents, batch.timesteps
    target = noise_scheduler.get_velocity(latents, batch.noise, t) \
        if noise_scheduler.config.prediction_type == "v_prediction" else batch.noise
    return {"heldout_loss": loss, "heldout_zero_baseline": float(target.pow(2).mean()),
            "heldout_tiles": len(batch.tile_ids), "heldout_split": "test" if data.heldout_keys else "train"}


@torch.no_grad()
def validation_grid(unet, vae, data: TrainData, cfg, device) -> "torch.Tensor":
    """Sample a few images conditioned on held-out texts with the run's sampler; uint8 grid."""
    n = cfg.train.validation_images
    ids = (data.heldout_keys or data.train_keys)[:n]
    hidden, mask = data.emb.for_keys(ids)
    cond_mask = None if data.attend_padding else mask.long().to(device)
    uncond_mask = None if data.attend_padding else data.uncond_mask.expand(len(ids), -1).to(device)
    scheduler = schedules.sampling_scheduler(schedules.training_scheduler(cfg.diffusion).config, cfg.sample.sampler)
    gen = torch.Generator().manual_seed(cfg.sample.seed)
    noise = torch.randn((len(ids), *data.latent_shape), generator=gen).to(device) * scheduler.init_noise_sigma
    latents = schedules.denoise(
        unet, scheduler, noise, hidden.float().to(device), data.uncond_hidden.expand(len(ids), -1, -1).to(device),
        cond_mask=cond_mask, uncond_mask=uncond_mask, steps=cfg.sample.steps, guidance=cfg.sample.guidance,
        eta=cfg.sample.eta, generator=gen,
    )
    images = to_uint8(decode(vae, latents.float().cpu() / data.store.scaling_factor))
    return contact_sheet(list(images), columns=min(8, len(images)))


def write_run_skeleton(run: RunFolder, ws, cfg, budget: int, data: TrainData, vae, noise_scheduler) -> None:
    """The run's fixed components: config, VAE copy, scheduler, condition record, model index."""
    from diffusers import __version__ as diffusers_version

    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(cfg)
    with atomic_dir(run.vae_dir) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
    with atomic_dir(run.scheduler_dir) as tmp:
        noise_scheduler.save_pretrained(tmp)
    run.write_condition(condition_of(ws, cfg, budget, data))
    components = {run.unet_dir.name: ("diffusers", "UNet2DConditionModel"),
                  run.vae_dir.name: ("diffusers", type(vae).__name__),
                  run.scheduler_dir.name: ("diffusers", type(noise_scheduler).__name__),
                  run.text_encoder_dir.name: TEXT_ENCODER_COMPONENT}  # diffusers loads the text side through it
    if cfg.train.ema:
        components[run.unet_ema_dir.name] = ("diffusers", "UNet2DConditionModel")
    run.write_model_index(components, diffusers_version)


def condition_of(ws, cfg, budget: int, data: TrainData) -> Condition:
    """How this run's U-Net sees text, from the embeddings it trains on (sampling rebuilds it)."""
    emb, text = data.emb.info, cfg.text
    return Condition(
        encoder=emb.get("encoder", text.encoder), context_length=int(emb.get("context_length", data.emb.context_length)),
        long_context=emb.get("long_context", text.long_context),
        attend_padding=bool(emb.get("attend_padding", text.attend_padding)),
        template=emb.get("template", text.template), levels=tuple(emb.get("levels", text.levels)),
        budget=int(emb.get("budget", budget)), width=data.width,
        descriptor_edges=emb.get("descriptor_edges"), descriptor_levels=emb.get("descriptor_levels"),
        source_workspace=str(ws.root.resolve()), embeddings=str(data.emb.path.resolve()),
    )


def check_resumable(run: RunFolder, cfg) -> None:
    """Resuming with another model, schedule, batch or seed would silently mix two runs."""
    import yaml

    saved = yaml.safe_load(run.config_path.read_text())
    now = cfg.model_dump(mode="json")
    keys = [("unet", None), ("diffusion", None)] + [("train", k) for k in ("batch_size", "grad_accum", "seed", "lr", "ema")]
    for section, key in keys:
        a = saved.get(section, {}) if key is None else saved.get(section, {}).get(key)
        b = now[section] if key is None else now[section][key]
        if a != b:
            raise HistosynthError(f"{run.config_path}: {section}{'.' + key if key else ''} differs from this "
                                  f"run's config; use another --name or --no-resume")


def train_inputs(cfg, budget: int, data: TrainData) -> str:
    """Identity of a finished run: the training config and the data it saw (latents, texts, tiles)."""
    conf = cfg.model_dump(mode="json")
    return inputs_hash(unet=conf["unet"], diffusion=conf["diffusion"], train=conf["train"], budget=budget,
                       data=data.identity())


def train(ws, cfg, budget: int, run_name: str | None = None, resume: bool = True) -> Path:
    """Train the U-Net of `cfg` on the training split's cached latents and budget-N embeddings.

    A run that finished from the same config and data is left as it is (and says so); a run killed
    at any point resumes from its last checkpoint, and its exported weights are that checkpoint's.
    """
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    run = ws.run(run_name or f"budget-{budget}")
    with stage_lock(ws.lock_path(f"train-{run.name}"), "train"):  # one process group per run folder
        return train_run(ws, cfg, budget, run, resume)


def train_run(ws: Workspace, cfg, budget: int, run: RunFolder, resume: bool) -> Path:
    from diffusers import UNet2DConditionModel  # noqa: F401  (imported before the memory baseline)
    from diffusers.optimization import get_constant_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    tc = cfg.train
    accelerator = make_accelerator(tc)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    if tc.checkpoint_every < 1 or tc.keep_checkpoints < 1:
        raise ConfigError("train.checkpoint_every and train.keep_checkpoints must be at least 1")

    # Memory from here on: data, model, optimizer and activations, not the imports before.
    with MemoryMeter(accelerator.device) as memory:
        if main:  # rank 0 alone brings stale caches up to date; the others then read them
            data = TrainData(ws, cfg, budget)
        accelerator.wait_for_everyone()
        if not main:
            data = TrainData(ws, cfg, budget)
        inputs = train_inputs(cfg, budget, data)
        finished = run.finished(inputs) if resume else None
        if finished is not None:
            info(f"{run.path}: already finished at step {finished['step']} from this config and data; nothing to "
                 f"do (use another --name, or --no-resume to train it again)")
            return run.path
        noise_scheduler = schedules.training_scheduler(cfg.diffusion)
        torch.manual_seed(tc.seed)  # same initial weights on every rank
        channels, size = data.latent_shape[0], data.latent_shape[1]
        unet = build_unet(cfg, cross_attention_dim=data.width, latent_channels=channels, sample_size=size)
        if tc.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        lr_scheduler = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=tc.warmup_steps)
        ema = EMAModel(unet.parameters(), decay=tc.ema_decay) if tc.ema else None

        start, state = 0, {}
        if main and not resume and run.checkpoints_dir.exists():
            shutil.rmtree(run.checkpoints_dir)  # --no-resume starts over: old checkpoints must not mix in
        accelerator.wait_for_everyone()
        checkpoint = latest_checkpoint(run) if resume else None
        if checkpoint is None and tc.init_from:
            init_weights(unet, tc.init_from)
        if checkpoint is not None:
            check_resumable(run, cfg)
            state = load_checkpoint(checkpoint, unet, ema, optimizer, lr_scheduler)
            start = int(state["step"])
            if start > tc.steps:
                raise HistosynthError(f"{checkpoint}: the run is at step {start}, past train.steps={tc.steps}; "
                                      f"set train.steps >= {start}, or use --no-resume or another --name")
            if state.get("world_batch") != tc.batch_size * world:
                warn(f"{checkpoint}: saved with a global batch of {state.get('world_batch')}, now {tc.batch_size * world}")
            info(f"resuming {run.name} from step {start}")
        vae = load_vae(data.vae_source).eval()
        if main:
            run.mark_unfinished(inputs, start)
            write_run_skeleton(run, ws, cfg, budget, data, vae, noise_scheduler)
            truncate_loss_log(run.loss_log, start)
        accelerator.wait_for_everyone()

        unet, optimizer = accelerator.prepare(unet, optimizer)  # DDP wrap; the LR schedule is stepped by hand
        if ema is not None:
            ema.to(accelerator.device)
        raw_unet = accelerator.unwrap_model(unet)
        writer = make_writer(run, start) if main else None
        out_dir, manifest_name = (run.path, run.manifest_path.name) if main else (run.logs_dir, f"manifest-rank{rank}.json")
        previous = state.get("loss") or {}
        guard = LossGuard(run, previous.get("initial"))
        step_times, loss, results = [], previous.get("last", float("nan")), {}
        with recording("train", out_dir, config=cfg, seeds={"train": tc.seed}, filename=manifest_name) as manifest:
            manifest.add_input(data.store.path / TILES_NAME, "latents")
            manifest.results.update(budget=budget, unet_parameters=count_parameters(raw_unet), world_size=world,
                                    global_batch=tc.batch_size * tc.grad_accum * world, resumed_from=start or None,
                                    train_tiles=len(data.train_keys))
            unet.train()
            for step in range(start, tc.steps):
                t0 = time.perf_counter()
                # ---- accumulate gradients over micro-batches (DDP syncs only on the last one)
                total = torch.zeros((), device=accelerator.device)
                for micro in range(tc.grad_accum):
                    batch = data.batch(step, micro, rank, world, noise_scheduler)
                    if tc.log_samples:
                        log_samples(run, rank, step, micro, batch.tile_ids)
                    sync = accelerator.no_sync(unet) if micro < tc.grad_accum - 1 else contextlib.nullcontext()
                    with sync:
                        micro_loss = diffusion_loss(unet, batch, noise_scheduler, accelerator, tc) / tc.grad_accum
                        accelerator.backward(micro_loss)
                    total += micro_loss.detach()
                loss = float(accelerator.reduce(total, reduction="mean"))
                # ---- a non-finite or exploding loss ends the run before it can touch the weights or checkpoints
                guard.check(loss, step + 1)
                # ---- update weights
                grad_norm = accelerator.clip_grad_norm_(unet.parameters(), tc.grad_clip) if tc.grad_clip else None
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.step(raw_unet.parameters())
                done = step + 1
                step_times.append(time.perf_counter() - t0)
                # ---- log, validate, save
                if main:
                    log_step(run, writer, done, loss, lr_scheduler.get_last_lr()[0], grad_norm)
                if tc.validate_every and done % tc.validate_every == 0 and done < tc.steps:
                    validate(run, writer, raw_unet, ema, vae, data, cfg, accelerator, done)
                if done % tc.checkpoint_every == 0 or done == tc.steps:
                    save_all(run, done, raw_unet, ema, optimizer, lr_scheduler, accelerator, tc, guard.take(),
                             lambda: probe_loss(raw_unet, data, noise_scheduler, accelerator, tc))
            accelerator.wait_for_everyone()
            # the exported weights are the final checkpoint's, also when a kill came right after it
            weights = export_checkpoint(run, run.checkpoint_dir(tc.steps)) if main else {}
            memory_results = memory.results()  # training's peak, before the final evaluation and samples
            results = heldout_losses(ema_or(raw_unet, ema), data, noise_scheduler, accelerator, tc)
            validate(run, writer, raw_unet, ema, vae, data, cfg, accelerator, tc.steps)
            timed = step_times[WARMUP_STEPS_UNTIMED:] or step_times
            step_time = statistics.median(timed) if timed else None
            results.update(step_time_s=step_time, final_loss=loss, steps=tc.steps, timed_steps=len(timed),
                           samples_per_s=tc.batch_size * tc.grad_accum * world / step_time if step_time else None,
                           **memory_results)
            manifest.results.update(results)
    if main:
        writer.close()
        TrainResult(budget=budget, world_size=world, train_tiles=len(data.train_keys),
                    unet_parameters=count_parameters(raw_unet),
                    **{k: v for k, v in results.items() if k in TrainResult.model_fields}).save(run.path)
        write_model_card(run)
        run.mark_finished(inputs, tc.steps, weights)  # last: the run's records are complete
        timing = f"{step_time:.3f} s/step" if step_time else "no steps run here"
        info(f"{run.name}: loss {loss:.4f}; held-out {results['heldout_loss']:.4f} vs predict-zero "
             f"{results['heldout_zero_baseline']:.4f}; {timing}; peak memory "
             f"{results['peak_memory_bytes'] / 2**20:.0f} MiB ({results['memory_kind']})")
    return run.path


class LossGuard:
    """Stops a run whose loss is not finite or has exploded, naming the last checkpoint that had not
    diverged; collects the losses each checkpoint records (checkpoints.loss_stats)."""

    def __init__(self, run: RunFolder, initial: float | None):
        self.run, self.initial, self.window = run, initial, []

    def check(self, loss: float, step: int) -> None:
        if self.initial is None and math.isfinite(loss):
            self.initial = loss
        exploded = math.isfinite(loss) and loss > EXPLODED_LOSS_FACTOR * max(self.initial or loss, 1e-8)
        if not math.isfinite(loss) or exploded:
            good = last_good_checkpoint(self.run)
            what = f"{loss:.4g} ({EXPLODED_LOSS_FACTOR:g}x the first step's {self.initial:.4g})" if exploded else f"{loss}"
            raise HistosynthError(f"{self.run.path}: loss is {what} at step {step}; stopped. Last good checkpoint: "
                                  f"{good or 'none'} (lower train.lr, enable train.grad_clip, or check the latents)")
        self.window.append(loss)

    def take(self) -> dict:
        stats, self.window = loss_stats(self.initial, self.window), []
        return stats


def init_weights(unet, source: str) -> None:
    """Start from another run's U-Net (EMA weights when it has them), strictly: same shapes, no leftovers."""
    from diffusers import UNet2DConditionModel

    path = Path(source)
    for candidate in (RunFolder(path).unet_ema_dir, RunFolder(path).unet_dir, path):
        if (candidate / "config.json").exists():
            break
    else:
        raise HistosynthError(f"{path}: train.init_from needs a run folder or a U-Net folder (config.json not found)")
    pretrained = UNet2DConditionModel.from_pretrained(candidate)
    try:
        unet.load_state_dict(pretrained.state_dict(), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[1:2] or [str(exc)]
        raise HistosynthError(f"{candidate}: U-Net does not match this run's unet config ({first[0].strip()})") from None
    info(f"initialised the U-Net from {candidate}")


def ema_or(unet, ema):
    return ema_unet(unet, ema).to(next(unet.parameters()).device) if ema is not None else unet


def save_all(run, step, raw_unet, ema, optimizer, lr_scheduler, accelerator, tc, losses: dict, probe) -> None:
    """Checkpoint, then make the run's top-level unet/ (and unet_ema/) copies of it for sampling.

    `probe()` is the loss of the weights being saved on a fixed batch: the losses logged before a
    checkpoint were computed before its last update, so they cannot vouch for its weights alone."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        losses = {**losses, "saved_weights": probe()}
        extra = {"world_batch": tc.batch_size * accelerator.num_processes, "seed": tc.seed, "loss": losses}
        path = save_checkpoint(run, step, raw_unet, ema, optimizer, lr_scheduler, extra, keep=tc.keep_checkpoints)
        export_checkpoint(run, path)
    accelerator.wait_for_everyone()


@torch.no_grad()
def probe_loss(unet, data: TrainData, noise_scheduler, accelerator, tc) -> float | None:
    """The training loss of `unet` on a fixed held-out batch (None when not finite: JSON-safe)."""
    was_training = unet.training
    unet.eval()
    loss = float(denoising_loss(unet, data.heldout(tc.heldout_tiles, noise_scheduler), noise_scheduler, accelerator, tc))
    unet.train(was_training)
    return loss if math.isfinite(loss) else None


def validate(run, writer, raw_unet, ema, vae, data, cfg, accelerator, step) -> None:
    if not accelerator.is_main_process or cfg.train.validation_images == 0:
        return
    was_training = raw_unet.training
    grid = validation_grid(ema_or(raw_unet, ema).eval(), vae, data, cfg, accelerator.device)
    raw_unet.train(was_training)
    save_png(run.validation_dir / f"step-{step}.png", grid, {"synthetic": "true", "step": str(step)})
    writer.add_image("validation", grid, step, dataformats="HWC")


def make_writer(run: RunFolder, start: int):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run.logs_dir), purge_step=start + 1 if start else None)


def truncate_loss_log(path: Path, step: int) -> None:
    """After a resume from step k, rows logged past k by the killed run are dropped (they repeat)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if int(ln.split(",")[0]) <= step]
    path.write_text("\n".join(keep) + "\n")


def log_step(run: RunFolder, writer, step: int, loss: float, lr: float, grad_norm) -> None:
    path = run.loss_log
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("step,loss,lr,grad_norm\n")
    norm = float(grad_norm) if grad_norm is not None else float("nan")
    with open(path, "a") as f:
        f.write(f"{step},{loss:.8g},{lr:.6g},{norm:.6g}\n")
    writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("train/lr", lr, step)


def log_samples(run: RunFolder, rank: int, step: int, micro: int, tile_ids: list[int]) -> None:
    path = run.logs_dir / f"samples-rank{rank}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(f"{step + 1} {micro} " + " ".join(map(str, tile_ids)) + "\n")
