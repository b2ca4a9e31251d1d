"""Reading a PyTorch Lightning checkpoint without trusting it by default.

`torch.load(weights_only=True)` only rebuilds tensors and plain containers, so a hostile file cannot
run code. Lightning files that also pickle Python objects (hyper-parameters, callbacks, loop state)
need the full unpickler, which executes whatever the file names: that needs `--trust-checkpoint`.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path

from ..console import HistosynthError, info

LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # pickled 0x1950a86a20f9469cfc6c
WEIGHTS_ONLY_REFUSAL = "Weights only load failed"  # torch's message when a file needs the full unpickler
TRUST_HINT = (
    "unpickling it runs code named in the file; rerun with --trust-checkpoint only if you trust its source"
)


def load_state_dict(path: str | Path, trust: bool = False) -> dict:
    """The `state_dict` of a Lightning checkpoint (or a bare state dict), tensors memory-mapped."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise HistosynthError(f"{path}: checkpoint not found")
    if not _zip(path) and not _pickle(path):
        raise HistosynthError(f"{path}: not a PyTorch checkpoint (neither torch.save's zip archive nor a pickle)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=_zip(path))
    except pickle.UnpicklingError as exc:
        if WEIGHTS_ONLY_REFUSAL not in str(exc):  # a damaged file, not one with objects
            raise HistosynthError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None
        if not trust:
            raise HistosynthError(
                f"{path}: holds Python objects besides tensors ({_first_line(exc)}); {TRUST_HINT}"
            ) from None
        info(f"{path.name}: loading with the full unpickler (--trust-checkpoint)")
        data = torch.load(path, map_location="cpu", weights_only=False, mmap=_zip(path),
                          pickle_module=_lenient_pickle)
    except (RuntimeError, EOFError, OSError) as exc:
        raise HistosynthError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HistosynthError(f"{path}: no `state_dict` of tensors in this checkpoint")
    return state


def _pickle(path: Path) -> bool:
    """torch.save's legacy (pre-1.6) format: a pickle starting with torch's magic number."""
    with open(path, "rb") as f:
        return f.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC


def _zip(path: Path) -> bool:
    """mmap needs the zip format of torch >= 1.6; older pickled files are read whole."""
    import zipfile

    return zipfile.is_zipfile(path)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]


class _LenientUnpickler(pickle.Unpickler):
    """Trusted files only: classes from packages that are not installed (pytorch_lightning, the
    CompVis code) become empty placeholders, since only the tensors are kept."""

    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            # a dict, so that pickled dict subclasses (Lightning's AttributeDict) refill it too
            return type(name, (dict,), {"__module__": module, "__setstate__": _keep_state,
                                        "__init__": lambda self, *a, **k: None})


def _keep_state(self, state) -> None:
    self.__dict__["state"] = state


_lenient_pickle = types.SimpleNamespace(
    Unpickler=_LenientUnpickler, load=pickle.load, loads=pickle.loads, __name__="pickle"
)
