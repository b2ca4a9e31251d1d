"""Scale-out of the batch stages (encode, embed, sample) under `accelerate launch` or `torchrun`.

The work of a stage is a list of whole batches, cut exactly as the single-process run cuts it.
Rank r takes batches r, r + N, r + 2N, ... (N processes); results that go into one file are
gathered to rank 0 in batch order and written by it alone, and files that belong to one batch
(generated images) are written by the rank that made them. Rank 0 writes the stage's index and
manifest after a barrier. So the outputs are the single-process outputs: same batches, same order,
same bytes; no batch done twice, none skipped.

    for i, batch in distributed.my_share(batches):          # this rank's (index, batch) pairs
        results.append((i, compute(batch)))
    ordered = distributed.gather_ordered(results, len(batches))   # rank 0: all, in order; others: None

Without a launcher (no WORLD_SIZE > 1 in the environment) every helper is the identity and torch
is not imported. Launch on CPUs (gloo):

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no -m histosynth.cli encode -w WS
"""

from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
_STATE: Any = None


def world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; (0, 1) in a plain process."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    if size > 1:
        _init()
    return rank, size


def _init() -> None:
    """Join the launcher's process group once (gloo on CPU, NCCL on GPUs) via accelerate."""
    global _STATE
    if _STATE is None:
        import torch
        from accelerate import PartialState

        _STATE = PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    return world()[0] == 0


def my_share(items: Sequence[T]) -> list[tuple[int, T]]:
    """This rank's (index, item) pairs: items rank, rank + N, ... (whole batches, round robin)."""
    rank, size = world()
    mine = [(i, item) for i, item in enumerate(items) if i % size == rank]
    if size > 1:
        from .console import info

        info(f"rank {rank} of {size}: {len(mine)} of {len(items)} batches")
    return mine


def gather_ordered(pairs: list[tuple[int, Any]], total: int) -> list | None:
    """Rank 0: every rank's (index, result) pairs merged in index order; other ranks: None.

    Fails if an index is missing or duplicated, so a wrong split can never be written.
    """
    rank, size = world()
    if size == 1:
        merged = pairs
    else:
        import torch.distributed as dist

        parts: list | None = [None] * size if rank == 0 else None
        dist.gather_object(pairs, parts, dst=0)
        if rank != 0:
            return None
        merged = [p for part in parts for p in part]
    indices = sorted(i for i, _ in merged)
    if indices != list(range(total)):
        raise RuntimeError(f"distributed merge: expected batches 0..{total - 1}, got {indices}")
    return [result for _, result in sorted(merged, key=lambda p: p[0])]


def barrier() -> None:
    """Wait for every rank (no-op in a plain process)."""
    if world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def on_main(factory: Callable[..., contextlib.AbstractContextManager], *args, **kwargs):
    """`factory(*args, **kwargs)` on rank 0 (e.g. the stage's manifest recording); a stand-in elsewhere."""
    return factory(*args, **kwargs) if is_main() else _stand_in()


@contextlib.contextmanager
def _stand_in() -> Iterator[SimpleNamespace]:
    yield SimpleNamespace(add_input=lambda *a, **k: None, results={}, inputs={})
