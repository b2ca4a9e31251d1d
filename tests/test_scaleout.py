"""encode, embed and sample under `accelerate launch` with 2 CPU processes (gloo) equal one process.

Each stage runs once in this process, its output is set aside, and the same command runs under
`accelerate launch --multi_gpu --num_processes 2` on the CPU: latents and embeddings byte-identical,
images pixel-identical, no batch done twice (the merge checks the batch indices) and none missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histosynth import distributed
from histosynth.experiments.runner import Pipeline, SampleSpec
from histosynth.workspace import Workspace

# Several batches in every stage: 9 VAE batches, 3 text batches, 4 sampling batches.
SMOKE = ("slides.size=32", "vae.steps=4", "vae.encode_batch_size=32", "vae.cache_dihedral=false",
         "vae.dihedral_check_tiles=0", "text.batch_size=1", "train.steps=2", "train.checkpoint_every=2",
         "train.validation_images=0", "sample.steps=2", "sample.batch_size=2", "split.seed=1")
LAUNCH = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "histosynth.cli"]


@pytest.mark.unit
def test_helpers_are_the_identity_in_one_process():
    assert distributed.world() == (0, 1) and distributed.is_main()
    assert distributed.my_share(["a", "b", "c"]) == [(0, "a"), (1, "b"), (2, "c")]
    assert distributed.gather_ordered([(1, "b"), (0, "a")], 2) == ["a", "b"]
    with pytest.raises(RuntimeError, match="expected batches 0..2"):
        distributed.gather_ordered([(0, "a"), (0, "a"), (2, "c")], 3)  # a duplicate and a gap never merge


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaleout")
    ws = Workspace(out / "ws")
    cfg = ws.ensure_config(preset="tiny-cpu", overrides=SMOKE)
    Pipeline(ws, cfg, sample_data=out / "sample").run(
        stages=["sample-data", "tile", "reports", "summarize", "embed", "train-vae", "encode", "train", "sample"],
        run_name="tiny", sample=SampleSpec(n=8, out_dir=out / "samples", split="train"))
    return out, ws


def launch(args: list[str]) -> None:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    proc = subprocess.run([sys.executable, *LAUNCH, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 of 2" in proc.stderr + proc.stdout  # two processes shared the batches


def set_aside(folder: Path) -> Path:
    aside = folder.with_name(folder.name + "-single")
    shutil.move(folder, aside)
    return aside


def same_files(a: Path, b: Path, pattern: str) -> list[str]:
    names = sorted(p.name for p in a.glob(pattern))
    assert names and names == sorted(p.name for p in b.glob(pattern))
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names), "bytes differ"
    return names


def test_encode_two_processes_byte_identical(single):
    out, ws = single
    folder = next(p for p in ws.latents_dir.iterdir() if p.is_dir())
    aside = set_aside(folder)
    launch(["encode", "--workspace", str(ws.root)])
    same_files(aside, folder, "shard-*.safetensors")
    pd.testing.assert_frame_equal(pd.read_parquet(aside / "tiles.parquet"), pd.read_parquet(folder / "tiles.parquet"))


def test_embed_two_processes_byte_identical(single):
    out, ws = single
    folder = next(p for p in ws.embeddings_dir.iterdir() if p.is_dir())
    aside = set_aside(folder)
    launch(["embed", "--workspace", str(ws.root)])
    assert len(same_files(aside, folder, "*.safetensors")) >= 2  # the text shards and the unconditional one
    for name in ("tiles.parquet", "texts.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(aside / name), pd.read_parquet(folder / name))


def test_sample_two_processes_pixel_identical(single):
    from histosynth.imageio import load_rgb

    out, ws = single
    aside = set_aside(out / "samples")
    launch(["sample", "--run", str(ws.run_dir("tiny")), "--from-summaries", "--split", "train", "--n", "8",
            "--out", str(out / "samples")])
    files = sorted(p.name for p in aside.glob("0*.png"))
    assert len(files) == 8 and files == sorted(p.name for p in (out / "samples").glob("0*.png"))
    for name in files:
        assert np.array_equal(load_rgb(aside / name), load_rgb(out / "samples" / name)), name
    lines = (out / "samples" / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 8 and lines == (aside / "metadata.jsonl").read_text().splitlines()
