"""Console output: rich progress bars that `--quiet` silences, one-line errors, and URLs with secrets masked.

Every message goes through `mask_secrets`: a URL's password (`user:pass@`) and the values of query
parameters that look like credentials (`?api-key=...`, `token`, `sig`, ...) never reach a terminal or
a log. `manifest.py` uses the same functions for everything it writes.

rich is imported on the first message or visible progress bar, not at import: a `--quiet` command
that prints nothing (summarizing reports) starts without it.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

T = TypeVar("T")

_state = {"quiet": False, "debug": False}


def __getattr__(name: str):
    """`console`: the rich Console on stderr, made on first use (module attribute, PEP 562)."""
    if name == "console":
        from rich.console import Console

        globals()["console"] = Console(stderr=True, highlight=False)
        return globals()["console"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _console():
    return globals().get("console") or __getattr__("console")


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


MASK = "***"
# Whole words of a name (split at '-', '_', '.'): `api-key`, `access_token`, `sig` are secret; `tokenizer` is not.
SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "auth", "authorization", "sig",
                "signature", "credential", "credentials", "session", "sessionid", "bearer"}
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    return any(w in SECRET_WORDS for w in re.split(r"[-_.\s]+", name.lower().lstrip("-")))


def mask_url(url: str) -> str:
    """`url` with its password and secret-looking query values replaced by ***."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:  # user:pass@host or a bare token@host: keep neither
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, MASK if is_secret_name(k) else v) for k, v in pairs], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not parseable: hide everything after the scheme
        return url.split("://", 1)[0] + "://" + MASK


def mask_secrets(text: str) -> str:
    """Every URL inside `text` masked (see `mask_url`)."""
    return _URL.sub(lambda m: mask_url(m.group(0)), text) if "://" in text else text


class HistosynthError(RuntimeError):
    """An expected failure (bad input, missing file): printed as one line, exit code 1."""

    exit_code = 1


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def console_state() -> dict:
    return dict(_state)


def restore_console_state(state: dict) -> None:
    _state.update(state)


def set_debug(debug: bool) -> None:
    _state["debug"] = debug


def is_debug() -> bool:
    return _state["debug"]


def info(message: str) -> None:
    if not _state["quiet"]:
        _console().print(mask_secrets(message), soft_wrap=True)


def warn(message: str) -> None:
    _console().print(f"[yellow]warning:[/yellow] {escape(mask_secrets(message))}", soft_wrap=True)


def error(message: str) -> None:
    _console().print(f"[red]error:[/red] {escape(mask_secrets(message))}", soft_wrap=True)  # one line in logs too


def make_progress():
    """A rich Progress on stderr; under --quiet a stand-in with the same methods that shows nothing."""
    if _state["quiet"]:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console(),
        transient=False,
    )


class _NoProgress:
    """What `make_progress()` gives under --quiet: the calls histosynth makes, doing nothing."""

    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def advance(self, *args, **kwargs) -> None:
        return None

    update = reset = advance


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (none under --quiet or when nothing is a terminal)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
