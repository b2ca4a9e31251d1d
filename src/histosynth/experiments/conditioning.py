"""Does the text condition steer the images? Two stains, two captions, a stain score and an AUROC.

Two visually different sources go through the real pipeline (tile -> reports -> summarize ->
embed -> VAE -> encode -> train): immunohistochemistry (the built-in sample's picture: brown DAB
with blue haematoxylin) and H&E (crops of a real H&E slide: pink eosin, purple haematoxylin). Each
source is two cases with the same number of pixels, so both contribute about as many tiles.

- conditioned: every IHC case is described as IHC, every H&E case as H&E;
- control: the same workspace, but before training which tile carries which caption is shuffled
  across all tiles (a permutation of `text_hash` in the embeddings' tiles.parquet), so each caption
  describes a random half of the tiles of both sources. (Shuffling whole cases is no control: the
  caption would still name a case, and cases of one source differ in stain.)

Images generated for each caption are scored by their mean eosin optical density (colour
deconvolution by `skimage.color.rgb2hed`): H&E is pink, the IHC picture has no eosin at all (on the
real tiles this score separates the sources perfectly; DAB alone does not, as many IHC tiles hold
little brown). The AUROC of the score between the two captions (H&E caption as positive) says how
well the text steers the stain: near 1 when it does, near 0.5 in the control.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from ..fileio import atomic_path, write_json
from ..sample_data import NOMINAL_MPP, on_glass, write_pyramidal_tiff
from ..workspace import Workspace
from .demo import images_by_prompt

IHC_CAPTION = "Stain: immunohistochemistry with brown DAB chromogen and blue haematoxylin counterstain."
HE_CAPTION = "Stain: haematoxylin and eosin, pink eosin and purple nuclei."
CROP_PX = 256                 # edge of every case's tissue square, level-0 px


def stain_score(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Per image: mean eosin optical density (rgb2hed channel 1); pink H&E high, brown-blue IHC ~0."""
    from skimage.color import rgb2hed

    return np.array([float(rgb2hed(np.asarray(img)[..., :3])[..., 1].mean()) for img in images])


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative): the Mann-Whitney form of the ROC area."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return float(roc_auc_score(labels, np.r_[positive, negative]))


