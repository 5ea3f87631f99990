"""llamarec serve-shell"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import settings
from .options import (
    Adapter,
    DatasetName,
    Device,
    Dtype,
    Fusion,
    Json,
    Model,
    RankedRetriever,
    Ranker,
    TemplatesDir,
    Workdir,
    check_loading_options,
)
from .output import note, print_json, stderr, stdout

EPILOG = (
    "Examples:  llamarec serve-shell ml-100k   ·   llamarec serve-shell ml-100k --user 1 --json   ·   "
    'llamarec serve-shell ml-100k --history "Toy Story; Heat; Casino" --json   ·   '
    "llamarec serve-shell ml-100k --ranker none (retriever only)"
)


def serve_shell(
    dataset: DatasetName,
    user: Annotated[str | None, typer.Option("--user", help="Recommend once for this user and exit.")] = None,
    history: Annotated[
        str | None, typer.Option("--history", help="Recommend once for these titles ('t1; t2; ...') and exit.")
    ] = None,
    top: Annotated[int, typer.Option("--top", help="How many of the ranked list to show (1 to 20).")] = 10,
    ranker: Ranker = "default",
    adapter: Adapter = None,
    model: Model = None,
    retriever: RankedRetriever = None,
    fusion: Fusion = "auto",
    dtype: Dtype = None,
    device: Device = "auto",
    workdir: Workdir = None,
    templates_dir: TemplatesDir = None,
    json_output: Json = False,
) -> None:
    """Load the retriever and ranker once and recommend interactively (or once, with --user or --history)."""
    from ..errors import ConfigError
    from ..serving.answer import answer_json
    from ..serving.recommender import CANDIDATES, Recommender
    from ..serving.shell import Shell, parse_history, print_recommendation

    # checked before anything loads: a bad --top should not cost the wait for a model
    if user is not None and history is not None:
        raise ConfigError("Give --user or --history, not both: one recommendation is made, for one history.")
    if top < 1:
        raise ConfigError(f"--top must be a whole number from 1 to {CANDIDATES}, not {top}.")
    if top > CANDIDATES:  # as the shell's `top` command does: show them all, and say so
        stderr.print(f"--top {top}: there are {CANDIDATES} candidates; showing all {CANDIDATES}.", highlight=False)
        top = CANDIDATES
    check_loading_options(device, dtype, fusion)
    if user is not None:  # an unknown user is refused before minutes of loading a model
        from ..data.artifact import load_dataset

        load_dataset(settings.workdir(workdir), dataset).require_user(user)
    recommender = Recommender(
        dataset,
        workdir=settings.workdir(workdir),
        retriever=retriever,
        ranker=ranker,
        adapter=adapter,
        model=model,
        dtype=dtype,
        device=device,
        fusion=fusion,
        templates_dir=templates_dir,
    )
    for line in recommender.notes():
        note(line)
    if user is not None or history is not None:
        items = recommender.user_history(user) if user is not None else parse_history(recommender, history)
        rec = recommender.recommend(items)
        if json_output:
            print_json(answer_json(recommender, rec, user=user, top=top))
        else:
            print_recommendation(stdout, rec, top, f"User {user}" if user is not None else "Your history")
        return
    history_file = settings.cache_dir() / "serve-shell-history"
    try:
        Shell(recommender, stdout, top=top, history_file=history_file).cmdloop()
    except KeyboardInterrupt:  # Ctrl-C leaves the shell as quit does: nothing to redo, no "Interrupted"
        stdout.print()


def install(cli: typer.Typer) -> None:
    cli.command("serve-shell", epilog=EPILOG)(serve_shell)
