"""Random access to tile pixels by `tile_id`: index lookup, then one HDF5 chunk per tile.

HDF5 handles are opened lazily, per process, and dropped when pickled or after a fork, so a
TileStore can be handed to DataLoader workers (an h5py handle must never cross a fork).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..console import HistosynthError
from ..workspace import Workspace

MAX_OPEN_FILES = 64   # slides kept open per process (a workspace may hold thousands)


class TileStore:
    def __init__(self, ws: Workspace | str | Path, index=None):
        from .index import read_index

        self.ws = ws if isinstance(ws, Workspace) else Workspace(ws)
        index = read_index(self.ws) if index is None else index
        ids = index["tile_id"].to_numpy(np.int64)
        self._position = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype=np.int64)
        self._position[ids] = np.arange(len(ids))
        self._files = index["file"].to_numpy()
        self._rows = index["row"].to_numpy(np.int64)
        self._handles: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._rows)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def _dataset(self, file: str):
        import h5py

        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use
            self._handles, self._pid = OrderedDict(), os.getpid()
        handle = self._handles.get(file)
        if handle is None:
            path = self.ws.root / file
            try:
                handle = h5py.File(path, "r")
            except OSError as exc:
                raise HistosynthError(f"{path}: cannot open tile file ({exc}); rerun histosynth tile") from None
            self._handles[file] = handle
            if len(self._handles) > MAX_OPEN_FILES:
                self._handles.popitem(last=False)[1].close()
        self._handles.move_to_end(file)
        return handle["imgs"]

    def get(self, tile_ids) -> np.ndarray:
        """uint8 [N, H, W, 3] pixels of the given tile ids, in the given order."""
        ids = np.atleast_1d(np.asarray(tile_ids, dtype=np.int64))
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self._position) or (self._position[ids] < 0).any()):
            raise KeyError(f"tile ids not in the index: {ids[(ids < 0) | (ids >= len(self._position))][:5]}")
        positions = self._position[ids]
        tiles = [self._dataset(self._files[p])[self._rows[p]] for p in positions]
        if not tiles:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        return np.stack(tiles)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
