"""Issue 13, "captions paired with the wrong tiles": add a slide that sorts before the others, re-run
tile, reports, summarize and embed but not encode, then train. Tile ids are renumbered; the latent
cache made before keeps the old ones. Training must join tiles, latents and embeddings by tile key,
notice the stale cache, encode what it lacks (saying so), and pair every tile with its own pixels
and its own case's caption."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch

from histosynth.config import load_config
from histosynth.workspace import Workspace

FAST = ["vae.cache_dihedral=false", "vae.dihedral_check_tiles=0"]


def cli(*args: str) -> None:
    from typer.testing import CliRunner

    from histosynth.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def add_first_slide(sample, new_case: str = "TCGA-HS-0000", like: str = "TCGA-HS-0003") -> None:
    """A 4th slide whose name sorts first (a copy of `like`), and its own case's report."""
    shutil.copyfile(sample / "slides" / f"{like}-01Z-00-DX1.tiff", sample / "slides" / f"{new_case}-01Z-00-DX1.tiff")
    with open(sample / "reports.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    text = ("Specimen: colon. Microscopic description: mucinous adenocarcinoma with extracellular mucin pools "
            "and signet ring cells. Diagnosis: mucinous adenocarcinoma, high grade.")
    rows.append({"patient_filename": f"{new_case}.report", "text": text, "patient_id": new_case})
    with open(sample / "reports.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def prepare(sample, root) -> None:
    ws = str(root)
    cli("tile", str(sample / "slides"), "-w", ws, "--preset", "tiny-cpu")
    cli("reports", str(sample / "reports.csv"), "-w", ws)
    cli("summarize", "-w", ws, "--budget", "35")
    cli("embed", "-w", ws, "--budget", "35")


def test_added_slide_with_stale_latents_pairs_every_tile_with_its_own_pixels_and_caption(sample_dir, tmp_path, capsys):
    from histosynth.fileio import text_hash
    from histosynth.imageio import to_unit_range
    from histosynth.latents.encode import encode_workspace
    from histosynth.latents.vae import build_vae, encode, latent_std
    from histosynth.slides.index import read_index
    from histosynth.slides.keys import index_keys
    from histosynth.slides.store import TileStore
    from histosynth.text.condition import tile_condition_text
    from histosynth.train.data import TrainData

    sample = tmp_path / "sample"
    shutil.copytree(sample_dir, sample)
    ws = Workspace(tmp_path / "ws")
    cfg = load_config("tiny-cpu", overrides=FAST)
    prepare(sample, ws.root)
    torch.manual_seed(0)
    vae = build_vae(cfg.vae, sample_size=cfg.slides.size).eval()
    vae.register_to_config(scaling_factor=1.0 / latent_std(vae, TileStore(ws), list(range(16))))
    vae.save_pretrained(ws.vae_dir)
    encode_workspace(ws, cfg)
    before = read_index(ws)

    add_first_slide(sample)
    prepare(sample, ws.root)  # tile, reports, summarize, embed -- but not encode
    index = read_index(ws)
    assert len(index) > len(before)
    moved = index.merge(before, on=["slide_id", "x", "y"], suffixes=("", "_old"))
    assert (moved["tile_id"] != moved["tile_id_old"]).all()  # every old tile was renumbered

    capsys.readouterr()
    data = TrainData(ws, cfg, budget=35)
    said = capsys.readouterr()
    assert "stale latent cache" in said.err + said.out and "encoding them now" in said.err + said.out

    # every training tile: its latents are the encoding of its own pixels ...
    key_of = dict(zip(index["tile_id"], index_keys(index)))
    assert [key_of[t] for t in data.train_ids] == data.train_keys
    with torch.no_grad():
        fresh = torch.cat([encode(vae, to_unit_range(TileStore(ws).get(data.train_ids[i:i + 16])))
                           for i in range(0, len(data.train_ids), 16)])
    fresh = fresh * data.store.scaling_factor
    # Encoded in other batch sizes, so CPU rounding may differ in the last digits (seen at 2 threads);
    # a tile paired with another tile's latents is off by far more (checked by shifting one place).
    assert (data.latents - fresh).abs().max() < 1e-3
    assert (data.latents - fresh.roll(1, dims=0)).abs().amax(dim=(1, 2, 3)).median() > 0.1
    # ... and its caption is its own case's summary
    import pandas as pd

    summary = dict(pd.read_parquet(ws.summaries_path(35))[["case_id", "summary"]].values)
    rows = index.set_index("tile_id").loc[data.train_ids]
    want = [text_hash(tile_condition_text(r, cfg.text.template, summary[r.case_id], cfg.text.levels))
            for r in rows.reset_index().itertuples(index=False)]
    got = [data.emb._keys()[k] for k in data.train_keys]
    assert got == want
    assert "TCGA-HS-0000" in set(rows["case_id"]) or "TCGA-HS-0000" in set(index.loc[index["split"] == "test", "case_id"])

    # the cache is current again: nothing is re-encoded the next time
    capsys.readouterr()
    TrainData(ws, cfg, budget=35)
    assert "stale" not in capsys.readouterr().err


def test_summaries_changed_after_embed_are_re_embedded_not_used(sample_dir, tmp_path, capsys):
    """The embeddings made before a resummarize are stale: training re-embeds, never trains on old captions."""
    import pandas as pd

    from histosynth.fileio import text_hash
    from histosynth.latents.encode import encode_workspace
    from histosynth.latents.vae import build_vae
    from histosynth.train.data import TrainData

    sample = tmp_path / "sample"
    shutil.copytree(sample_dir, sample)
    ws = Workspace(tmp_path / "ws")
    cfg = load_config("tiny-cpu", overrides=FAST)
    prepare(sample, ws.root)
    build_vae(cfg.vae, sample_size=cfg.slides.size).save_pretrained(ws.vae_dir)
    encode_workspace(ws, cfg)
    path = ws.summaries_path(35)
    frame = pd.read_parquet(path)
    frame["summary"] = "Invasive lobular carcinoma."
    frame.to_parquet(path, index=False)  # as a resummarize would
    capsys.readouterr()
    data = TrainData(ws, cfg, budget=35)
    assert "stale embeddings" in capsys.readouterr().err
    assert set(data.emb._keys().values()) == {text_hash("Invasive lobular carcinoma.")}


@pytest.fixture(autouse=True)
def _quiet_reset():
    from histosynth.console import set_quiet

    yield
    set_quiet(False)  # `-q` through the CLI runner sets the process-wide flag


@pytest.mark.unit
def test_tile_keys_survive_renumbering_and_change_with_the_pixels():
    """The join key of tiles, latents and embeddings, on a small index: adding a slide that sorts first
    renumbers tile ids but leaves every old tile's key, and a re-tile at another size or scale changes it."""
    import pandas as pd

    from histosynth.slides.keys import index_keys, keys_hash, tile_key

    old = pd.DataFrame({"tile_id": [0, 1, 2], "slide_id": ["S-B", "S-B", "S-C"], "x": [0, 64, 0],
                        "y": [0, 0, 128], "size": [64, 64, 64], "mpp": [0.5, 0.5, 0.5]})
    added = pd.concat([pd.DataFrame({"tile_id": [0], "slide_id": ["S-A"], "x": [0], "y": [0], "size": [64],
                                     "mpp": [0.5]}), old.assign(tile_id=old.tile_id + 1)], ignore_index=True)
    old_keys, new_keys = dict(zip(old.tile_id, index_keys(old))), dict(zip(added.tile_id, index_keys(added)))
    assert old_keys[0] == "S-B:0:0:64:0.5" and new_keys[0] == "S-A:0:0:64:0.5"
    assert all(new_keys[i + 1] == old_keys[i] for i in old_keys)  # same pixels, same key, new id
    assert old_keys[0] != new_keys[0]  # tile id 0 is now another tile: an id-keyed cache would mismatch
    assert tile_key("S-B", 0, 0, 96, 0.5) != old_keys[0] != tile_key("S-B", 0, 0, 64, 1.0)
    assert keys_hash(index_keys(old)) == keys_hash(index_keys(old)[::-1]) != keys_hash(index_keys(added))
    # an index that stores its keys is read as stored
    assert index_keys(old.assign(tile_key=["k0", "k1", "k2"])) == ["k0", "k1", "k2"]
    # a tile dataset is one slide_id of many source images, each with coordinates from 0: the source
    # image is part of the key (a slide's own rows, whose source is the slide, keep their keys)
    tiles = pd.DataFrame({"slide_id": ["kather", "kather", "S-B"],
                          "source": ["01_TUMOR/a.tif", "04_LYMPHO/b.tif", "S-B"],
                          "x": [0, 0, 0], "y": [0, 0, 0], "size": [64, 64, 64], "mpp": [0.5, 0.5, 0.5]})
    assert index_keys(tiles) == ["kather/01_TUMOR/a.tif:0:0:64:0.5", "kather/04_LYMPHO/b.tif:0:0:64:0.5", old_keys[0]]
