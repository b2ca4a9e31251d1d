"""`histosynth embed`: condition texts of a workspace's tiles, the safetensors cache and its reader."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest
import torch
from safetensors import safe_open

from histosynth.config import load_config
from histosynth.console import HistosynthError
from histosynth.fileio import text_hash
from histosynth.text.condition import condition_text
from histosynth.text.embed import embed_workspace
from histosynth.text.encoders import load_encoder
from histosynth.text.store import EmbeddingSet
from histosynth.status import WorkLog
from histosynth.text.testing import save_random_clip
from histosynth.workspace import Workspace

PATHLDM_TEMPLATE = "{tumor} tumor; {til} til; {summary}"
SUMMARIES = {
    "TCGA-A1-0001": "Invasive ductal carcinoma, grade 3, no lymphovascular invasion.",
    "TCGA-A1-0002": "Invasive lobular carcinoma, grade 2, margins clear.",
    "TCGA-A1-0003": "Mucinous carcinoma, grade 1; dense tumour infiltrating lymphocytes.",
}


class CountingEncoder:
    """Wraps a TextEncoder and counts the texts it is asked to encode."""

    def __init__(self, encoder):
        self.inner, self.encoded = encoder, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, texts, context_length, long_context="chunked"):
        self.encoded.extend(texts)
        return self.inner.encode(texts, context_length, long_context=long_context)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return load_encoder(str(save_random_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")))


def write_workspace(root, cases=SUMMARIES, tiles_per_case=4, scores=True, budget=35):
    """A workspace with tiles/index.parquet and summaries/budget-N.parquet in the contract's format."""
    ws = Workspace(root)
    rows = []
    for c, case in enumerate(sorted({*cases, "TCGA-A1-0001"})):
        for t in range(tiles_per_case):
            row = {"tile_id": 100 * c + t, "slide_id": f"{case}-01Z-00-DX1", "case_id": case,
                   "split": "test" if c == 2 else "train", "x": 64 * t, "y": 0, "size": 64, "mpp": 0.5}
            if scores:
                row.update(prob_tumor=[0.0, 0.5, 1.0, 0.9][t], prob_til=[0.1, 0.1, 0.7, 0.7][t])
            rows.append(row)
    ws.tiles_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(ws.tile_index_path)
    ws.summaries_dir.mkdir(parents=True, exist_ok=True)
    summaries = pd.DataFrame({"case_id": list(cases), "budget": budget, "summary": list(cases.values())})
    summaries.to_parquet(ws.summaries_path(budget))
    return ws


def keys_of(ws, tile_ids) -> list[str]:
    """Tile keys (the join key of the embeddings) of these tile ids of the workspace's index."""
    from histosynth.slides.keys import index_keys

    index = pd.read_parquet(ws.tile_index_path)
    key = dict(zip(index["tile_id"], index_keys(index)))
    return [key[t] for t in tile_ids]


def pathldm_config(**text):
    sets = [f"text.template={PATHLDM_TEMPLATE}", "text.context_length=154", "text.batch_size=4", "text.shard_size=5"]
    return load_config(preset="tiny-cpu", overrides=sets + [f"text.{k}={v}" for k, v in text.items()])


