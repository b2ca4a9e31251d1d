"""Peak memory of a large image: overlapping windows (MultiDiffusion) vs the whole latent in one pass.

For an image of GRID x GRID tiles (default 4 x 4 windows), each mode runs in its own process: load
the run's pipeline, make one tile-sized image (so lazy allocations are done), note the memory, then
make the large image and report the peak increase over that baseline. On a GPU the figure is
torch's `max_memory_allocated`; on the CPU the peak RSS (sampled every 20 ms). "windows" is
`HistoSynthPipeline(height=, width=)`; "full" denoises the whole latent with one U-Net call per step
and decodes it in one VAE call, which is what a model without windowing does.

    .venv/bin/python benchmarks/large_image.py --run WS/runs/NAME [--grid 4] [--steps 5] [--threads 1]
        [--out benchmarks/results/large_image.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MODES = ("windows", "full")
PROMPT = "invasive ductal carcinoma, grade 3"


def measure(run: str, mode: str, grid: int, steps: int) -> dict:
    """One mode in this process: peak memory of the large image above the loaded, warmed-up model."""
    import torch

    from histosynth.manifest import PeakMemory
    from histosynth.sample.pipeline import HistoSynthPipeline

    pipe = HistoSynthPipeline.from_pretrained(run)
    pipe.set_progress_bar_config(disable=True)
    pipe(prompt=PROMPT, seed=0, num_inference_steps=1, output_type="np")  # warm-up at one tile
    size = grid * pipe.tile_size
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
    with PeakMemory() as memory:
        if mode == "windows":
            image = pipe(prompt=PROMPT, seed=1, num_inference_steps=steps, height=size, width=size, output_type="np")
        else:
            image = full_pass(pipe, size, steps)
    out = {"mode": mode, "size_px": size, "latent": size // pipe.vae_scale_factor, "window": pipe.unet.config.sample_size,
           "steps": steps, "device": str(pipe.device), "shape": list(image.images.shape)}
    if torch.cuda.is_available():
        out["peak_increase_bytes"] = int(torch.cuda.max_memory_allocated() - base)
        out["measure"] = "cuda max_memory_allocated above the loaded model"
    else:
        out["peak_increase_bytes"] = int(memory.peak - memory.baseline)
        out["measure"] = "peak RSS above the loaded, warmed-up model"
    return out


def full_pass(pipe, size: int, steps: int):
    """The whole latent through the U-Net at every step and through the VAE at once."""
    import torch

    from histosynth.imageio import to_uint8
    from histosynth.latents.vae import decode
    from histosynth.sample.pipeline import HistoSynthPipelineOutput
    from histosynth.schedules import denoise

    generators = [torch.Generator("cpu").manual_seed(1)]
    cond, mask = pipe.encode_prompt([PROMPT])
    uncond, uncond_mask = pipe.unconditional(1)
    latents = denoise(pipe.unet, pipe.scheduler, pipe.prepare_latents(generators, size, size), cond, uncond,
                      cond_mask=mask, uncond_mask=uncond_mask, steps=steps, guidance=pipe.defaults.guidance,
                      generator=generators, window=None)
    with torch.no_grad():
        images = decode(pipe.vae, latents / pipe.vae.config.scaling_factor)
    return HistoSynthPipelineOutput(images=to_uint8(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--grid", type=int, default=4, help="windows per side of the large image")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--mode", choices=MODES, default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.mode:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.run, args.mode, args.grid, args.steps)))
        return
    rows = {}
    for mode in MODES:
        done = subprocess.run([sys.executable, __file__, "--run", args.run, "--grid", str(args.grid), "--steps",
                               str(args.steps), "--threads", str(args.threads), "--mode", mode],
                              capture_output=True, text=True, check=True)
        rows[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    w, f = rows["windows"], rows["full"]
    lines = [
        f"run {args.run}: {w['size_px']} x {w['size_px']} px image = {w['latent']} x {w['latent']} latent, "
        f"{args.grid} x {args.grid} windows of {w['window']} x {w['window']} latent px (stride {w['window'] // 2}), "
        f"{args.steps} steps, {w['device']}, {args.threads} thread(s); {w['measure']}",
        f"  windows (MultiDiffusion + tiled decode): {w['peak_increase_bytes'] / 2**20:8.1f} MiB",
        f"  full latent in one pass:                 {f['peak_increase_bytes'] / 2**20:8.1f} MiB",
        f"  windows / full: {w['peak_increase_bytes'] / max(1, f['peak_increase_bytes']):.2f} "
        f"(acceptance: below 1)",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
