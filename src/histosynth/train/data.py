"""Training batches from cached latents and cached text embeddings; no encoder runs while training.

Every random choice of a step (which tiles, noise, timesteps, caption dropout, dihedral transform)
is drawn for the GLOBAL batch from a generator seeded by (seed, step, micro-step), and each rank
takes its own slice. So the data position and the randomness are functions of the step alone:
resuming needs no sampler state, ranks see disjoint samples, and N ranks at batch B reproduce
one process at batch N*B.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from ..console import HistosynthError
from ..latents.encode import vae_source
from ..latents.store import LatentStore
from ..slides.dataset import dihedral
from ..text.store import EmbeddingSet


@dataclass
class Batch:
    tile_ids: list[int]
    latents: torch.Tensor      # [b, C, h, w], scaled, dihedral applied
    noise: torch.Tensor        # [b, C, h, w]
    timesteps: torch.Tensor    # [b] int64
    hidden: torch.Tensor       # [b, L, D] float32, "" for dropped captions
    mask: torch.Tensor | None  # [b, L] 1 = attend; None when the run attends to padding


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + micro)


class TrainData:
    def __init__(self, ws, cfg, budget: int):
        self.cfg = cfg
        self.emb = EmbeddingSet(ws.require(EmbeddingSet.locate(ws, cfg, budget), "embed"))
        self.vae_source = vae_source(ws, cfg)
        self.store = LatentStore.locate(ws, self.vae_source)
        with_text = set(self.emb.tiles["tile_id"].astype(int).tolist())
        self.train_ids = [t for t in self.store.tile_ids("train") if t in with_text]
        self.heldout_ids = [t for t in self.store.tile_ids("test") if t in with_text]
        if not self.train_ids:
            raise HistosynthError(f"{self.store.path}: no training tiles with both latents and embeddings for budget {budget}")
        self.latents = self.store.for_tiles(self.train_ids) * self.store.scaling_factor
        variants = self.store.all_variants(self.train_ids)  # exact dihedral variants when cached
        self.variants = None if variants is None else variants * self.store.scaling_factor
        hidden, mask = self.emb.uncond()
        self.uncond_hidden = hidden.reshape(1, self.emb.context_length, self.emb.width).float()
        self.uncond_mask = mask.reshape(1, self.emb.context_length).long()
        self.attend_padding = bool(self.emb.attend_padding)
        self._perm_epoch, self._perm = -1, None

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
        hidden, mask = self.emb.for_tiles(tile_ids)
        hidden, mask = hidden.float(), mask.long()
        hidden = torch.where(dropped[:, None, None], self.uncond_hidden, hidden)
        mask = torch.where(dropped[:, None], self.uncond_mask, mask)
        return Batch(tile_ids, latents, noise, timesteps, hidden, None if self.attend_padding else mask)

    def variant(self, row: int, k: int) -> torch.Tensor:
        """Dihedral variant k of a training latent: the cached encoding, else the moved latent grid."""
        return self.variants[row, k] if self.variants is not None else dihedral(self.latents[row], k)

    def heldout(self, n: int, noise_scheduler, seed: int = 12345) -> Batch:
        """A fixed batch for held-out loss: test tiles (training tiles if there are none)."""
        ids = (self.heldout_ids or self.train_ids)[:n]
        gen = torch.Generator().manual_seed(seed)
        latents = self.store.for_tiles(ids) * self.store.scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(ids),), generator=gen)
        hidden, mask = self.emb.for_tiles(ids)
        return Batch(ids, latents, noise, timesteps, hidden.float(), None if self.attend_padding else mask.long())

