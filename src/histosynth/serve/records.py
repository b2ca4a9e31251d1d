"""What the app may read and serve: the run's public records and the workspace's tiles and texts.

Paths are checked before every read: a file must lie inside the run or the workspace after
resolving symlinks (a link pointing elsewhere is refused), and the workspace internals
(`reports.parquet`, `cache.sqlite`, `histosynth.yaml`) are never served as files. The app reads
report text through the tile index and the summaries, to show it, not to hand the parquet out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..console import HistosynthError

EVAL_NAME = "eval.json"   # what `histosynth evaluate` writes


def private_names() -> tuple[str, ...]:
    """Workspace internals never handed out by URL, wherever they lie (lower-case file names)."""
    from ..workspace import Workspace

    ws = Workspace(".")
    return tuple(p.name.lower() for p in (ws.reports_path, ws.summaries_cache_path, ws.config_path, ws.split_path))


def is_inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def checked(path: Path, roots: list[Path]) -> Path:
    """`path` resolved, if it stays inside one of `roots`; a symlink leading out raises."""
    real = path.resolve()
    if not any(is_inside(real, root.resolve()) for root in roots):
        raise HistosynthError(f"{path}: points outside {', '.join(map(str, roots))}; refused")
    return real


@dataclass
class Refusal:
    """Decides whether a file URL may be served: the guard behind every /file= request."""

    protected: list[Path]                       # the run and the workspace: nothing in them by URL

    def __post_init__(self):
        self.private_names = private_names()

    def reason(self, raw: str) -> str | None:
        """None when gradio may go on to its own checks; else why the request is refused."""
        if "://" in raw or raw.startswith("//"):
            return "remote URLs are not fetched"   # gradio would stream them from the server
        path = Path(os.path.abspath(raw))         # as gradio reads it: relative to the working folder
        if path.name.lower() in self.private_names:
            return f"{path.name} is private"
        try:
            real = path.resolve()
        except OSError:
            return "unreadable path"
        for root in self.protected:
            root_abs, root_real = root.absolute(), root.resolve()
            if is_inside(path, root_abs) or is_inside(real, root_real):
                return "files of the run and the workspace are not served by URL"
        if path.is_symlink():
            return "symlinks are not followed"
        return None


class RunRecords:
    """The run's metrics, loss curve, config and manifest, read only from inside the run."""

    def __init__(self, run_dir: Path):
        from ..runfolder import RunFolder

        self.run_dir, self.folder = run_dir, RunFolder(run_dir)

    def _read(self, path: Path) -> str | None:
        if not path.exists():
            return None
        return checked(path, [self.run_dir]).read_text()

    def eval_files(self) -> list[Path]:
        """eval.json files below the run (e.g. RUN/eval/ or RUN/samples/<tag>/eval/), newest first."""
        found = [p for p in self.run_dir.rglob(EVAL_NAME) if p.is_file()]
        found = [p for p in found if is_inside(p.resolve(), self.run_dir.resolve())]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    def metrics(self) -> tuple[dict | None, str | None]:
        files = self.eval_files()
        if not files:
            return None, None
        return json.loads(files[0].read_text()), str(files[0].relative_to(self.run_dir))

    def loss(self):
        import pandas as pd

        text = self._read(self.folder.loss_log)
        if text is None:
            return None
        from io import StringIO

        return pd.read_csv(StringIO(text))

    def config_yaml(self) -> str:
        return self._read(self.folder.config_path) or ""

    def manifest(self) -> dict:
        text = self._read(self.folder.manifest_path)
        return json.loads(text) if text else {}


class WorkspaceTexts:
    """Real tiles with their case's report and summary, for the Browse tab."""

    def __init__(self, ws_root: Path, budget: int | None):
        import pandas as pd

        from ..slides.index import read_index
        from ..slides.store import TileStore
        from ..workspace import Workspace

        self.ws = Workspace(ws_root)
        for path in (self.ws.tile_index_path, self.ws.reports_path):
            if path.exists():
                checked(path, [self.ws.root])
        self.index = read_index(self.ws)
        self.store = TileStore(self.ws, self.index)
        reports = pd.read_parquet(self.ws.reports_path) if self.ws.reports_path.exists() else pd.DataFrame()
        self.reports = dict(zip(reports.get("case_id", []), reports.get("text", [])))
        self.summaries: dict[str, str] = {}
        self.budget = budget
        path = self.ws.summaries_path(budget) if budget is not None else None
        if path is not None and path.exists():
            checked(path, [self.ws.root])
            table = pd.read_parquet(path)
            self.summaries = dict(zip(table["case_id"], table["summary"]))

    def cases(self) -> list[str]:
        return sorted(self.index["case_id"].unique().tolist())

    def filter(self, case: str | None, split: str | None, limit: int = 48):
        rows = self.index
        if case:
            rows = rows[rows["case_id"] == case]
        if split and split != "all":
            rows = rows[rows["split"] == split]
        return rows.head(limit)

    def split_of(self, case_id: str) -> str:
        rows = self.index.loc[self.index["case_id"] == case_id, "split"]
        return str(rows.iloc[0]) if len(rows) else "no tiles"

    def case_of(self, tile_id: int) -> str | None:
        rows = self.index.loc[self.index["tile_id"] == tile_id, "case_id"]
        return str(rows.iloc[0]) if len(rows) else None

    def tiles(self, tile_ids) -> list:
        return list(self.store.get(list(tile_ids))) if len(tile_ids) else []

    def texts(self, case_id: str) -> tuple[str, str]:
        return self.reports.get(case_id, "(no report for this case)"), self.summaries.get(case_id, "(no summary)")
