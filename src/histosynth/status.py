"""One resumable-work primitive: a status record per unit of work (slide, case, shard, step).

Every long stage splits its work into units with stable ids and records, per unit, the identity of
its inputs (a hash of whatever would change the output), its state and its output. A rerun skips
exactly the units whose record says `done` with the same inputs; a unit whose inputs changed is
redone, and the stage says so. The record is one JSON file, rewritten atomically on every change,
so a kill -9 loses at most the unit in flight. Several processes may record disjoint units in one
file (the shards of `tile --shard`, the ranks of a launch): a save merges its own units into what is
on disk under an OS lock on the folder, so no writer drops another's units.

    log = WorkLog(ws.tiles_dir / "status.json")
    for slide in slides:
        key = inputs_hash(path=quick_hash(slide), mpp=cfg.mpp, size=cfg.size)
        if log.done(slide.id, key):
            continue
        ...
        log.mark(slide.id, key, "done", output=f"slides/{slide.id}.h5")
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .console import HistosynthError
from .fileio import write_json

STATUS_FILE = "status.json"   # the usual name of a stage's status record
State = Literal["running", "done", "failed"]
STATES = ("running", "done", "failed")


def inputs_hash(**parts: Any) -> str:
    """A short, stable hash of named inputs (order-independent; values JSON-serialised)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class UnitStatus:
    inputs: str                      # inputs_hash(...) of what the unit was computed from
    state: State
    output: Any = None               # what the unit produced (a path, a count, a small record)
    error: str | None = None         # the one-line reason when state == "failed"
    updated: float = field(default_factory=time.time)


class WorkLog:
    """Status records of one stage's units in one JSON file (`{unit_id: UnitStatus}`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.units: dict[str, UnitStatus] = self._read()
        self._changed: set[str] = set()   # units this process recorded since its last save

    def _read(self) -> dict[str, UnitStatus]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {str(k): UnitStatus(**v) for k, v in raw.get("units", {}).items()}
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise HistosynthError(f"{self.path}: unreadable status record ({exc}); delete it to redo the stage") from None

    def get(self, unit: str) -> UnitStatus | None:
        return self.units.get(str(unit))

    def done(self, unit: str, inputs: str) -> bool:
        """True when `unit` finished from exactly these inputs."""
        status = self.get(unit)
        return status is not None and status.state == "done" and status.inputs == inputs

    def changed(self, unit: str, inputs: str) -> bool:
        """True when `unit` finished before from other inputs (its output is stale)."""
        status = self.get(unit)
        return status is not None and status.state == "done" and status.inputs != inputs

    def mark(self, unit: str, inputs: str, state: State, output: Any = None, error: str | None = None,
             save: bool = True) -> None:
        """Record `unit`; `save=False` defers the write to the next `save()` (many units, one write)."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, not {state!r}")
        self.units[str(unit)] = UnitStatus(inputs=inputs, state=state, output=output, error=error)
        self._changed.add(str(unit))
        if save:
            self.save()

    def forget(self, unit: str) -> None:
        """Drop `unit`'s record (its output was removed)."""
        if self.units.pop(str(unit), None) is not None:
            self._changed.add(str(unit))
            self.save()

    def save(self) -> None:
        """Write this process's units over the record on disk (others' units kept), atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _folder_lock(self.path.parent):
            units = self._read()
            for unit in self._changed:
                if unit in self.units:
                    units[unit] = self.units[unit]
                else:
                    units.pop(unit, None)
            write_json(self.path, {"units": {k: asdict(v) for k, v in sorted(units.items())}})
        self.units, self._changed = units, set()

    def by_state(self, state: State) -> list[str]:
        return [k for k, v in self.units.items() if v.state == state]


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive flock on the folder itself (Linux allows it on a directory): no lock file to leave."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # closing releases the lock
