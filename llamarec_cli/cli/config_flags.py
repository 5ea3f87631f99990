"""Command-line flags made from a config dataclass, so that a setting's help and default are written once: in the
dataclass's ``option(default, help)``.

``@config_flags(RankerConfig, ["lr", "batch_size"])`` adds ``--lr`` and ``--batch-size`` to a Typer command, each with
its field's help and ``[default: ...]``, and calls the command with ``flags``: the ones the user gave, by field name
(unset flags are left out, so that dataset suggestions and resumed runs can fill them). Other settings are reachable
with ``--set KEY=VALUE``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated

import typer
from rich.markup import escape


def config_flags(
    config_class: type, names: list[str], *, defaults: dict[str, str] | None = None, panel: str | None = None
) -> Callable[[Callable], Callable]:
    """A decorator adding one flag per field in ``names``; ``defaults`` replaces the shown default of some (e.g.
    "per dataset" where a dataset suggests its own); ``panel`` groups the flags under that heading in ``--help``."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    unknown = [name for name in names if name not in fields]
    if unknown:
        raise ValueError(f"{config_class.__name__} has no field {', '.join(unknown)}")

    def flag(name: str) -> inspect.Parameter:
        field = fields[name]
        shown = (defaults or {}).get(name, _shown(field.default))
        help = escape(f"{field.metadata.get('help', '')} [default: {shown}]")  # Typer's help is rich markup
        option = typer.Option("--" + name.replace("_", "-"), help=help, show_default=False, rich_help_panel=panel)
        kind = _optional(_bare(hints[name]))
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind, option])

    def decorate(command: Callable) -> Callable:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "flags"]
        arguments = [p for p in own if p.default is inspect.Parameter.empty]  # the dataset: first, as before
        options = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in arguments]
        parameters = arguments + [flag(name) for name in names] + options

        @functools.wraps(command)
        def with_flags(*args, **kwargs):
            given = {name: kwargs.pop(name) for name in names if name in kwargs}
            return command(*args, flags={k: v for k, v in given.items() if v is not None}, **kwargs)

        with_flags.__signature__ = inspect.Signature(parameters)
        with_flags.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_flags

    return decorate


def _shown(default) -> str:
    if default is None:
        return "unset"
    if default == "":
        return "empty"
    return str(default)


def _bare(kind):
    """``int | None`` -> ``int``: Typer takes the flag's type, and every flag here may be left out."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        rest = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return rest[0]
    return kind


def _optional(kind):
    return typing.Optional[kind]  # noqa: UP045 - a runtime annotation Typer reads
