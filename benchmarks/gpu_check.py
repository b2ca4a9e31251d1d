"""GPU check (<= 8 minutes on one GPU): what the paper-size presets cost before a cluster run.

    python benchmarks/gpu_check.py                         # on cuda; writes benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --tiny --device cpu     # the same code at toy sizes, seconds (the test)

Measured, each in the project's own code path:
  * training step time and peak `torch.cuda.max_memory_allocated` of the U-Net step (the trainer's
    `diffusion_loss`, `accelerate` autocast + gradient scaling, AdamW, grad clip) for
      - `pathldm` at its 154-token context, fp16;
      - `rao-gupta` at a 35-token summary budget (context computed as `histosynth embed` does)
        and at 154 tokens, bf16;
  * sampling images/s of `HistoSynthPipeline` (text encoding, guided denoising, VAE decode):
    DDIM 50 steps vs DPM-Solver++ 20 steps, rao-gupta at its 35-token context.

The text towers are RANDOMLY INITIALISED CLIP ViT-B/32-shaped models (PLIP and CLIP share that
shape; no weights can be downloaded here) and so are the U-Nets and VAEs: the figures are time and
memory only, never image quality. The JSON says so.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"
TIME_BUDGET_S = 480  # the 8 minutes on one GPU
RANDOM_NOTE = ("Text towers, U-Nets and VAEs are randomly initialised (CLIP ViT-B/32-shaped text towers: width 512, "
               "12 layers, 8 heads, 77 positions; PLIP has the same shape). Figures are time and memory only.")
# One training configuration per row: (name, preset, context or budget, precision)
TRAIN_CASES = (
    {"name": "pathldm-154-fp16", "preset": "pathldm", "context_length": 154, "precision": "fp16"},
    {"name": "rao-gupta-35-bf16", "preset": "rao-gupta", "budget": 35, "precision": "bf16"},
    {"name": "rao-gupta-154-bf16", "preset": "rao-gupta", "context_length": 154, "precision": "bf16"},
)
SAMPLERS = (("ddim", 50), ("dpmpp", 20))
# --tiny: the same code with toy shapes (a CPU test runs it in seconds); nothing here is a GPU figure.
TINY = {
    "text": {"hidden": 32, "intermediate": 64, "layers": 2, "heads": 4},
    "overrides": ["unet.block_out_channels=[32,32,32,32]", "unet.layers_per_block=1",
                  "vae.block_out_channels=[32,32,32]", "vae.layers_per_block=1", "vae.num_vq_embeddings=64"],
    "tile": 32, "batch": 2, "sample_batch": 2, "warmup": 1, "steps": 2,
}
FULL = {
    "text": {"hidden": 512, "intermediate": 2048, "layers": 12, "heads": 8},
    "overrides": [], "tile": None, "batch": None, "sample_batch": None, "warmup": 3, "steps": 10,
}
# A realistic condition text: the template prefix, then summary words up to the budget.
SUMMARY_WORDS = ("invasive ductal carcinoma grade 3 with necrosis and dense tumour infiltrating lymphocytes; "
                 "estrogen receptor positive, progesterone receptor negative, her2 equivocal; lymphovascular "
                 "invasion present; margins negative; ductal carcinoma in situ solid type with comedo necrosis").split()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="toy sizes: checks the code path in seconds, not a measurement")
    p.add_argument("--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT.relative_to(ROOT)}; "
                                                          "--tiny: stdout only unless given)")
    return p.parse_args(argv)


# ---- components ---------------------------------------------------------------------------------
def save_text_tower(folder: Path, shape: dict) -> Path:
    """A random CLIPTextModel with CLIP's real BPE tokenizer, saved like a downloaded one."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from histosynth.text.testing import save_clip_tokenizer

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                            num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                            max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    CLIPTextModel(config).save_pretrained(folder)
    save_clip_tokenizer(folder, max_length=77)
    return folder


def case_config(case: dict, sizes: dict):
    from histosynth.config import load_config

    return load_config(case["preset"], overrides=[*sizes["overrides"], f"train.mixed_precision={case['precision']}"])


def context_length(case: dict, cfg, encoder) -> int:
    """154 where given; else what `histosynth embed` computes from the budget and the template."""
    from histosynth.text.condition import context_length_for

    if case.get("context_length"):
        return case["context_length"]
    return context_length_for(encoder, cfg.text.template, case["budget"], list(cfg.text.levels))


def condition_texts(encoder, cfg, length: int, n: int) -> list[str]:
    """n condition texts whose token count fills `length` (start/end included), as real summaries would."""
    from histosynth.text.condition import condition_text

    texts = []
    for i in range(n):
        probs = {f: (i % 2) * 0.9 for f in ("tumor", "til")}
        words: list[str] = []
        for word in (SUMMARY_WORDS * 8)[i % 5:]:
            text = condition_text(cfg.text.template, " ".join([*words, word]), probs, list(cfg.text.levels))
            if encoder.tokenizer.count(text) + 2 > length:
                break
            words.append(word)
        texts.append(condition_text(cfg.text.template, " ".join(words), probs, list(cfg.text.levels)))
    return texts


