"""Fault and bad-input probes (issue 13): kill -9 and rerun, reruns of finished work, concurrent
runs, a stale cache, bad options and a server that is down. Each probe prints `held` or `FAILED`
with what it saw; the table and a JSON record go to benchmarks/results/faults.{txt,json}.

Runs the real command line (`python -m histosynth.cli`) on the built-in sample with the tiny-cpu
preset and a smaller U-Net, so it fits in about 10 minutes on 2 cores:

    .venv/bin/python benchmarks/faults.py [--out benchmarks/results] [--work DIR] [--only kill-train-final,...]

What "held" means per probe is written in its docstring; a kill lands when the probe's trigger
(a file the stage writes, a request the server sees) appears, so where it lands varies a little
from run to run; every probe checks the rerun against an unkilled reference.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

FAST = """\
vae: {steps: 2, batch_size: 4, scale_tiles: 16, eval_tiles: 4, dihedral_check_tiles: 0, cache_dihedral: false}
unet: {block_out_channels: [32, 64], cross_attention_levels: [false, true], layers_per_block: 1}
train: {steps: 6, batch_size: 8, checkpoint_every: 3, validation_images: 0, heldout_tiles: 8, warmup_steps: 0}
sample: {steps: 3, batch_size: 4}
"""
SLIDE = "TCGA-HS-{:04d}-01Z-00-DX1.tiff"
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
           TOKENIZERS_PARALLELISM="false", OPENAI_API_KEY="sk-faults-probe")


# ---- running commands -------------------------------------------------------------------------
class Result:
    def __init__(self, rc: int | None, out: str, err: str, killed: bool = False):
        err = "\n".join(ln for ln in err.splitlines() if "━" not in ln)  # progress bars are not messages
        self.rc, self.out, self.err, self.killed = rc, out, err, killed

    @property
    def text(self) -> str:
        return self.out + self.err

    def __repr__(self) -> str:
        return f"rc={self.rc}{' (killed)' if self.killed else ''} {self.err.strip()[-300:]!r}"


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "histosynth.cli", *args]


def run(*args: str, timeout: float = 300) -> Result:
    proc = subprocess.run(command(*args), env=ENV, capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(command(*args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> Result:
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, out, err)


def kill_when(trigger: Callable[[], bool], *args: str, timeout: float = 300) -> Result:
    """Run a command and kill -9 it as soon as `trigger()` holds; `killed` says whether it did."""
    proc = start(*args)
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        if trigger():
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate()
            return Result(proc.returncode, out, err, killed=True)
        time.sleep(0.01)
    result = finish(proc)
    return result


# ---- data -------------------------------------------------------------------------------------
def digest(path: Path) -> str:
    """Identity of a file, or of a folder's files (names + bytes)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def pixels(folder: Path) -> dict[str, str]:
    import numpy as np
    from PIL import Image

    return {p.name: hashlib.sha256(np.asarray(Image.open(p)).tobytes()).hexdigest()[:16] for p in sorted(folder.glob("[0-9]*.png"))}  # generated images, not the contact sheet


def tile_table(ws: Path) -> list[tuple]:
    import pandas as pd

    index = pd.read_parquet(ws / "tiles" / "index.parquet")
    return sorted(zip(index["slide_id"], index["x"].astype(int), index["y"].astype(int), index["tissue"].round(4)))


