"""Image sets to evaluate: an image folder, a workspace split (`WS:test`), or saved `.npz` statistics.

A set is read in batches of uint8 [B, H, W, 3], optionally centre-cropped, so sets larger than
memory stream through the feature extractors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..console import HistosynthError
from ..fileio import hash_input, read_json
from ..imageio import list_images, load_rgb
from ..workspace import SPLITS, Workspace

SAMPLE_EXTRAS = ("contact_sheet.png",)   # images in a sample folder that are not samples


@dataclass
class Source:
    kind: str                  # "folder" | "workspace" | "npz"
    path: Path
    split: str | None = None   # workspace split

    def __str__(self) -> str:
        return f"{self.path}:{self.split}" if self.kind == "workspace" else str(self.path)


def parse_source(spec: str | Path) -> Source:
    """`folder`, `WS:split` (split in train/test) or `stats.npz`."""
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if sep and tail in SPLITS and Path(head).is_dir():
        ws = Workspace(head)
        ws.require(ws.tile_index_path, "tile")
        return Source("workspace", Path(head), tail)
    path = Path(text)
    if path.suffix == ".npz":
        if not path.is_file():
            raise HistosynthError(f"{path}: statistics file not found")
        return Source("npz", path)
    if path.is_dir():
        return Source("folder", path)
    raise HistosynthError(f"{text}: not an image folder, a workspace split (WS:train, WS:test) or an .npz file")


class ImageSet:
    """The images of a folder or workspace split, the first `n` in a fixed order."""

    def __init__(self, source: Source, n: int | None = None, crop: int | None = None, seed: int = 0,
                 resize_to: tuple[int, int, str] | None = None):
        self.source, self.crop, self.resize_to = source, crop, resize_to  # resize (h, w, PIL filter name)
        self._tiles = None
        self.labels: list[str] | None = None   # tissue class per image, when the set carries them
        if source.kind == "workspace":
            from ..slides.index import read_index

            index = read_index(Workspace(source.path))
            rows = index.loc[index["split"] == source.split].sort_values("tile_id")
            rows = rows.iloc[_subset(len(rows), n, seed)]
            self.ids = [f"tile:{int(t)}" for t in rows["tile_id"]]
            if "label" in rows.columns and rows["label"].notna().all():
                self.labels = [str(v) for v in rows["label"]]
        elif source.kind == "folder":
            files = folder_images(source.path)
            self.ids = [files[i] for i in _subset(len(files), n, seed)]
            if self.ids and all("/" in i for i in self.ids) and not (source.path / "metadata.jsonl").exists():
                self.labels = [i.split("/")[0] for i in self.ids]   # class sub-folders name the class
        else:
            raise ValueError(f"{source}: statistics files hold no images")
        if not self.ids:
            raise HistosynthError(f"{source}: no images")

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """Identifies the inputs for the statistics cache."""
        if self.source.kind == "workspace":
            return hash_input(Workspace(self.source.path).tile_index_path)
        return hash_input(self.source.path)

    def load(self, ids: list[str]) -> np.ndarray:
        if self.source.kind == "workspace":
            images = list(self._store().get([int(i.split(":", 1)[1]) for i in ids]))
        else:
            images = [load_rgb(self.source.path / i) for i in ids]
        if self.resize_to:
            images = [resize(img, self.resize_to) for img in images]
        if self.crop:
            images = [center_crop(img, self.crop) for img in images]
        if len({img.shape for img in images}) > 1:
            raise HistosynthError(f"{self.source}: images of different sizes; pass --crop N")
        return np.stack(images)

    def _store(self):
        if self._tiles is None:
            from ..slides.store import TileStore

            self._tiles = TileStore(Workspace(self.source.path))
        return self._tiles

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.ids), batch_size):
            yield self.load(self.ids[start:start + batch_size])


    def raw_size(self) -> tuple[int, int]:
        """(height, width) of the first image as stored, before any resize or crop."""
        if self.source.kind == "workspace":
            return tuple(next(iter(self._store().get([int(self.ids[0].split(":", 1)[1])]))).shape[:2])
        return tuple(load_rgb(self.source.path / self.ids[0]).shape[:2])


def _subset(total: int, n: int | None, seed: int) -> np.ndarray:
    """All indices, or a seeded sorted subset of n (never the first n: sets are often sorted by slide or class)."""
    if n is None or n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, n, replace=False))


def resize(image: np.ndarray, rule: tuple[int, int, str]) -> np.ndarray:
    from PIL import Image

    h, w, interpolation = rule
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), getattr(Image.Resampling, interpolation.upper())))


def folder_images(folder: Path) -> list[str]:
    """A sample folder's images in metadata.jsonl order, else every image below the folder."""
    metadata = folder / "metadata.jsonl"
    if metadata.exists():
        return [json.loads(line)["file"] for line in metadata.read_text().splitlines() if line.strip()]
    return [str(p.relative_to(folder)) for p in list_images(folder) if p.name not in SAMPLE_EXTRAS]


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if size > min(h, w):
        raise HistosynthError(f"--crop {size}: larger than an image of {w}x{h}")
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


def sample_protocol(folder: Path) -> dict:
    """How a `histosynth sample` folder was made (its manifest), for eval.json; {} for other folders."""
    manifest = folder / "manifest.json"
    if not manifest.exists() or read_json(manifest).get("stage") != "sample":
        return {}
    results = read_json(manifest).get("results", {})
    keep = ("n_images", "sampler", "steps", "guidance", "eta", "seed", "checkpoint_hash", "from_summaries",
            "split", "source")
    return {k: results.get(k) for k in keep if k in results}
