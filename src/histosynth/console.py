"""Console output: rich progress bars that `--quiet` silences, and one-line errors."""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

console = Console(stderr=True, highlight=False)
_state = {"quiet": False, "debug": False}


class HistosynthError(RuntimeError):
    """An expected failure (bad input, missing file): printed as one line, exit code 1."""

    exit_code = 1


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def set_debug(debug: bool) -> None:
    _state["debug"] = debug


def is_debug() -> bool:
    return _state["debug"]


def info(message: str) -> None:
    if not _state["quiet"]:
        console.print(message, soft_wrap=True)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def error(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)  # one line in logs too


def make_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=_state["quiet"],
        transient=False,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (none under --quiet or when nothing is a terminal)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
