"""The hooks a llamarec plugin can implement.

Each hook receives a ``register`` callback (the pattern of simonw/llm and datasette): a plugin calls it once per
component it provides. Built-in components are registered through these same hooks.
"""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("llamarec")
hookimpl = HookimplMarker("llamarec")


@hookspec
def register_datasets(register):
    """Register datasets: ``register(DatasetSpec(...))``.

    A dataset names the raw files it needs and loads them into raw interactions and titles; llamarec does the
    filtering, id mapping and splitting (see docs/plugins.md).
    """


@hookspec
def register_retrievers(register):
    """Register stage-1 retrievers: ``register(name, retriever_class)``."""


@hookspec
def register_prompt_templates(register):
    """Register prompt template files: ``register(name, path)``."""


@hookspec
def register_commands(cli):
    """Add subcommands to the ``llamarec`` Typer app: ``@cli.command()``."""
