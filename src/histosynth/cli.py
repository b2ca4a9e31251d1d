"""The `histosynth` command: parses arguments and calls the stages; no stage logic lives here.

Each stage sub-package has a `cli.py` with a `register(app)` that adds its commands. Stage CLI
modules import only typer and the core at module level, so `histosynth --help` stays fast, and
`main()` imports only the module of the command named on the command line (`COMMANDS`; --help,
no command or an unknown one register them all, so the listing and the "no such command" error
are complete). `histosynth.cli.app` is the app with every command (tests, CliRunner).
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from . import __version__
from .config import ConfigError
from .console import (HistosynthError, console_state, error, restore_console_state, set_debug,
                      set_quiet)

# Pipeline order; each module's register(app) adds the commands of its stage.
STAGE_CLIS = (
    "histosynth.core_cli",          # sample-data
    "histosynth.slides.cli",        # tile, tile-merge, describe
    "histosynth.reports.cli",       # reports, summarize, summary-stats
    "histosynth.text.cli",          # embed
    "histosynth.latents.cli",       # train-vae, encode
    "histosynth.train.cli",         # train
    "histosynth.sample.cli",        # sample
    "histosynth.evaluate.cli",      # evaluate
    "histosynth.experiments.cli",   # ablate, demo
    "histosynth.convert.cli",       # convert-pathldm
    "histosynth.serve.cli",         # serve
)
# command -> the module that registers it (tests/test_startup.py checks it against register())
COMMANDS = {
    "sample-data": "histosynth.core_cli",
    "tile": "histosynth.slides.cli", "tile-merge": "histosynth.slides.cli", "describe": "histosynth.slides.cli",
    "reports": "histosynth.reports.cli", "summarize": "histosynth.reports.cli",
    "summary-stats": "histosynth.reports.cli",
    "embed": "histosynth.text.cli",
    "train-vae": "histosynth.latents.cli", "encode": "histosynth.latents.cli",
    "train": "histosynth.train.cli",
    "sample": "histosynth.sample.cli",
    "evaluate": "histosynth.evaluate.cli",
    "ablate": "histosynth.experiments.cli", "demo": "histosynth.experiments.cli",
    "convert-pathldm": "histosynth.convert.cli",
    "serve": "histosynth.serve.cli",
}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"histosynth {__version__}")
        raise typer.Exit()


def _main(
    ctx: typer.Context,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or info messages."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    # The flags hold for this command only: when the app is called in-process (CliRunner, notebooks),
    # a `-q` must not silence the library calls that come after it.
    before = console_state()
    ctx.call_on_close(lambda: restore_console_state(before))
    set_quiet(quiet)
    set_debug(debug)


def build_app(modules: tuple[str, ...] = STAGE_CLIS) -> typer.Typer:
    """The `histosynth` app with the commands of `modules` (default: all of them)."""
    app = typer.Typer(
        name="histosynth",
        help="Slides and pathology reports to a text-conditioned latent diffusion model of histopathology patches.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_main)
    for module in modules:
        importlib.import_module(module).register(app)
    return app


def modules_for(argv: list[str]) -> tuple[str, ...]:
    """The stage CLI module of the command in `argv` (the first word that is not an option: the
    top-level options take no value), or all of them for --help, no command or an unknown one."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in COMMANDS and not {"--help", "-h"} & set(argv[: argv.index(command)]):
        return (COMMANDS[command],)
    return STAGE_CLIS


def __getattr__(name: str):
    """`app`: every command registered (built on first use, PEP 562)."""
    if name == "app":
        globals()["app"] = build_app()
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_click_error(exc: Exception) -> bool:
    """typer vendors click (`typer._click`): match its exceptions and plain click's alike."""
    return any(c.__name__ == "ClickException" for c in type(exc).__mro__) and hasattr(exc, "format_message")


def main() -> None:
    # Two cores: never let torch, BLAS and loader workers oversubscribe them by default.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = build_app(modules_for(sys.argv[1:]))
    debug = "--debug" in sys.argv[1:]  # read here: the app restores the console flags when it returns
    try:
        app(standalone_mode=False)
    except ConfigError as exc:
        error(str(exc))
        sys.exit(2)
    except HistosynthError as exc:
        if debug:
            raise
        error(str(exc))
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        error("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        error("interrupted; finished outputs are kept, rerun to resume")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - last resort: one line unless --debug
        if _is_click_error(exc):  # usage errors name the option and what it expects ("--budget abc")
            error(exc.format_message())
            sys.exit(exc.exit_code)
        if debug:
            raise
        error(f"{exc.__class__.__name__}: {exc} (rerun with --debug for the traceback)")
        sys.exit(1)


if __name__ == "__main__":
    main()
