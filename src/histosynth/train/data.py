"""Training batches from cached latents and cached text embeddings; no encoder runs while training.

Every random choice of a step (which tiles, noise, timesteps, caption dropout, dihedral transform)
is drawn for the GLOBAL batch from a generator seeded by (seed, step, micro-step), and each rank
takes its own slice. So the data position and the randomness are functions of the step alone:
resuming needs no sampler state, ranks see disjoint samples, and N ranks at batch B reproduce
one process at batch N*B.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..console import HistosynthError, info
from ..latents.store import LatentsResult, LatentStore, vae_id
from ..slides.dataset import dihedral
from ..text.store import EmbeddingSet


@dataclass
class Batch:
    tile_ids: list  # tile ids of the current index (training batches) or tile keys (held-out)
    latents: torch.Tensor      # [b, C, h, w], scaled, dihedral applied
    noise: torch.Tensor        # [b, C, h, w]
    timesteps: torch.Tensor    # [b] int64
    hidden: torch.Tensor       # [b, L, D] float32, "" for dropped captions
    mask: torch.Tensor | None  # [b, L] 1 = attend; None when the run attends to padding


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + micro)


class TrainData:
    """The training set: the current tile index joined, by tile key, to current latents and
    embeddings. A cache made before the index (or summaries) changed is rebuilt first, never used."""

    def __init__(self, ws, cfg, budget: int):
        from ..slides.index import read_index
        from ..slides.keys import index_keys

        self.cfg = cfg
        index = read_index(ws)
        index = index.assign(tile_key=index_keys(index))
        self.store, self.latents_result = current_latents(ws, cfg, index["tile_key"].tolist())
        self.emb = current_embeddings(ws, cfg, budget, index["tile_key"].tolist())
        self.vae_source = self.latents_result.vae
        by_split = {s: index.loc[index["split"] == s] for s in ("train", "test")}
        self.train_keys = by_split["train"]["tile_key"].tolist()
        self.train_ids = by_split["train"]["tile_id"].astype(int).tolist()  # for logs only; joins use keys
        self.heldout_keys = by_split["test"]["tile_key"].tolist()
        if not self.train_keys:
            raise HistosynthError(f"{ws.tile_index_path}: no training tiles")
        self.latents = self.store.for_keys(self.train_keys) * self.store.scaling_factor
        variants = self.store.all_variants(self.train_keys)  # exact dihedral variants when cached
        self.variants = None if variants is None else variants * self.store.scaling_factor
        hidden, mask = self.emb.uncond()
        self.uncond_hidden = hidden.reshape(1, self.emb.context_length, self.emb.width).float()
        self.uncond_mask = mask.reshape(1, self.emb.context_length).long()
        self.attend_padding = bool(self.emb.attend_padding)
        self._perm_epoch, self._perm = -1, None

    def identity(self) -> dict:
        """What the trained weights depend on, besides the config: which latents and which texts."""
        from ..slides.keys import keys_hash

        return {"vae_id": self.latents_result.vae_id, "train_tiles": keys_hash(self.train_keys),
                "heldout_tiles": keys_hash(self.heldout_keys), "embeddings": self.emb.info.get("inputs"),
                "encoder": self.emb.info.get("encoder_fingerprint", self.emb.info.get("encoder")),
                "context_length": self.emb.context_length}

    @property
    def width(self) -> int:
        return int(self.emb.width)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.latents.shape[1:])

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.cfg.train.seed * 7919 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.train_ids), generator=gen), epoch
        return self._perm

    def positions(self, start: int, count: int) -> list[int]:
        """Rows of the training set at stream positions start..start+count (one shuffle per epoch)."""
        n = len(self.train_ids)
        return [int(self._permutation(p // n)[p % n]) for p in range(start, start + count)]

    def batch(self, step: int, micro: int, rank: int, world: int, noise_scheduler) -> Batch:
        tc = self.cfg.train
        per_rank, accum = tc.batch_size, tc.grad_accum
        global_b = per_rank * world
        start = (step * accum + micro) * global_b
        rows = self.positions(start, global_b)
        gen = step_generator(tc.seed, step, micro)
        # Draw everything for the global batch in a fixed order, then keep this rank's slice.
        noise = torch.randn((global_b, *self.latent_shape), generator=gen)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (global_b,), generator=gen)
        dropped = torch.rand(global_b, generator=gen) < tc.cfg_dropout
        flips = torch.randint(0, 8 if tc.dihedral else 1, (global_b,), generator=gen)
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        rows, noise, timesteps, dropped, flips = rows[mine], noise[mine], timesteps[mine], dropped[mine], flips[mine]
        latents = torch.stack([self.variant(r, int(k)) for r, k in zip(rows, flips)])
        tile_ids = [self.train_ids[r] for r in rows]
        hidden, mask = self.emb.for_keys([self.train_keys[r] for r in rows])
        hidden, mask = hidden.float(), mask.long()
        hidden = torch.where(dropped[:, None, None], self.uncond_hidden, hidden)
        mask = torch.where(dropped[:, None], self.uncond_mask, mask)
        return Batch(tile_ids, latents, noise, timesteps, hidden, None if self.attend_padding else mask)

    def variant(self, row: int, k: int) -> torch.Tensor:
        """Dihedral variant k of a training latent: the cached encoding, else the moved latent grid."""
        return self.variants[row, k] if self.variants is not None else dihedral(self.latents[row], k)

    def heldout(self, n: int, noise_scheduler, seed: int = 12345) -> Batch:
        """A fixed batch for held-out loss: test tiles (training tiles if there are none)."""
        keys = (self.heldout_keys or self.train_keys)[:n]
        gen = torch.Generator().manual_seed(seed)
        latents = self.store.for_keys(keys) * self.store.scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(keys),), generator=gen)
        hidden, mask = self.emb.for_keys(keys)
        return Batch(keys, latents, noise, timesteps, hidden.float(), None if self.attend_padding else mask.long())



def current_latents(ws, cfg, keys: list[str]) -> tuple[LatentStore, LatentsResult]:
    """The latents of the last `encode` (WS/latents/result.json), brought up to date first: a VAE
    whose weights changed, or tiles the cache lacks, are (re-)encoded with a message."""
    from ..latents.encode import encode_workspace

    result = LatentsResult.read(ws)
    if result is None:
        raise HistosynthError(f"{ws.latents_result_path}: not found; run `histosynth encode` first")
    reason = None
    if Path(result.vae).exists() and vae_id(result.vae) != result.vae_id:
        reason = f"the VAE {result.vae} changed since `histosynth encode`; re-encoding every tile"
    else:
        store = LatentStore(result.folder(ws))
        missing = store.missing(keys)
        if not missing:
            return store, result
        reason = (f"{len(missing)} of {len(keys)} tiles have no cached latents (tiles added or re-tiled since "
                  f"`histosynth encode`, e.g. {missing[0]}); encoding them now")
    info(f"{result.folder(ws)}: stale latent cache: {reason}")
    encode_workspace(ws, cfg, vae=result.vae)
    result = LatentsResult.read(ws)
    return LatentStore(result.folder(ws)), result


def current_embeddings(ws, cfg, budget: int, keys: list[str]) -> EmbeddingSet:
    """The budget's embeddings, re-embedded first (with a message) when the tile index or the
    summaries changed since `histosynth embed`."""
    from ..text.embed import embed_workspace

    path = ws.require(EmbeddingSet.locate(ws, cfg, budget), "embed")
    emb = EmbeddingSet(path)
    if emb.is_current(ws, budget) and not emb.missing(keys):
        return emb
    info(f"{path}: stale embeddings (made from another tile index or other summaries than the workspace's "
         f"now: tiles added, re-tiled or resummarized since `histosynth embed`); re-embedding")
    return EmbeddingSet(embed_workspace(ws, cfg, budget, encoder=emb.info.get("encoder")))
