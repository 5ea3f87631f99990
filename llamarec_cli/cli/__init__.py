"""The ``llamarec`` command: a Typer app whose subcommands come from plugins (the built-ins included)."""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import plugins, settings
from ..errors import LlamarecError, WorkdirError
from ..version import __version__

app = typer.Typer(
    name="llamarec",
    help="Two-stage LLM recommendation (LlamaRec): a sequential retriever, then an LLM ranker.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"llamarec {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Two-stage LLM recommendation (LlamaRec): a sequential retriever, then an LLM ranker."""


def report_error(exc: LlamarecError) -> None:
    """One red line on stderr; the traceback only with LLAMAREC_DEBUG=1."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(Text(f"Error: {exc}", style="bold red"))


def report_usage_error(exc: typer.TyperException) -> None:
    """A mistyped command line as the other errors are shown (one red line), then where to read the usage, instead
    of Typer's usage line and boxed message."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # `llamarec` alone: the help is already shown
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True, soft_wrap=True)
    console.print(Text(f"Error: {exc.format_message()}", style="bold red"))
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        console.print(Text(f"Try '{ctx.command_path} -h' for help."))


# Failures of the machine rather than of llamarec: one line that names the path, not a traceback. Every artifact is
# written beside the old one and swapped in whole, so the old one is still there.
STORAGE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded"}
ACCESS_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS)


def _in_cache(path) -> bool:
    try:
        return path is not None and Path(path).resolve().is_relative_to(settings.cache_dir().resolve())
    except (OSError, ValueError):
        return False


def _setting_for(path) -> str:
    """The setting that chose where ``path`` is: the cache's or the work directory's."""
    return f"cache folder ({settings.ENV_CACHE_DIR})" if _in_cache(path) else f"--workdir (or {settings.ENV_WORKDIR})"


def storage_error(exc: OSError) -> LlamarecError | None:
    """The one-line error for a full disk or an unwritable path; None for other OS errors (bugs, to be seen)."""
    where = exc.filename or "the work directory"
    if exc.errno in STORAGE_ERRORS:
        return WorkdirError(
            f"Cannot write {where}: {STORAGE_ERRORS[exc.errno]}. Free space and rerun; "
            "the previous artifact is unchanged."
        )
    if exc.errno in ACCESS_ERRORS:
        return WorkdirError(
            f"Cannot write {where}: {exc.strerror}. Choose a writable {_setting_for(exc.filename)}; "
            "the previous artifact is unchanged."
        )
    if exc.errno == errno.ENOENT and _in_cache(exc.filename) and not settings.cache_dir().is_dir():
        # the cache folder could not be made (LLAMAREC_CACHE_DIR under /proc); a file gone from it is a bug, shown
        return WorkdirError(
            f"Cannot create {where}: {exc.strerror}. Choose another cache folder ({settings.ENV_CACHE_DIR})."
        )
    if exc.errno == errno.ENOTDIR:
        return WorkdirError(
            f"Cannot use {where}: part of that path is a file, not a folder. Choose another "
            f"{_setting_for(exc.filename)}."
        )
    return None


INTERRUPTED = 130  # the shell's exit status for Ctrl-C


def _mapped(callback):
    @functools.wraps(callback)
    def run(*args, **kwargs):
        try:
            callback(*args, **kwargs)  # what a command returns is no exit status (main() reads it as one)
        except KeyboardInterrupt:  # a command without advice of its own (the trainings and pipeline have some)
            from .output import stderr

            stderr.print("Interrupted. Run the same command again to start it over.")
            raise typer.Exit(INTERRUPTED) from None
        except (LlamarecError, OSError) as exc:
            error = exc if isinstance(exc, LlamarecError) else storage_error(exc)
            if error is None or settings.debug():
                raise
            report_error(error)
            raise typer.Exit(error.exit_code) from None

    return run


def _exiting_after_interrupt() -> None:
    """The work is stopped and cleaned up: a second Ctrl-C during the exit would only print a traceback from the
    libraries' exit handlers (torch's among them); it ends the process at once, quietly, as a SIGTERM does."""
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(INTERRUPTED))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _terminate(signum, frame):
    raise KeyboardInterrupt  # `kill` stops a command as Ctrl-C does: no half-written artifact, and its advice


def _launched() -> bool:
    """Under torchrun / accelerate launch: the launcher sends SIGTERM to the other processes when one fails, and
    expects them to die (an interruption message from each would bury the real error)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def build_app() -> typer.Typer:
    """Install every plugin's commands (once), each wrapped so that expected errors become one line."""
    if not app.registered_commands:
        plugins.install_commands(app)
        groups = [group.typer_instance for group in app.registered_groups]  # e.g. `llamarec templates list`
        for command in app.registered_commands + [c for g in groups for c in g.registered_commands]:
            command.callback = _mapped(command.callback)
    return app


def main() -> None:
    from ..quiet import quiet_libraries

    quiet_libraries()  # the libraries' bars, warnings and logs; LLAMAREC_DEBUG=1 keeps them
    if not _launched():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        code = build_app()(prog_name="llamarec", standalone_mode=False)
    except typer.TyperException as exc:  # a mistyped command line (Typer's click exceptions)
        report_usage_error(exc)
        code = exc.exit_code
    except typer.Abort:  # Ctrl-D at a prompt
        print("Aborted.", file=sys.stderr)
        code = 1
    except LlamarecError as exc:  # raised while loading plugins, before any command runs
        if settings.debug():
            raise
        report_error(exc)
        code = exc.exit_code
    if code == INTERRUPTED:
        _exiting_after_interrupt()
    sys.exit(code or 0)  # None: the command ended normally; else typer.Exit's status