def add_slides(sample: Path, count: int) -> None:
    """More slides (copies of the sample's under new case ids) and a report for each."""
    source = sorted((sample / "slides").glob("*.tiff"))
    with open(sample / "reports.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i in range(count):
        case = f"TCGA-HS-{10 + i:04d}"
        shutil.copyfile(source[i % len(source)], sample / "slides" / SLIDE.format(10 + i))
        rows.append({**rows[i % 3], "patient_filename": f"{case}.report", "patient_id": case})
    write_reports(sample, rows)


def write_reports(sample: Path, rows: list[dict]) -> None:
    with open(sample / "reports.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the probes -------------------------------------------------------------------------------
class Faults:
    def __init__(self, work: Path):
        self.work = work
        self.fast = work / "fast.yaml"
        self.fast.write_text(FAST)
        self.sample = work / "sample"
        self.base = work / "base"

    def ws(self, name: str, source: Path | None = None) -> Path:
        """A copy of the prepared base workspace (or of `source`)."""
        dest = self.work / name
        shutil.copytree(source or self.base, dest, symlinks=True)
        return dest

    def opts(self, ws: Path) -> list[str]:
        return ["-w", str(ws), "--config", str(self.fast)]

    def prepare(self) -> None:
        """The built-in sample through every stage up to encode, and a finished reference run."""
        steps = [("sample-data", str(self.sample)),
                 ("tile", str(self.sample / "slides"), *self.opts(self.base), "--preset", "tiny-cpu"),
                 ("reports", str(self.sample / "reports.csv"), *self.opts(self.base)),
                 ("summarize", *self.opts(self.base), "--budget", "35"),
                 ("embed", *self.opts(self.base), "--budget", "35"),
                 ("train-vae", *self.opts(self.base)),
                 ("encode", *self.opts(self.base))]
        for args in steps:
            result = run(*args)
            if result.rc != 0:
                raise SystemExit(f"setup failed at `histosynth {' '.join(args[:1])}`: {result}")
        self.ref = self.ws("ref")
        result = run("train", *self.opts(self.ref), "--budget", "35", "--name", "r")
        if result.rc != 0:
            raise SystemExit(f"setup failed at the reference train: {result}")
        self.ref_run = self.ref / "runs" / "r"
        self.ref_samples = self.ref / "samples-ref"
        self.sample_error = run("sample", "--run", str(self.ref_run), "--from-summaries", "--split", "test", "--n", "6",
                                "--batch", "2", "--steps", "3", "--out", str(self.ref_samples))
        if self.sample_error.rc == 0:
            self.sample_error = None
        else:  # the sample probe fails; the others still run
            print(f"setup: the reference sample failed: {self.sample_error}", flush=True)

    # -- kill -9 and rerun
    def kill_tile(self):
        """kill -9 while tiling 12 slides, rerun: exit 0 and the same tiles as an unkilled run."""
        sample = self.work / "sample-12"
        shutil.copytree(self.sample, sample)
        add_slides(sample, 9)
        ref, ws = self.work / "tile-ref", self.work / "tile-killed"
        first = run("tile", str(sample / "slides"), *self.opts(ref), "--preset", "tiny-cpu")
        slides = ws / "tiles" / "slides"
        killed = kill_when(lambda: slides.is_dir() and any(slides.iterdir()),
                           "tile", str(sample / "slides"), *self.opts(ws), "--preset", "tiny-cpu")
        again = run("tile", str(sample / "slides"), *self.opts(ws), "--preset", "tiny-cpu")
        held = first.rc == 0 and again.rc == 0 and tile_table(ws) == tile_table(ref)
        return held, f"killed={killed.killed}; rerun {again}; same tiles as unkilled: {held}"

    def kill_summarize(self):
        """kill -9 during `summarize --backend openai` (server answering slowly), rerun: every case ok,
        at most the one request in flight repeated."""
        from histosynth.reports.mockserver import ScriptedServer

        ws = self.ws("summarize-killed")
        shutil.rmtree(ws / "summaries")
        with ScriptedServer(latency_s=1.0) as server:
            args = ("summarize", *self.opts(ws), "--budget", "35", "--backend", "openai", "--base-url",
                    server.base_url, "--set", "summaries.concurrency=1")
            killed = kill_when(lambda: len(server.log) >= 2, *args)
            again = run(*args)
            requests = len(server.log)
        import pandas as pd

        rows = pd.read_parquet(ws / "summaries" / "budget-35.parquet") if again.rc == 0 else None
        ok = rows is not None and len(rows) == 3 and (rows.get("status", pd.Series(["ok"] * 3)) == "ok").all()
        held = killed.killed and again.rc == 0 and ok and requests <= 4
        return held, f"killed={killed.killed}; rerun {again}; {requests} requests for 3 cases; all ok: {ok}"

    def kill_embed(self):
        """kill -9 during embed, rerun: exit 0 and the same embeddings as an unkilled run."""
        ws = self.ws("embed-killed")
        shutil.rmtree(ws / "embeddings")
        folder = ws / "embeddings"
        killed = kill_when(lambda: folder.is_dir() and any(folder.rglob("*.json")),
                           "embed", *self.opts(ws), "--budget", "35")
        again = run("embed", *self.opts(ws), "--budget", "35")
        same = again.rc == 0 and embeddings_of(ws) == embeddings_of(self.base)
        return same, f"killed={killed.killed}; rerun {again}; same embeddings as unkilled: {same}"

    def kill_encode(self):
        """kill -9 during encode, rerun: exit 0 and the same latents, tile for tile, as an unkilled run."""
        ws = self.ws("encode-killed")
        shutil.rmtree(ws / "latents")
        folder = ws / "latents"
        killed = kill_when(lambda: folder.is_dir() and any(folder.iterdir()), "encode", *self.opts(ws))
        again = run("encode", *self.opts(ws))
        same = again.rc == 0 and latents_of(ws) == latents_of(self.base)
        return same, f"killed={killed.killed}; rerun {again}; same latents as unkilled: {same}"

    def kill_train_mid(self):
        """kill -9 after the first checkpoint, rerun: the loss curve and EMA weights of an unkilled run."""
        ws = self.ws("train-mid")
        run_dir = ws / "runs" / "r"
        killed = kill_when(lambda: (run_dir / "checkpoints" / "step-3" / "state.json").exists(),
                           "train", *self.opts(ws), "--budget", "35", "--name", "r")
        again = run("train", *self.opts(ws), "--budget", "35", "--name", "r")
        same_loss = again.rc == 0 and (run_dir / "logs" / "loss.csv").read_text() == (self.ref_run / "logs" / "loss.csv").read_text()
        same_weights = again.rc == 0 and digest(run_dir / "unet_ema") == digest(self.ref_run / "unet_ema")
        return same_loss and same_weights, (f"killed={killed.killed}; rerun {again}; same loss curve: {same_loss}; "
                                            f"same EMA weights: {same_weights}")

    def kill_train_final(self):
        """kill -9 right after the final checkpoint, rerun: unet/ and unet_ema/ equal the final
        checkpoint's (hash), no `loss nan`, a finite final loss, the run finished."""
        ws = self.ws("train-final")
        run_dir = ws / "runs" / "r"
        final = run_dir / "checkpoints" / "step-6"
        killed = kill_when(lambda: (final / "state.json").exists(), "train", *self.opts(ws), "--budget", "35", "--name", "r")
        before = {n: digest(run_dir / n) for n in ("unet", "unet_ema") if (run_dir / n).is_dir()}
        again = run("train", *self.opts(ws), "--budget", "35", "--name", "r")
        hashes = {n: (digest(run_dir / n), digest(final / n)) for n in ("unet", "unet_ema")}
        equal = all(a == b for a, b in hashes.values())
        manifest = json.loads((run_dir / "manifest.json").read_text()) if again.rc == 0 else {}
        final_loss = (manifest.get("results") or {}).get("final_loss")
        finite = isinstance(final_loss, (int, float)) and final_loss == final_loss
        nan = "loss nan" in again.text.lower()
        held = again.rc == 0 and equal and finite and not nan and digest(run_dir / "unet_ema") == digest(self.ref_run / "unet_ema")
        stale = {n: before.get(n) != hashes[n][1] for n in hashes}
        return held, (f"killed={killed.killed} (exports stale at the kill: {stale}); rerun {again}; exported == "
                      f"final checkpoint: {equal}; final_loss {final_loss}; 'loss nan' printed: {nan}")

    def rerun_finished_train(self):
        """Rerun a finished train: exit 0, says it is finished, changes no file of the run."""
        ws = self.ws("train-finished", self.ref)
        run_dir = ws / "runs" / "r"
        before = {p: digest(run_dir / p) for p in ("manifest.json", "unet", "unet_ema", "checkpoints")}
        again = run("train", *self.opts(ws), "--budget", "35", "--name", "r")
        after = {p: digest(run_dir / p) for p in before}
        said = "finished" in again.text
        held = again.rc == 0 and before == after and said
        return held, f"rerun {again}; unchanged: {before == after}; says finished: {said}"

    def kill_sample(self):
        """kill -9 after the first images, rerun: the same pixels as an unkilled run."""
        if self.sample_error is not None:
            return False, f"the reference sample failed: {self.sample_error}"
        out = self.work / "samples-killed"
        args = ("sample", "--run", str(self.ref_run), "--from-summaries", "--split", "test", "--n", "6", "--batch", "2",
                "--steps", "3", "--out", str(out))
        killed = kill_when(lambda: out.is_dir() and any(out.glob("*.png")), *args)
        again = run(*args)
        same = again.rc == 0 and pixels(out) == pixels(self.ref_samples) and len(pixels(out)) == 6
        return same, f"killed={killed.killed}; rerun {again}; same 6 images as unkilled: {same}"

    # -- concurrency
    def concurrent_summarize(self):
        """Two `summarize` at once: the second exits non-zero naming the first's PID; no case is asked twice."""
        from histosynth.reports.mockserver import ScriptedServer

        ws = self.ws("summarize-twice")
        shutil.rmtree(ws / "summaries")
        # 6 s per request, one at a time: the first run is still working when the second has started
        with ScriptedServer(latency_s=6.0) as server:
            args = ("summarize", *self.opts(ws), "--budget", "35", "--backend", "openai", "--base-url", server.base_url,
                    "--set", "summaries.concurrency=1")
            first = start(*args)
            wait_for(lambda: len(server.log) >= 1 or first.poll() is not None)
            second = finish(start(*args))
            first = finish(first)
            requests = len(server.log)
        refused = second.rc not in (0, None) and "another" in second.err and "PID" in second.err
        held = first.rc == 0 and refused and requests == 3
        return held, f"first {first}; second {second}; {requests} requests for 3 cases"

    def concurrent_tile(self):
        """Two `tile` at once: the second exits non-zero naming the first's PID; the first tiles everything."""
        sample = self.work / "sample-30"  # enough slides that the first run is still tiling when the second starts
        shutil.copytree(self.sample, sample)
        add_slides(sample, 27)
        ws = self.work / "tile-twice"
        args = ("tile", str(sample / "slides"), *self.opts(ws), "--preset", "tiny-cpu")
        first = start(*args)
        slides = ws / "tiles" / "slides"
        wait_for(lambda: (slides.is_dir() and any(slides.iterdir())) or first.poll() is not None)
        second = finish(start(*args))
        first = finish(first)
        refused = second.rc not in (0, None) and "another" in second.err and "PID" in second.err
        complete = first.rc == 0 and len({t[0] for t in tile_table(ws)}) == 30
        return refused and complete, f"first {first}; second {second}; all 30 slides tiled: {complete}"

    # -- stale cache
    def stale_cache(self):
        """Add a slide that sorts first; rerun tile, reports, summarize, embed but not encode; train:
        it says the latent cache is stale, encodes what it lacks, and pairs every tile with its own
        latents and its own case's caption."""
        ws = self.ws("stale")
        sample = self.work / "sample-stale"
        shutil.copytree(self.sample, sample)
        shutil.copyfile(sample / "slides" / SLIDE.format(3), sample / "slides" / SLIDE.format(0))
        with open(sample / "reports.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        rows.append({**rows[0], "patient_filename": "TCGA-HS-0000.report", "patient_id": "TCGA-HS-0000",
                     "text": "Specimen: colon. Diagnosis: mucinous adenocarcinoma with signet ring cells."})
        write_reports(sample, rows)
        for args in (("tile", str(sample / "slides"), *self.opts(ws)), ("reports", str(sample / "reports.csv"), *self.opts(ws)),
                     ("summarize", *self.opts(ws), "--budget", "35"), ("embed", *self.opts(ws), "--budget", "35")):
            step = run(*args)
            if step.rc != 0:
                return False, f"`histosynth {args[0]}` failed: {step}"
        trained = run("train", *self.opts(ws), "--budget", "35", "--name", "r")
        said = "stale" in trained.text
        paired, detail = check_pairing(ws, self.fast)
        return trained.rc == 0 and said and paired, f"train {trained}; says stale: {said}; {detail}"

    # -- bad input
    def bad_options(self):
        """Each bad option: exit 2, one line naming the option, nothing written."""
        ws = self.ws("bad-options", self.ref)
        run_dir = ws / "runs" / "r"
        sample = ("sample", "--run", str(run_dir), "--from-summaries", "--n", "2", "--out", str(ws / "bad-samples"))
        cases = [(sample + ("--steps", "0"), "steps"), (sample + ("--steps", "-2"), "steps"),
                 (sample + ("--guidance", "nan"), "guidance"), (sample + ("--guidance", "-1"), "guidance"),
                 (sample + ("--eta", "-0.5"), "eta"),
                 (("summarize", *self.opts(ws), "--budget", "0"), "budget"),
                 (("summarize", *self.opts(ws), "--budget", "-5"), "budget"),
                 (("summarize", *self.opts(ws), "--budget", "abc"), "budget")]
        failed = []
        for args, option in cases:
            before = snapshot(ws)
            result = run(*args)
            lines = [ln for ln in result.err.strip().splitlines() if ln.strip()]
            ok = result.rc == 2 and len(lines) == 1 and option in lines[0] and snapshot(ws) == before
            if not ok:
                failed.append(f"`{' '.join(a for a in args[:1] + args[-2:])}`: rc={result.rc}, "
                              f"{len(lines)} line(s) {lines[:1]}, unchanged={snapshot(ws) == before}")
        return not failed, f"{len(cases) - len(failed)}/{len(cases)} refused in one line; " + "; ".join(failed)

    def server_down(self):
        """`summarize --backend openai` with nothing listening: non-zero exit, the failed cases listed,
        no row claiming the openai backend for text it did not write."""
        import pandas as pd

        ws = self.ws("server-down")
        shutil.rmtree(ws / "summaries")
        result = run("summarize", *self.opts(ws), "--budget", "35", "--backend", "openai", "--base-url",
                     f"http://127.0.0.1:{closed_port()}/v1", "--set", "summaries.request_retries=0",
                     "--set", "summaries.max_attempts=1", "--set", "summaries.timeout_s=5")
        listed = all(c in result.text for c in ("TCGA-HS-0001", "TCGA-HS-0002", "TCGA-HS-0003"))
        path = ws / "summaries" / "budget-35.parquet"
        claims = 0
        if path.exists():
            rows = pd.read_parquet(path)
            if {"backend", "status"} <= set(rows.columns):
                claims = int(((rows["backend"].astype(str).str.startswith("openai")) & (rows["status"] != "ok")).sum())
        held = result.rc not in (0, None) and listed and claims == 0
        return held, f"{result}; failed cases listed: {listed}; rows claiming openai without its text: {claims}"


def wait_for(condition: Callable[[], bool], timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not condition() and time.monotonic() - t0 < timeout:
        time.sleep(0.01)


def embeddings_of(ws: Path) -> dict:
    """tile key -> sha of its condition's hidden states, over every embeddings folder."""
    import pandas as pd
    import torch

    from histosynth.text.store import EmbeddingSet

    out = {}
    for folder in sorted((ws / "embeddings").iterdir()):
        emb = EmbeddingSet(folder)
        tiles = pd.read_parquet(folder / "tiles.parquet")
        keys = tiles["tile_key"].tolist() if "tile_key" in tiles.columns else tiles["tile_id"].tolist()
        hidden, _ = emb.for_keys(keys) if "tile_key" in tiles.columns else emb.for_tiles(keys)
        out[folder.name] = {k: hashlib.sha256(h.to(torch.float32).numpy().tobytes()).hexdigest()[:12]
                            for k, h in zip(keys, hidden)}
    return out


def latents_of(ws: Path) -> dict:
    """tile key -> sha of its cached latents (the cache named by the last encode)."""
    from histosynth.latents.store import LatentStore
    from histosynth.workspace import Workspace

    store = LatentStore.current(Workspace(ws))
    keys = store.keys()
    return {k: hashlib.sha256(z.numpy().tobytes()).hexdigest()[:12] for k, z in zip(keys, store.for_keys(keys))}


def check_pairing(ws: Path, fast: Path) -> tuple[bool, str]:
    """Every training tile's latents are its own pixels' encoding and its text its own case's."""
    import pandas as pd
    import torch

    from histosynth.fileio import text_hash
    from histosynth.imageio import to_unit_range
    from histosynth.latents.vae import encode, load_vae
    from histosynth.slides.index import read_index
    from histosynth.slides.store import TileStore
    from histosynth.text.condition import tile_condition_text
    from histosynth.train.data import TrainData
    from histosynth.workspace import Workspace

    w = Workspace(ws)
    cfg = w.config(file=fast)
    data = TrainData(w, cfg, 35)
    index = read_index(w).set_index("tile_id")
    vae = load_vae(data.vae_source).eval()
    with torch.no_grad():
        fresh = torch.cat([encode(vae, to_unit_range(TileStore(w).get(data.train_ids[i:i + 16])))
                           for i in range(0, len(data.train_ids), 16)])
    latents_ok = bool(torch.allclose(data.latents, fresh * data.store.scaling_factor, atol=1e-4))
    summary = dict(pd.read_parquet(w.summaries_path(35))[["case_id", "summary"]].values)
    rows = index.loc[data.train_ids].reset_index()
    want = [text_hash(tile_condition_text(r, cfg.text.template, summary.get(r.case_id, ""), cfg.text.levels))
            for r in rows.itertuples(index=False)]
    texts_ok = [data.emb._keys()[k] for k in data.train_keys] == want
    wrong = sum(not torch.allclose(a, b * data.store.scaling_factor, atol=1e-4) for a, b in zip(data.latents, fresh))
    return latents_ok and texts_ok, (f"{len(data.train_ids)} training tiles: own latents {latents_ok} ({wrong} wrong), "
                                     f"own captions {texts_ok}")


PROBES = ["kill_tile", "kill_summarize", "kill_embed", "kill_encode", "kill_train_mid", "kill_train_final",
          "rerun_finished_train", "kill_sample", "concurrent_summarize", "concurrent_tile", "stale_cache",
          "bad_options", "server_down"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--work", type=Path, default=None, help="Working folder (default: a temporary one, removed).")
    parser.add_argument("--only", default="", help="Comma-separated probe names (default: all).")
    args = parser.parse_args()
    names = [n.replace("-", "_") for n in args.only.split(",") if n] or PROBES
    work = args.work or Path(tempfile.mkdtemp(prefix="histosynth-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    faults = Faults(work)
    faults.prepare()
    print(f"setup: {time.monotonic() - t0:.0f} s", flush=True)
    records = []
    for name in names:
        t1 = time.monotonic()
        try:
            held, detail = getattr(faults, name)()
        except Exception as exc:  # noqa: BLE001 - a probe that breaks is a failed probe, the others still run
            held, detail = False, f"probe error: {exc.__class__.__name__}: {exc}"
        seconds = time.monotonic() - t1
        records.append({"probe": name.replace("_", "-"), "held": bool(held), "seconds": round(seconds, 1),
                        "detail": detail, "expects": " ".join(getattr(Faults, name).__doc__.split())})
        print(f"{'held  ' if held else 'FAILED'} {name.replace('_', '-'):24s} {seconds:5.1f} s  {detail}", flush=True)
    total = time.monotonic() - t0
    summary = f"{sum(r['held'] for r in records)}/{len(records)} probes held in {total:.0f} s ({os.cpu_count()} cores)"
    print(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps({"summary": summary, "probes": records}, indent=2) + "\n")
    lines = [f"{'held  ' if r['held'] else 'FAILED'} {r['probe']:24s} {r['seconds']:5.1f} s  {r['detail']}" for r in records]
    (args.out / "faults.txt").write_text("\n".join(lines + [summary]) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
