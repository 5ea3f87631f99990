"""The built-in plugin: llamarec's own datasets and commands, registered through the public hooks."""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    from .data.datasets import BUILTIN_DATASETS

    for spec in BUILTIN_DATASETS:
        register(spec)


@hookimpl
def register_commands(cli):
    from .cli import plugins_command, preprocess_command

    preprocess_command.install(cli)
    plugins_command.install(cli)