def test_embed_writes_the_contract_and_reads_back(tmp_path, tiny_clip):
    ws = write_workspace(tmp_path / "ws")
    cfg = pathldm_config(encoder=tiny_clip.name)
    counting = CountingEncoder(tiny_clip)
    out = embed_workspace(ws, cfg, 35, encoder=counting)

    assert out.name.startswith("budget-35-clip-") and out.name.endswith("-L154")
    assert out == EmbeddingSet.locate(ws, cfg, 35)
    for name in ("info.json", "texts.parquet", "tiles.parquet", "shard-0.safetensors", "uncond.safetensors", "manifest.json"):
        assert (out / name).exists(), name
    texts = pd.read_parquet(out / "texts.parquet")
    tiles = pd.read_parquet(out / "tiles.parquet")
    assert list(texts.columns) == ["text_hash", "text", "n_tokens", "shard", "row"]
    assert list(tiles.columns) == ["tile_id", "tile_key", "case_id", "split", "text_hash"]
    assert tiles["tile_key"].iloc[0] == "TCGA-A1-0001-01Z-00-DX1:0:0:64:0.5"  # slide:x:y:size:mpp
    # 3 cases x 3 distinct (tumor, til) level pairs; tiles sharing a text share one row
    assert len(tiles) == 12 and len(texts) == 9 == len(set(counting.encoded) - {""})
    assert len(counting.encoded) == 9 + 1  # each unique text once, plus the empty text
    assert texts["shard"].max() == 1  # shard_size 5
    with safe_open(out / "shard-0.safetensors", framework="pt") as f:
        assert f.get_slice("hidden").get_shape() == [5, 154, 32]
        assert f.get_slice("mask").get_shape() == [5, 154] and f.get_slice("pooled").get_shape() == [5, 32]

    emb = EmbeddingSet(out)
    assert (emb.width, emb.context_length, emb.attend_padding) == (32, 154, False)
    assert emb.info["template"] == PATHLDM_TEMPLATE and emb.info["levels"] == ["low", "high"]
    assert len(emb.tile_hashes("test")) == 4
    text = condition_text(PATHLDM_TEMPLATE, SUMMARIES["TCGA-A1-0001"], {"tumor": 1.0, "til": 0.7}, ["low", "high"])
    assert text.startswith("high tumor; high til; ")
    hidden, mask = emb.for_keys(keys_of(ws, [2, 3]))  # tiles 2 and 3 of case 0001: both high/high
    direct = tiny_clip.encode([text], 154)
    torch.testing.assert_close(hidden[0], direct.hidden[0])
    assert torch.equal(hidden[0], hidden[1]) and torch.equal(mask[0], direct.mask[0])
    assert mask.dtype == torch.long and hidden.dtype == torch.float32
    lookup_hidden, _ = emb.lookup([text_hash(text)])
    assert torch.equal(lookup_hidden[0], hidden[0])
    worker_copy = pickle.loads(pickle.dumps(emb))  # as a DataLoader worker receives it
    assert torch.equal(worker_copy.for_keys(keys_of(ws, [2]))[0][0], hidden[0])
    u_hidden, u_mask = emb.uncond()
    assert u_hidden.shape == (1, 154, 32) and int(u_mask.sum()) == 2  # start + end only
    torch.testing.assert_close(u_hidden, tiny_clip.encode([""], 154).hidden)


def test_cache_hits_do_no_encoder_work(tmp_path, tiny_clip):
    ws = write_workspace(tmp_path / "ws", cases=dict(list(SUMMARIES.items())[:2]))
    cfg = pathldm_config()
    first = embed_workspace(ws, cfg, 35, encoder=tiny_clip)
    before = {p.name: p.stat().st_mtime_ns for p in first.glob("shard-*.safetensors")}

    again = CountingEncoder(tiny_clip)
    assert embed_workspace(ws, cfg, 35, encoder=again) == first
    assert again.encoded == []
    assert {p.name: p.stat().st_mtime_ns for p in first.glob("shard-*.safetensors")} == before

    write_workspace(tmp_path / "ws")  # a third case arrives: only its texts are encoded, in a new shard
    more = CountingEncoder(tiny_clip)
    embed_workspace(ws, cfg, 35, encoder=more)
    assert sorted(more.encoded) == sorted(
        condition_text(PATHLDM_TEMPLATE, SUMMARIES["TCGA-A1-0003"], {"tumor": p, "til": q}, ["low", "high"])
        for p, q in [(0.0, 0.1), (0.5, 0.1), (1.0, 0.7)]
    )
    texts = pd.read_parquet(first / "texts.parquet")
    assert len(texts) == 9 and texts["shard"].max() == len(before)


def test_unfinished_run_is_refused_then_resumed(tmp_path, tiny_clip):
    ws = write_workspace(tmp_path / "ws")
    cfg = pathldm_config()
    out = embed_workspace(ws, cfg, 35, encoder=tiny_clip)
    (out / "shard-1.safetensors").unlink()
    WorkLog(out / "status.json").mark("embeddings", "killed", "running")   # as a kill mid-run leaves it
    with pytest.raises(HistosynthError, match="unfinished"):
        EmbeddingSet(out)
    resumed = CountingEncoder(tiny_clip)
    embed_workspace(ws, cfg, 35, encoder=resumed)
    assert len(resumed.encoded) == 4  # shard-1's texts only; shard-0 kept
    assert len(EmbeddingSet(out).for_keys(keys_of(ws, range(4)))[0]) == 4


