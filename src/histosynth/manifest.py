"""Run manifests: what ran, with which config, code and inputs, how long and how much memory.

Every stage wraps its work in `recording(...)`, which writes `manifest.json` beside the outputs,
also when the stage fails (with the error), so a folder always says how it came to be.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .console import is_secret_name, mask_secrets
from .fileio import hash_input, write_json

TRACKED_PACKAGES = (
    "histosynth", "torch", "diffusers", "transformers", "accelerate", "safetensors", "openslide-python",
    "openslide-bin", "h5py", "pyarrow", "numpy", "open-clip-torch", "openai", "scikit-image", "pytorch-fid",
)
SECRET_MARKERS = ("key", "token", "secret", "password")


def _normal(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _dist_info_versions() -> dict[str, str]:
    """{normalised name: version} from the `*.dist-info` folder names on sys.path: one directory listing
    per path entry instead of a metadata search per package (~0.1 s of every light command's start)."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for folder in names:
            if folder.endswith(".dist-info") and "-" in folder:
                name, version = folder[:-len(".dist-info")].rsplit("-", 1)
                found.setdefault(_normal(name), version)
    return found


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    listed = _dist_info_versions()
    for name in names:
        if _normal(name) in listed:
            versions[name] = listed[_normal(name)]
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    """The commit of the histosynth checkout, if it runs from one (with '+dirty' for local edits)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=here, capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def redact_command(argv: list[str]) -> list[str]:
    """Mask values of options whose name suggests a secret (`--api-key X`, `--set x.token=Y`) and URL secrets."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        if "://" in arg:  # a URL (or `--base-url=URL`, `--set x.base_url=URL`): mask its own secrets
            out.append(mask_secrets(arg))
            continue
        name = arg.split("=", 1)[0]
        if arg.startswith("-") and is_secret_name(name):
            if "=" in arg:
                out.append(name + "=***")
            else:
                out.append(arg)
                hide_next = True
            continue
        if "=" in arg and is_secret_name(name):
            out.append(name + "=***")
            continue
        out.append(mask_secrets(arg))
    return out


def redact_config(value: Any, key: str = "") -> Any:
    """A config (dicts, lists, strings) with secret-named fields hidden and every URL's secrets masked."""
    if isinstance(value, dict):
        return {k: redact_config(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_config(v, key) for v in value]
    if isinstance(value, str):
        return "***" if is_secret_name(key) and value else mask_secrets(value)
    return value


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class PeakMemory:
    """Peak RSS above the baseline at start, sampled in a thread; plus CUDA's own peak if in use."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.baseline = current_rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, current_rss())

    def __enter__(self) -> "PeakMemory":
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rss_baseline_bytes": self.baseline,
            "rss_peak_bytes": self.peak,
            "rss_peak_above_baseline_bytes": max(0, self.peak - self.baseline),
        }
        cuda = _cuda()
        if cuda is not None:
            out["cuda_max_memory_allocated_bytes"] = int(cuda.max_memory_allocated())
        return out


def _cuda():
    torch = sys.modules.get("torch")  # only if the stage already uses torch: never import it here
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda
    return None


@dataclass
class Manifest:
    stage: str
    out_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def add_input(self, path: str | Path, name: str | None = None) -> None:
        self.inputs[name or str(path)] = hash_input(path)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "command": redact_command(sys.argv),
            "config": redact_config(self.config),
            "versions": package_versions(),
            "git_commit": git_commit(),
            "seeds": self.seeds,
            "inputs": self.inputs,
            "results": redact_config(self.results),
        }


@contextlib.contextmanager
def recording(stage: str, out_dir: str | Path, config: Any = None, seeds: dict[str, int] | None = None,
              filename: str = "manifest.json") -> Iterator[Manifest]:
    """Time and measure a stage, then write its manifest (status 'ok' or 'failed') atomically."""
    cfg = config.model_dump(mode="json") if hasattr(config, "model_dump") else (config or {})
    manifest = Manifest(stage=stage, out_dir=Path(out_dir), config=cfg, seeds=dict(seeds or {}))
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    status, err = "ok", None
    with PeakMemory() as memory:
        try:
            yield manifest
        except BaseException as exc:
            status, err = "failed", f"{exc.__class__.__name__}: {exc}"
            raise
        finally:
            data = manifest.as_dict()
            data.update(
                status=status,
                error=mask_secrets(err) if err else None,
                started_at=started.isoformat(),
                wall_time_s=round(time.perf_counter() - t0, 3),
            )
            memory.peak = max(memory.peak, current_rss())
            data["memory"] = memory.summary()
            write_json(Path(out_dir) / filename, data)
