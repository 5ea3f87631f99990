"""The built-in plugin: llamarec's own datasets and commands, registered through the public hooks."""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    from .data.datasets import BUILTIN_DATASETS

    for spec in BUILTIN_DATASETS:
        register(spec)


@hookimpl
def register_retrievers(register):
    from .retrieval.lru import LRURec

    register("lrurec", LRURec)


@hookimpl
def register_commands(cli):
    from .cli import (
        candidates_command,
        evaluate_command,
        pipeline_command,
        plugins_command,
        preprocess_command,
        rank_train_command,
        retrieve_train_command,
        serve_command,
        serve_shell_command,
        templates_command,
        tune_fusion_command,
    )

    pipeline_command.install(cli)  # first in `llamarec --help`: the whole job
    preprocess_command.install(cli)
    retrieve_train_command.install(cli)
    candidates_command.install(cli)
    rank_train_command.install(cli)
    tune_fusion_command.install(cli)
    evaluate_command.install(cli)
    serve_shell_command.install(cli)
    serve_command.install(cli)
    templates_command.install(cli)
    plugins_command.install(cli)