def test_minilm_computed_context_float16_and_padding_flag(tmp_path):
    ws = write_workspace(tmp_path / "ws", scores=False)
    cfg = load_config(preset="tiny-cpu", overrides=["text.store_dtype=float16", "text.attend_padding=true"])
    out = embed_workspace(ws, cfg, 35)
    assert out.name == "budget-35-minilm-L37"
    assert EmbeddingSet.locate(ws, cfg, 35) == out
    emb = EmbeddingSet(out)
    assert (emb.width, emb.context_length, emb.attend_padding) == (384, 37, True)
    hidden, mask = emb.for_keys(keys_of(ws, [0]))
    direct = load_encoder("minilm").encode([SUMMARIES["TCGA-A1-0001"]], 37)
    torch.testing.assert_close(hidden, direct.hidden, rtol=1e-2, atol=2e-3)  # float16 on disk
    assert torch.equal(mask, direct.mask)


def test_missing_summary_lists_cases_or_uses_empty_text(tmp_path, tiny_clip):
    ws = write_workspace(tmp_path / "ws")
    summaries = pd.read_parquet(ws.summaries_path(35))
    summaries[summaries["case_id"] != "TCGA-A1-0002"].to_parquet(ws.summaries_path(35))
    with pytest.raises(HistosynthError, match="no summary for 1 case.*TCGA-A1-0002"):
        embed_workspace(ws, pathldm_config(), 35, encoder=tiny_clip)
    out = embed_workspace(ws, pathldm_config(missing_summary="empty"), 35, encoder=tiny_clip)
    texts = pd.read_parquet(out / "texts.parquet")
    assert "high tumor; high til;" in set(texts["text"])


@pytest.mark.unit
def test_template_score_absent_from_index_is_an_error(tmp_path, tiny_clip):
    ws = write_workspace(tmp_path / "ws", scores=False)
    with pytest.raises(HistosynthError, match="prob_tumor, prob_til"):
        embed_workspace(ws, pathldm_config(), 35, encoder=tiny_clip)


@pytest.mark.unit
def test_condition_text_that_does_not_fit_is_an_error(tmp_path, tiny_clip):
    ws = write_workspace(tmp_path / "ws")
    with pytest.raises(HistosynthError, match="do not fit context_length 20"):
        embed_workspace(ws, pathldm_config(context_length=20), 35, encoder=tiny_clip)


def test_embed_command(tmp_path, tiny_clip):
    from typer.testing import CliRunner

    from histosynth.cli import app

    ws = write_workspace(tmp_path / "ws")
    result = CliRunner().invoke(app, ["--quiet", "embed", "--workspace", str(ws.root), "--budget", "35",
                                      "--encoder", tiny_clip.name, "--preset", "rao-gupta"])
    assert result.exit_code == 0, result.output
    (out,) = ws.embeddings_dir.iterdir()
    assert out.name.endswith("-L43")  # computed: "high tumor; high til;" (6) + 35 + start/end
    emb = EmbeddingSet(out)
    assert emb.attend_padding and emb.info["context_length_computed"]
    assert (out / "manifest.json").exists()


def test_embeddings_of_an_older_histosynth_are_kept_and_recorded(tmp_path, tiny_clip):
    """0.1 marked a finished set by `complete` in info.json and had no status record."""
    import json

    ws = write_workspace(tmp_path / "ws")
    cfg = pathldm_config()
    out = embed_workspace(ws, cfg, 35, encoder=tiny_clip)
    before = EmbeddingSet(out).for_keys(keys_of(ws, range(4)))[0]
    (out / "status.json").unlink()
    info = json.loads((out / "info.json").read_text())
    (out / "info.json").write_text(json.dumps({**info, "complete": True}))
    assert torch.equal(EmbeddingSet(out).for_keys(keys_of(ws, range(4)))[0], before)
    again = CountingEncoder(tiny_clip)
    embed_workspace(ws, cfg, 35, encoder=again)
    assert again.encoded == []                                   # every shard kept, now recorded
    log = WorkLog(out / "status.json")
    assert log.get("embeddings").state == "done" and log.get("shard-0.safetensors").state == "done"
    assert torch.equal(EmbeddingSet(out).for_keys(keys_of(ws, range(4)))[0], before)