def latent_shape(cfg, tile: int) -> tuple[int, int]:
    f = 2 ** (len(cfg.vae.block_out_channels) - 1)
    return cfg.vae.latent_channels, tile // f


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- training ---------------------------------------------------------------------------------------
def train_case(case: dict, sizes: dict, text_dir: Path, device) -> dict:
    """Step time (median of timed steps) and peak memory of the trainer's U-Net step."""
    import torch

    from histosynth import schedules
    from histosynth.text.encoders import load_encoder
    from histosynth.train.data import Batch
    from histosynth.train.memory import MemoryMeter
    from histosynth.train.trainer import diffusion_loss, make_accelerator
    from histosynth.train.unet import build_unet, count_parameters

    cfg = case_config(case, sizes)
    tile, batch = sizes["tile"] or cfg.slides.size, sizes["batch"] or cfg.train.batch_size
    encoder = load_encoder(str(text_dir), device=device)
    length = context_length(case, cfg, encoder)
    # Embeddings are cached before training (histosynth embed), so the step sees fixed hidden states.
    enc = encoder.encode(condition_texts(encoder, cfg, length, batch), context_length=length,
                         long_context=cfg.text.long_context)
    hidden, mask = enc.hidden.float(), (None if cfg.text.attend_padding else enc.mask)
    tokens = int(enc.mask.sum(dim=1).float().mean())
    del encoder, enc
    free(device)
    channels, size = latent_shape(cfg, tile)
    accelerator = make_accelerator(cfg.train)
    baseline = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    with MemoryMeter(device) as memory:
        torch.manual_seed(0)
        unet = build_unet(cfg, cross_attention_dim=hidden.shape[-1], latent_channels=channels, sample_size=size)
        n_params = count_parameters(unet)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        unet, optimizer = accelerator.prepare(unet, optimizer)
        scheduler = schedules.training_scheduler(cfg.diffusion)
        gen = torch.Generator().manual_seed(0)
        times, losses = [], []
        for step in range(sizes["warmup"] + sizes["steps"]):
            synchronize(device)
            t0 = time.perf_counter()
            b = Batch(tile_ids=list(range(batch)), latents=torch.randn((batch, channels, size, size), generator=gen),
                      noise=torch.randn((batch, channels, size, size), generator=gen),
                      timesteps=torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen),
                      hidden=hidden, mask=mask)
            loss = diffusion_loss(unet, b, scheduler, accelerator, cfg.train)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(unet.parameters(), cfg.train.grad_clip or 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize(device)
            if step >= sizes["warmup"]:
                times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
        peak = memory.results()
    del unet, optimizer, accelerator
    free(device)
    step_s = statistics.median(times)
    return {"name": case["name"], "preset": case["preset"], "budget": case.get("budget"), "context_length": length,
            "mean_real_tokens": tokens, "precision": case["precision"],
            "precision_used": effective_precision(case["precision"], device),
            "attend_padding": cfg.text.attend_padding, "batch": batch, "tile_px": tile,
            "latent": [channels, size, size], "unet_parameters": n_params, "cross_attention_dim": int(hidden.shape[-1]),
            "step_time_s": round(step_s, 4), "step_times_s": [round(t, 4) for t in times],
            "samples_per_s": round(batch / step_s, 2), "warmup_steps": sizes["warmup"],
            "peak_memory_bytes": peak["peak_memory_bytes"], "memory_kind": peak["memory_kind"],
            "allocated_before_bytes": int(baseline), "losses_finite": all(map(lambda v: v == v, losses))}


def effective_precision(precision: str, device) -> str:
    # The trainer's rule: fp16 autocast needs a GPU; on the CPU it runs bf16 instead.
    return "bf16" if precision == "fp16" and device.type != "cuda" else precision


# ---- sampling ---------------------------------------------------------------------------------------
def sampling(sizes: dict, text_dir: Path, device) -> list[dict]:
    """Images/s of DDIM-50 vs DPM++-20 through HistoSynthPipeline (rao-gupta, 35-token budget)."""
    import torch

    from histosynth import schedules
    from histosynth.latents.vae import build_vae
    from histosynth.runfolder import Condition
    from histosynth.sample.components import HistoSynthTextEncoder
    from histosynth.sample.pipeline import HistoSynthPipeline
    from histosynth.text.encoders import load_encoder
    from histosynth.train.unet import build_unet

    case = {"name": "rao-gupta-35", "preset": "rao-gupta", "budget": 35, "precision": "fp16"}
    cfg = case_config(case, sizes)
    tile, n = sizes["tile"] or cfg.slides.size, sizes["sample_batch"] or cfg.sample.batch_size
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    encoder = load_encoder(str(text_dir), device=device)
    length = context_length(case, cfg, encoder)
    channels, size = latent_shape(cfg, tile)
    torch.manual_seed(0)
    unet = build_unet(cfg, cross_attention_dim=encoder.width, latent_channels=channels, sample_size=size)
    vae = build_vae(cfg.vae, sample_size=tile).eval().requires_grad_(False)
    condition = Condition(encoder=str(text_dir), context_length=length, long_context=cfg.text.long_context,
                          attend_padding=cfg.text.attend_padding, template=cfg.text.template,
                          levels=tuple(cfg.text.levels), budget=35, width=encoder.width)
    base = schedules.training_scheduler(cfg.diffusion).config
    pipe = HistoSynthPipeline(unet=unet.to(dtype=dtype), vae=vae.to(dtype=dtype),
                              scheduler=schedules.sampling_scheduler(base, "ddim"),
                              text_encoder=HistoSynthTextEncoder(encoder, condition, cfg)).to(device)
    prompts = condition_texts(encoder, cfg, length, n)
    rows = []
    for sampler, steps in SAMPLERS:
        pipe.scheduler = schedules.sampling_scheduler(base, sampler)
        pipe(prompts[:1], num_inference_steps=2, output_type="np")  # warm-up: kernels, allocator
        synchronize(device)
        t0 = time.perf_counter()
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=cfg.sample.guidance, seed=0,
                      output_type="np").images
        synchronize(device)
        wall = time.perf_counter() - t0
        rows.append({"sampler": sampler, "steps": steps, "guidance": cfg.sample.guidance, "batch": n,
                     "context_length": length, "dtype": str(dtype).removeprefix("torch."), "tile_px": tile,
                     "wall_s": round(wall, 3), "images_per_s": round(n / wall, 3),
                     "finite": bool(images.shape[0] == n)})
    del pipe, unet, vae, encoder
    free(device)
    ddim, dpm = rows
    dpm["speedup_vs_ddim"] = round(dpm["images_per_s"] / ddim["images_per_s"], 2)
    return rows


