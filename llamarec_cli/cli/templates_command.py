"""llamarec templates list | show"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import settings
from .options import TemplatesDir, Workdir
from .output import lines, stderr

templates_app = typer.Typer(
    help="Prompt templates: list them, or show one rendered for a user.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@templates_app.command("list")
def list_templates(templates_dir: TemplatesDir = None) -> None:
    """List the templates found, in search order (directory option, plugins, packaged); a broken file is listed
    with its problem."""
    from ..errors import DataFormatError
    from ..ranking.templates import DEFAULT_TEMPLATE, available_templates, read_template

    for name, (path, origin) in available_templates(templates_dir).items():
        try:
            about = read_template(path, name).description
        except DataFormatError as exc:
            about = f"broken, not usable: {exc}"
        lines(f"{name} ({origin}{'; the default' if name == DEFAULT_TEMPLATE else ''})")
        if about:
            lines(about, first="  ")
        lines(str(path), first="  ")


@templates_app.command(
    "show", epilog="Examples:  llamarec templates show   ·   llamarec templates show plain --dataset ml-100k --user 1"
)
def show_template(
    name: Annotated[str, typer.Argument(help="Template name or .toml path.")] = "alpaca-short",
    dataset: Annotated[str | None, typer.Option("--dataset", help="Render for a user of this dataset.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="The user whose test request to show.")] = None,
    retriever: Annotated[str, typer.Option("--retriever", "-r", help="Whose candidates to show.")] = "lrurec",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Show the prompt as this model reads it: titles cut to title_tokens and the prompt to max_tokens "
            "of its tokens, and its answer letters checked (loads the tokenizer only).",
        ),
    ] = None,
    templates_dir: TemplatesDir = None,
    workdir: Workdir = None,
) -> None:
    """Print a template rendered for a made-up example, or for a user's test request (history + candidates)."""
    from ..ranking.templates import LETTERS, load_template

    if dataset is None and user is not None:
        from ..errors import ConfigError

        raise ConfigError(f"--user {user} needs --dataset: whose user is it?")
    template = load_template(name, templates_dir)
    if dataset is None:
        history = [f"History item {i}" for i in range(1, 4)]
        candidates = [f"Candidate {letter}" for letter in LETTERS]
    else:
        history, candidates = _user_request(settings.workdir(workdir), dataset, user, retriever)
        if len(candidates) > len(LETTERS):
            from ..errors import ConfigError

            raise ConfigError(
                f"The {retriever} candidates of {dataset} have {len(candidates)} per user, but a prompt can letter at "
                f"most {len(LETTERS)} ({LETTERS[0]}-{LETTERS[-1]}). Export at most {len(LETTERS)}: "
                + settings.command_for(
                    f"llamarec candidates {dataset} --retriever {retriever} --k {len(LETTERS)}",
                    settings.workdir(workdir),
                )
            )
    text = template.render(history, candidates) if model is None else _as_read_by(model, template, history, candidates)
    print(text, end="")
    print("⟨answer letter⟩", flush=True)
    if model is None:
        stderr.print(
            f"(Titles not cut to {template.title_tokens} tokens nor the prompt to {template.max_tokens}: tokens are "
            "the model's; --model shows the prompt as a model reads it.)",
            highlight=False,
        )


def _as_read_by(model: str, template, history: list[str], candidates: list[str]) -> str:
    """The prompt as ``model``'s tokenizer leaves it (the text of the ids the model is given), after checking that
    each answer letter is one token after it."""
    from ..ranking.models import load_tokenizer
    from ..ranking.prompts import Example, PromptEncoder

    tokenizer = load_tokenizer(model)
    titles = dict(enumerate(history + candidates))
    encoder = PromptEncoder(tokenizer, template, titles)  # derives the verbalizer: a letter split in two is refused
    encoder.verbalizer.ids(len(candidates))
    example = Example(history=list(range(len(history))), candidates=list(range(len(history), len(titles))))
    return tokenizer.decode(encoder.prompt_ids(example))


def _user_request(workdir, dataset_name: str, user: int | None, retriever: str) -> tuple[list[str], list[str]]:
    import polars as pl

    from ..data.artifact import load_dataset
    from ..errors import ConfigError
    from ..stages.candidates import load_candidates

    dataset = load_dataset(workdir, dataset_name)
    candidates, _ = load_candidates(workdir, dataset, retriever)
    rows = candidates.filter(pl.col("split") == "test")
    internal = rows["user"][0] if user is None else dataset.require_user(user)
    row = rows.filter(pl.col("user") == internal)
    if row.is_empty():
        raise ConfigError(f"User {user} has no test request in {dataset_name} (give an original or internal user id).")
    titles = dataset.titles
    history = dataset.sequences("train").get(internal, []) + dataset.sequences("val").get(internal, [])
    return [titles[i] for i in history], [titles[i] for i in row["candidates"][0]]


def install(cli: typer.Typer) -> None:
    cli.add_typer(templates_app, name="templates")
