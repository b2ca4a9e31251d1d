"""Typed stage results: what a stage hands to the stages after it, saved as `result.json`.

(`encode`'s result, `latents.store.LatentsResult`, is a StageResult too; it lives with its stage
because only `train` reads it.)

A manifest is the record of what ran (command, config, versions, timings) and stays free-form;
a result is a contract: later stages read these models, never manifest fields. Each model is
small and validated on load, so a missing or renamed field fails in one line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .console import HistosynthError
from .fileio import write_json

RESULT_FILE = "result.json"

T = TypeVar("T", bound="StageResult")


class StageResult(BaseModel):
    model_config = ConfigDict(extra="allow")   # newer writers may add fields; readers ignore them
    kind: str

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / RESULT_FILE
        write_json(path, self.model_dump(mode="json"))
        return path

    @classmethod
    def load(cls: type[T], folder: str | Path) -> T:
        path = Path(folder) / RESULT_FILE
        if not path.exists():
            raise HistosynthError(f"{path}: not found; the stage that writes {Path(folder).name}/ has not finished")
        import json

        try:
            data = json.loads(path.read_text())
            result = cls.model_validate(data)
        except (json.JSONDecodeError, ValidationError) as exc:
            raise HistosynthError(f"{path}: not a valid {cls.__name__} ({str(exc).splitlines()[0]})") from None
        if result.kind != cls.model_fields["kind"].default:
            raise HistosynthError(f"{path}: holds a {result.kind} result, not {cls.model_fields['kind'].default}")
        return result

    @classmethod
    def exists(cls, folder: str | Path) -> bool:
        return (Path(folder) / RESULT_FILE).exists()


class TrainResult(StageResult):
    """`train`: figures of a finished run (read by ablate, the demo and the model card)."""

    kind: str = "train"
    budget: int | None = None
    steps: int
    final_loss: float | None = None
    heldout_loss: float | None = None
    heldout_zero_baseline: float | None = None
    step_time_s: float | None = None
    samples_per_s: float | None = None
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None
    unet_parameters: int | None = None
    world_size: int = 1
    train_tiles: int | None = None


class SampleResult(StageResult):
    """`sample`: where a sample folder's conditions came from (read by evaluate)."""

    kind: str = "sample"
    run: str
    n: int
    source: dict[str, Any]           # {"kind": "summaries"|"prompts", "split", "budget", "workspace", ...}
