"""One resumable-work primitive: a status record per unit of work (slide, case, shard, step).

Every long stage splits its work into units with stable ids and records, per unit, the identity of
its inputs (a hash of whatever would change the output), its state and its output. A rerun skips
exactly the units whose record says `done` with the same inputs; a unit whose inputs changed is
redone, and the stage says so. The record is one JSON file, rewritten atomically on every change,
so a kill -9 loses at most the unit in flight.

    log = WorkLog(ws.tiles_dir / "status.json")
    for slide in slides:
        key = inputs_hash(path=quick_hash(slide), mpp=cfg.mpp, size=cfg.size)
        if log.done(slide.id, key):
            continue
        ...
        log.mark(slide.id, key, "done", output=f"slides/{slide.id}.h5")
"""

from __future__ import annotations

import hashlib
import json
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

    def mark(self, unit: str, inputs: str, state: State, output: Any = None, error: str | None = None) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, not {state!r}")
        self.units[str(unit)] = UnitStatus(inputs=inputs, state=state, output=output, error=error)
        self.save()

    def save(self) -> None:
        write_json(self.path, {"units": {k: asdict(v) for k, v in sorted(self.units.items())}})

    def by_state(self, state: State) -> list[str]:
        return [k for k, v in self.units.items() if v.state == state]
