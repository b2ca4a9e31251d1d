"""A workspace is one folder per dataset; every stage reads and writes under it.

    WS/
      histosynth.yaml        resolved config, written by the first stage run, reused by later ones
      split.json             case id -> "train" | "test", assigned once per case, never changed
      tiles/                 slides/<slide_id>.h5 (CLAM coords + pixels), thumbnails/, index.parquet
      reports/               reports.parquet (+ links.json)
      summaries/             cache.sqlite, budget-<N>.parquet
      embeddings/            <budget-N>-<encoder>-L<ctx>/ safetensors shards + index
      vae/                   diffusers AutoencoderKL / VQModel folder
      latents/               <vae-hash>/ latents shards + index
      runs/<name>/           a training run: diffusers components, checkpoints, samples, eval

Each stage folder also holds the `manifest.json` of the run that wrote it.
"""

from __future__ import annotations

import random
from pathlib import Path

import yaml

from .config import CONFIG_FILE, HistoSynthConfig, load_config, to_yaml
from .console import HistosynthError
from .fileio import read_json, write_json, write_text
from .status import STATUS_FILE

SPLIT_NAME = "split.json"
SPLITS = ("train", "test")


class Workspace:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---- layout -----------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def split_path(self) -> Path:
        return self.root / SPLIT_NAME

    @property
    def tiles_dir(self) -> Path:
        return self.root / "tiles"

    @property
    def tile_index_path(self) -> Path:
        return self.tiles_dir / "index.parquet"

    @property
    def descriptor_edges_path(self) -> Path:
        """Quantile edges binning the patch descriptors into words, fitted on the training tiles."""
        return self.tiles_dir / "descriptor_edges.json"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def reports_path(self) -> Path:
        return self.reports_dir / "reports.parquet"

    @property
    def summaries_dir(self) -> Path:
        return self.root / "summaries"

    def summaries_path(self, budget: int) -> Path:
        return self.summaries_dir / f"budget-{budget}.parquet"

    def summary_budgets(self) -> list[int]:
        """Budgets whose summaries table exists (the inverse of `summaries_path`)."""
        import re

        found = (re.fullmatch(r"budget-(\d+)\.parquet", p.name) for p in self.summaries_dir.glob("budget-*.parquet"))
        return sorted(int(m[1]) for m in found if m)

    @property
    def report_links_path(self) -> Path:
        return self.reports_dir / "links.json"

    @property
    def summary_stats_path(self) -> Path:
        return self.summaries_dir / "stats.json"

    def summaries_manifest_path(self, budget: int) -> Path:
        return self.summaries_dir / f"manifest-budget-{budget}.json"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def vae_dir(self) -> Path:
        return self.root / "vae"

    @property
    def latents_dir(self) -> Path:
        return self.root / "latents"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, name: str) -> Path:
        return self.runs_dir / name

    def run(self, name: str):
        """The run folder `runs/<name>` (a `histosynth.runfolder.RunFolder`)."""
        from .runfolder import RunFolder

        return RunFolder(self.run_dir(name))

    # tiles/
    @property
    def slides_dir(self) -> Path:
        return self.tiles_dir / "slides"

    def slide_path(self, slide_id: str) -> Path:
        return self.slides_dir / f"{slide_id}.h5"

    @property
    def thumbnails_dir(self) -> Path:
        return self.tiles_dir / "thumbnails"

    @property
    def scores_dir(self) -> Path:
        return self.tiles_dir / "scores"

    # summaries/
    @property
    def summaries_cache_path(self) -> Path:
        return self.summaries_dir / "cache.sqlite"

    # embeddings/, latents/
    def embedding_dir(self, budget: int, encoder_slug: str, context_length: int) -> Path:
        return self.embeddings_dir / f"budget-{budget}-{encoder_slug}-L{context_length}"

    def latent_dir(self, vae_id: str) -> Path:
        return self.latents_dir / vae_id

    # evaluation, experiments
    @property
    def eval_cache_dir(self) -> Path:
        """Real-set statistics shared by every run's evaluation."""
        return self.root / "eval-cache"

    @property
    def ablation_dir(self) -> Path:
        return self.root / "ablation"

    @property
    def pipeline_status_path(self) -> Path:
        """The pipeline runner's status record (histosynth.experiments.runner): one unit per stage."""
        return self.root / "pipeline" / STATUS_FILE

    # bookkeeping
    def status_path(self, stage_dir: Path) -> Path:
        """The status record (histosynth.status) of the stage that writes `stage_dir`."""
        return stage_dir / STATUS_FILE

    def lock_path(self, stage: str) -> Path:
        """The OS lock file that keeps two runs of `stage` off this workspace (histosynth.locks)."""
        return self.root / ".locks" / f"{stage}.lock"

    # ---- config -----------------------------------------------------------------------------
    def config(self, preset: str | None = None, file: str | Path | None = None,
               overrides: list[str] | tuple[str, ...] = ()) -> HistoSynthConfig:
        """The workspace's saved config (or the preset's, for a new workspace) with overrides.

        Passing `preset` starts from that preset instead of the saved config.
        """
        base = None
        if self.config_path.exists() and preset is None:
            base = yaml.safe_load(self.config_path.read_text()) or {}
        return load_config(preset=preset, file=file, overrides=overrides, base=base)

    def save_config(self, config: HistoSynthConfig) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_text(self.config_path, to_yaml(config))

    def ensure_config(self, preset: str | None = None, file: str | Path | None = None,
                      overrides: list[str] | tuple[str, ...] = ()) -> HistoSynthConfig:
        """Resolve the config and, for a new workspace or a new preset, save it for later stages."""
        cfg = self.config(preset=preset, file=file, overrides=overrides)
        if not self.config_path.exists() or preset is not None:
            self.save_config(cfg)
        return cfg

    # ---- case-level split ---------------------------------------------------------------------
    def split(self) -> dict[str, str]:
        return read_json(self.split_path) if self.split_path.exists() else {}

    def assign_split(self, case_ids, test_fraction: float, seed: int) -> dict[str, str]:
        """Give every new case a split, once; cases already assigned keep theirs forever.

        New cases are shuffled with a seed derived from `seed` and their sorted ids, then filled
        so that the workspace's test share approaches `test_fraction` (at least one test case as
        soon as there are two cases and test_fraction > 0), so reruns reproduce the same split.
        """
        split = self.split()
        new = sorted({c for c in case_ids if c not in split})
        if not new:
            return split
        rng = random.Random(f"{seed}:" + ",".join(new))
        rng.shuffle(new)
        total = len(split) + len(new)
        n_test_now = sum(1 for s in split.values() if s == "test")
        want_test = round(total * test_fraction)
        if test_fraction > 0 and total >= 2:
            want_test = max(want_test, 1)
        want_test = min(want_test, total - 1) if total >= 2 else want_test
        n_new_test = max(0, min(len(new), want_test - n_test_now))
        for i, case in enumerate(new):
            split[case] = "test" if i < n_new_test else "train"
        write_json(self.split_path, dict(sorted(split.items())))
        return split

    def split_of(self, case_id: str) -> str:
        split = self.split()
        if case_id not in split:
            raise HistosynthError(f"{self.split_path}: case {case_id} has no split (tile or ingest it first)")
        return split[case_id]

    def require(self, path: Path, made_by: str) -> Path:
        """Fail with one line naming the missing file and the command that makes it."""
        if not path.exists():
            raise HistosynthError(f"{path}: not found; run `histosynth {made_by}` first")
        return path