# ---- main -------------------------------------------------------------------------------------------
def environment(device) -> dict:
    import diffusers
    import torch
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(), "host": platform.node()}


def run(args: argparse.Namespace) -> dict:
    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # dtype-cast notices of random models are noise here
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda: no CUDA device here (use --tiny --device cpu for the code path)")
    sizes = TINY if args.tiny else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        text_dir = save_text_tower(Path(tmp) / "text", sizes["text"])
        train = []
        for case in TRAIN_CASES:
            print(f"train: {case['name']} ...", flush=True)
            train.append(train_case(case, sizes, text_dir, device))
        print("sampling: ddim-50 vs dpmpp-20 ...", flush=True)
        samples = sampling(sizes, text_dir, device)
    wall = time.perf_counter() - started
    by_name = {r["name"]: r for r in train}
    short, long = by_name["rao-gupta-35-bf16"], by_name["rao-gupta-154-bf16"]
    return {
        "benchmark": "gpu_check", "mode": "tiny (code path only; NOT a measurement)" if args.tiny else "full",
        "random_weights": RANDOM_NOTE if not args.tiny else "Random weights at toy shapes (text tower width 32).", "environment": environment(device), "wall_s": round(wall, 1),
        "within_8_minutes": wall <= TIME_BUDGET_S, "train": train, "sampling": samples,
        "rao_gupta_35_vs_154": {
            "memory_ratio": round(short["peak_memory_bytes"] / long["peak_memory_bytes"], 4)
            if long["peak_memory_bytes"] else None,
            "step_time_ratio": round(short["step_time_s"] / long["step_time_s"], 4)},
        "command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]]),
    }


def print_table(result: dict) -> None:
    print(f"\n{result['mode']} on {result['environment']['device']}; {result['random_weights']}")
    print(f"{'case':<22}{'context':>8}{'batch':>6}{'step s':>9}{'peak MiB':>10}")
    for r in result["train"]:
        print(f"{r['name']:<22}{r['context_length']:>8}{r['batch']:>6}{r['step_time_s']:>9.3f}"
              f"{r['peak_memory_bytes'] / 2**20:>10.0f}")
    for r in result["sampling"]:
        print(f"{r['sampler']}-{r['steps']}: {r['images_per_s']:.3f} images/s (batch {r['batch']})")
    print(f"rao-gupta 35 vs 154 tokens: {result['rao_gupta_35_vs_154']}; total {result['wall_s']} s")


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run(args)
    print_table(result)
    out = args.out if args.out is not None else (None if args.tiny else DEFAULT_OUT)
    if out is not None:
        from histosynth.fileio import write_json

        write_json(out, result)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
