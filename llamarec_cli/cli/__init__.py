"""The ``llamarec`` command: a Typer app whose subcommands come from plugins (the built-ins included)."""

from __future__ import annotations

import functools
import sys
from typing import Annotated

import typer

from .. import __version__, plugins, settings
from ..errors import LlamarecError

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


def _mapped(callback):
    @functools.wraps(callback)
    def run(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except LlamarecError as exc:
            if settings.debug():
                raise
            report_error(exc)
            raise typer.Exit(exc.exit_code) from None

    return run


def build_app() -> typer.Typer:
    """Install every plugin's commands (once), each wrapped so that expected errors become one line."""
    if not app.registered_commands:
        plugins.install_commands(app)
        groups = [group.typer_instance for group in app.registered_groups]  # e.g. `llamarec templates list`
        for command in app.registered_commands + [c for g in groups for c in g.registered_commands]:
            command.callback = _mapped(command.callback)
    return app


def main() -> None:
    try:
        build_app()(prog_name="llamarec")
    except LlamarecError as exc:  # raised while loading plugins, before any command runs
        if settings.debug():
            raise
        report_error(exc)
        sys.exit(exc.exit_code)
