"""The tile Dataset: split filtering, value range, dihedral symmetries, crops, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histosynth.slides.dataset import TileDataset, dihedral
from histosynth.slides.index import read_index
from histosynth.slides.tiler import tile_slides
from histosynth.workspace import Workspace


@pytest.fixture(scope="module")
def ws(sample_dir, tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    tile_slides(ws, ws.ensure_config(preset="tiny-cpu"), [sample_dir / "slides"])
    return ws


def test_dihedral_is_the_group_of_the_square():
    image = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3)
    variants = [dihedral(image, k) for k in range(8)]
    assert torch.equal(variants[0], image)
    assert len({tuple(v.flatten().tolist()) for v in variants}) == 8           # all distinct
    assert torch.equal(variants[1], image.rot90(1, dims=(1, 2)))
    assert torch.equal(variants[4], image.flip(-1))
    for k in range(8):                                                          # numpy agrees with torch
        assert np.array_equal(dihedral(image.numpy(), k), variants[k].numpy())
    batch = image[None].repeat(4, 1, 1, 1)
    assert torch.equal(dihedral(batch, 5)[2], variants[5])                     # batched [N, C, H, W]
    with pytest.raises(ValueError):
        dihedral(image, 8)


def test_items_of_one_split(ws):
    index = read_index(ws)
    train = TileDataset(ws, split="train", dihedral=False)
    test = TileDataset(ws, split="test", dihedral=False)
    assert len(train) + len(test) == len(index) == len(TileDataset(ws, split=None))
    assert not set(train.case_ids) & set(test.case_ids)
    item = train[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    row = index.set_index("tile_id").loc[item["tile_id"]]
    assert row["split"] == "train" and item["case_id"] == row["case_id"]


def test_augmentation_is_a_dihedral_variant_and_crops(ws):
    plain = TileDataset(ws, split="train", dihedral=False)[5]["image"]
    augmented = TileDataset(ws, split="train", dihedral=True, seed=3)
    seen = set()
    for _ in range(24):
        image = augmented[5]["image"]
        matches = [k for k in range(8) if torch.equal(image, dihedral(plain, k))]
        assert matches
        seen.add(matches[0])
    assert len(seen) >= 4
    cropped = TileDataset(ws, split="train", dihedral=False, crop=48, seed=1)[5]["image"]
    assert cropped.shape == (3, 48, 48)
    hits = [(t, l) for t in range(17) for l in range(17) if torch.equal(cropped, plain[:, t:t + 48, l:l + 48])]
    assert len(hits) == 1


def test_dataloader_workers(ws):
    dataset = TileDataset(ws, split="train", crop=32)
    dataset[0]  # opens an HDF5 handle in the parent: the workers must not reuse it
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2, shuffle=True)
    ids = []
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 32, 32)
        ids += batch["tile_id"].tolist()
    assert sorted(ids) == sorted(dataset.tile_ids.tolist())
