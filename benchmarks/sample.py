"""Images per second of DPM-Solver++ at 20 steps vs DDIM at 50, same run, with guidance, side by side.

Both samplers get the same prompts and seeds. They are timed in alternating rounds (median of the
rounds), so background load hits both alike; the ratio is the number to compare (target >= 2x).
Then the KID of each sampler's images against the same real set. Without the FID Inception
weights the KID is computed on a randomly initialised Inception and says so: such values only
compare the two samplers with each other.

    .venv/bin/python benchmarks/sample.py --run WS/runs/NAME [--real WS:test] [--batch 16] [--rounds 3]
        [--guidance 1.5] [--threads 2] [--inception-weights pt_inception-2015-12-05-6726825d.pth]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

SAMPLERS = (("ddim", 50), ("dpmpp", 20))


def prompts_for(run: Path, n: int) -> list[str]:
    """Test-split condition texts when the run's workspace has them, else the template with no summary."""
    from histosynth.runfolder import RunFolder
    from histosynth.sample.generate import run_budget, run_workspace, summary_conditions

    folder = RunFolder(run)
    try:
        condition = folder.read_condition()
        ws = run_workspace(folder, condition, None)
        return [c["prompt"] for c in summary_conditions(ws, condition, n, "test", 0, run_budget(folder, condition, None))[0]]
    except Exception as exc:  # noqa: BLE001 - a benchmark still runs on a bare run folder
        print(f"(no test-split summaries: {exc}; using a fixed prompt)")
        return ["high tumor; high til; invasive ductal carcinoma"] * n


def feature_net(weights: str | None):
    """The FID Inception from its weights file, else a random one (labelled as such)."""
    import torch

    from histosynth.evaluate.inception import InceptionWeightsMissing, PoolFeatures, build_fid_inception, load_inception

    try:
        return load_inception(weights)[0], "KID"
    except InceptionWeightsMissing as exc:
        print(f"(no FID Inception weights: {exc})")
        torch.manual_seed(0)
        net = build_fid_inception()
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        return PoolFeatures(net).eval(), "KID on a RANDOM Inception (compares the two samplers only)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--real", default=None, help="real set for KID (default: the run's WS:test)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inception-weights", default=os.environ.get("HISTOSYNTH_INCEPTION"))
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from histosynth.evaluate.metrics import kid
    from histosynth.evaluate.sources import ImageSet, parse_source
    from histosynth.evaluate.stats import compute_stats
    from histosynth.imageio import save_png
    from histosynth.runfolder import RunFolder
    from histosynth.sample.pipeline import HistoSynthPipeline

    torch.set_num_threads(args.threads)
    pipes = {name: HistoSynthPipeline.from_pretrained(args.run, sampler=name, device="cpu") for name, _ in SAMPLERS}
    prompts = prompts_for(args.run, args.batch * args.rounds)
    times = {name: [] for name, _ in SAMPLERS}
    images = {name: [] for name, _ in SAMPLERS}
    for r in range(args.rounds):
        batch = prompts[r * args.batch:(r + 1) * args.batch]
        seeds = list(range(r * args.batch, (r + 1) * args.batch))
        for name, steps in SAMPLERS:
            t0 = time.perf_counter()
            out = pipes[name](prompt=batch, seed=seeds, num_inference_steps=steps, guidance_scale=args.guidance,
                              output_type="np").images
            times[name].append(time.perf_counter() - t0)
            images[name].extend(out)

    rate = {name: args.batch / statistics.median(t) for name, t in times.items()}
    print(f"run {args.run}, batch {args.batch}, guidance {args.guidance}, {args.rounds} rounds, {args.threads} threads")
    for name, steps in SAMPLERS:
        print(f"  {name:6s} {steps:3d} steps: {rate[name]:6.2f} images/s (median {statistics.median(times[name]):.2f} s/batch)")
    print(f"  DPM-Solver++ 20 / DDIM 50 speed ratio: {rate['dpmpp'] / rate['ddim']:.2f}x (target >= 2x)")

    real = args.real or f"{RunFolder(args.run).read_condition().source_workspace}:test"
    net, label = feature_net(args.inception_weights)
    real_set = ImageSet(parse_source(real), n=len(prompts))
    real_feats = compute_stats(real_set, {"inception"}, net, batch_size=16)["inception"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, _ in SAMPLERS:
            folder = Path(tmp) / name
            for i, img in enumerate(images[name]):
                save_png(folder / f"{i:05d}.png", img)
            feats = compute_stats(ImageSet(parse_source(folder)), {"inception"}, net, batch_size=16)["inception"]
            k = kid(real_feats, feats)
            print(f"  {label} vs {real} ({len(real_feats)} real, {len(feats)} generated), {name}: "
                  f"{k['kid']:.5f} +- {k['kid_std']:.5f} (subset {k['subset_size']})")


if __name__ == "__main__":
    main()