def tissue_square(slide_path: Path, size: int, count: int) -> list[np.ndarray]:
    """`count` non-overlapping level-0 squares of a slide with the most tissue (least white)."""
    import openslide

    slide = openslide.OpenSlide(str(slide_path))
    w, h = slide.dimensions
    thumb_scale = 16
    thumb = np.asarray(slide.get_thumbnail((w // thumb_scale, h // thumb_scale)).convert("RGB")).astype(float)
    tissue = thumb.min(axis=2) < 200  # glass is bright in every channel
    cell = size // thumb_scale
    scores = {(y, x): tissue[y:y + cell, x:x + cell].mean()
              for y in range(0, tissue.shape[0] - cell + 1, cell) for x in range(0, tissue.shape[1] - cell + 1, cell)}
    best = sorted(scores, key=scores.get, reverse=True)[:count]
    return [np.asarray(slide.read_region((x * thumb_scale, y * thumb_scale), 0, (size, size)).convert("RGB"))
            for y, x in sorted(best)]


def make_sources(out: Path, he_slide: Path) -> dict[str, tuple[Path, str]]:
    """Four pseudo-slides, two per source: case id -> (slide path, "ihc" | "he")."""
    from skimage import data

    ihc = data.immunohistochemistry()
    squares = {
        "TCGA-CX-0001": (ihc[:CROP_PX, :CROP_PX], "ihc"),
        "TCGA-CX-0002": (ihc[CROP_PX:2 * CROP_PX, :CROP_PX], "ihc"),
    }
    for i, square in enumerate(tissue_square(he_slide, CROP_PX, count=2), start=3):
        squares[f"TCGA-CX-{i:04d}"] = (square, "he")
    sources = {}
    for i, (case, (tissue, kind)) in enumerate(squares.items()):
        path = out / "slides" / f"{case}-01Z-00-DX1.tiff"
        if not path.exists():
            write_pyramidal_tiff(path, on_glass(np.ascontiguousarray(tissue), seed=i), NOMINAL_MPP,
                                 description=f"histosynth conditioning check {case}: {kind}")
        sources[case] = (path, kind)
    return sources


def write_reports(path: Path, captions: dict[str, str]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["patient_filename", "text", "patient_id"])
    writer.writeheader()
    writer.writerows({"patient_filename": case, "text": text, "patient_id": case} for case, text in captions.items())
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


def captions_for(sources: dict[str, tuple[Path, str]]) -> dict[str, str]:
    return {case: {"ihc": IHC_CAPTION, "he": HE_CAPTION}[kind] for case, (_, kind) in sources.items()}


def build_workspace(root: Path, sources: dict[str, tuple[Path, str]], overrides: Sequence[str]):
    """Tile, ingest, summarize, embed, train the VAE and encode (the pipeline runner); returns (ws, cfg)."""
    from .runner import Pipeline

    ws = Workspace(root)
    cfg = ws.ensure_config(preset="tiny-cpu", overrides=[*overrides, "split.test_fraction=0.0"])
    reports = write_reports(root / "reports.csv", captions_for(sources))
    Pipeline(ws, cfg, slides=[path for path, _ in sources.values()], reports=reports).run(
        stages=["tile", "reports", "summarize", "embed", "train-vae", "encode"])
    return ws, cfg


def shuffle_tile_captions(ws: Workspace, cfg, seed: int = 0) -> None:
    """The control: permute the tiles' caption (text_hash) across all tiles, sources mixed."""
    import pandas as pd

    from ..text.store import EmbeddingSet

    path = EmbeddingSet.locate(ws, cfg, cfg.summaries.budget) / "tiles.parquet"
    tiles = pd.read_parquet(path)
    tiles["text_hash"] = np.random.default_rng(seed).permutation(tiles["text_hash"].to_numpy())
    with atomic_path(path) as tmp:
        tiles.to_parquet(tmp, index=False)


def caption_prompts(ws: Workspace, budget: int, sources: dict[str, tuple[Path, str]]) -> dict[str, str]:
    """The condition text the model saw for each caption (the summary of a case that carried it)."""
    from ..reports.summarize import read_summaries

    summaries = read_summaries(ws, budget).set_index("case_id")["summary"]
    prompts = {}
    for case, caption in captions_for(sources).items():
        prompts.setdefault(caption, summaries[case])
    return {"ihc": prompts[IHC_CAPTION], "he": prompts[HE_CAPTION]}


def score_prompts(run_dir: Path, prompts: dict[str, str], n: int, out_dir: Path, seed: int = 0) -> dict:
    """Generate `n` images per prompt; stain scores per group and the AUROC (H&E as positive)."""
    from ..imageio import load_rgb
    from ..sample.generate import sample_run

    texts = [prompts["ihc"], prompts["he"]]
    folder = sample_run(run_dir, prompts=texts, n=2 * n, seed=seed, out_dir=out_dir)
    groups = images_by_prompt(folder)
    scores = {kind: stain_score([load_rgb(f) for f in groups[text]]) for kind, text in prompts.items()}
    return {"auroc": auroc(scores["he"], scores["ihc"]), "n_per_prompt": n,
            "mean_score": {k: float(v.mean()) for k, v in scores.items()}, "samples": str(folder)}


def real_tile_auroc(ws: Workspace, sources: dict[str, tuple[Path, str]]) -> float:
    """The same score on the real training tiles: how separable the two sources are to begin with."""
    from ..slides.index import read_index
    from ..slides.store import TileStore

    index = read_index(ws)
    kind = index["case_id"].map({case: k for case, (_, k) in sources.items()})
    store = TileStore(ws)
    ihc = stain_score(store.get(index.loc[kind == "ihc", "tile_id"].tolist()))
    he = stain_score(store.get(index.loc[kind == "he", "tile_id"].tolist()))
    return auroc(he, ihc)


def run_conditioning_check(out: str | Path, he_slide: str | Path, n: int = 48,
                           overrides: Sequence[str] = ()) -> dict:
    """The conditioned model and the shuffled-caption control, scored; writes OUT/conditioning.json."""
    from .runner import Pipeline

    out = Path(out)
    sources = make_sources(out, Path(he_slide))
    ws, cfg = build_workspace(out / "workspace", sources, overrides)
    budget = cfg.summaries.budget
    prompts = caption_prompts(ws, budget, sources)
    result = {"real_tiles_auroc": real_tile_auroc(ws, sources), "prompts": prompts}
    pipe = Pipeline(ws, cfg)
    pipe.run(stages=["train"], run_name="conditioned")
    run = ws.run_dir("conditioned")
    result["conditioned"] = score_prompts(run, prompts, n, out / "samples-conditioned")
    # Same data, VAE, latents, seeds and steps; only the tile -> caption pairing is random.
    shuffle_tile_captions(ws, cfg)
    pipe.run(stages=["train"], run_name="shuffled")
    run = ws.run_dir("shuffled")
    result["shuffled"] = score_prompts(run, prompts, n, out / "samples-shuffled")
    write_json(out / "conditioning.json", result)
    return result
