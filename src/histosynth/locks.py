"""One running instance of a stage per workspace: an OS file lock the kernel releases on kill -9.

Two `summarize` (or `tile`) runs on one workspace would do the same work twice and race on the
same outputs, so the second one stops at once, naming the first one's PID. The ranks of one
`accelerate launch` share the lock: rank 0 takes it; the others (LOCAL_RANK > 0) trust rank 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .console import HistosynthError


def _launched_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


@contextlib.contextmanager
def stage_lock(lock_path: str | Path, stage: str) -> Iterator[None]:
    """Hold `lock_path` (flock, exclusive, non-blocking) for the block; one line if someone else holds it."""
    if _launched_rank() > 0:
        yield
        return
    path = Path(lock_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise HistosynthError(f"{path}: another `histosynth {stage}` (PID {holder}) is running on this "
                                  f"workspace; wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
