"""Console output: rich progress bars that `--quiet` silences, one-line errors, and URLs with secrets masked.

Every message goes through `mask_secrets`: a URL's password (`user:pass@`) and the values of query
parameters that look like credentials (`?api-key=...`, `token`, `sig`, ...) never reach a terminal or
a log. `manifest.py` uses the same functions for everything it writes.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

console = Console(stderr=True, highlight=False)
_state = {"quiet": False, "debug": False}


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


def set_debug(debug: bool) -> None:
    _state["debug"] = debug


def is_debug() -> bool:
    return _state["debug"]


def info(message: str) -> None:
    if not _state["quiet"]:
        console.print(mask_secrets(message), soft_wrap=True)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(mask_secrets(message))}", soft_wrap=True)


def error(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(mask_secrets(message))}", soft_wrap=True)  # one line in logs too


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
