"""llamarec plugins"""

from __future__ import annotations

import typer

from .. import plugins
from .options import Json
from .output import lines, print_json

EPILOG = "Examples:  llamarec plugins   ·   LLAMAREC_PLUGINS=llamarec-baselines llamarec plugins --json"


def list_plugins(json_output: Json = False) -> None:
    """List the loaded plugins and what each registers."""
    registries = {
        "datasets": plugins.datasets(),
        "retrievers": plugins.retrievers(),
        "templates": plugins.prompt_templates(),
    }
    rows = []
    for info in plugins.plugin_infos():
        row = {
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "builtin": info.builtin,
            **{kind: registry.by_plugin(info.name) for kind, registry in registries.items()},
            "commands": info.commands,
        }
        rows.append(row)
    if json_output:
        print_json(rows)
        return
    print_plugins(rows)


KINDS = ("datasets", "retrievers", "templates", "commands")


def print_plugins(rows: list[dict]) -> None:
    """One block per plugin, its registrations wrapped between names: nothing is cut at any width (a table was, at
    the 80 columns of a pipe)."""
    for row in rows:
        source = "built in" if row["builtin"] else f"{row['distribution']} {row['version']}".strip()
        lines(f"{row['name']} ({source})")
        kinds = [kind for kind in KINDS if row[kind]]
        for kind in kinds:
            lines(", ".join(row[kind]), first=f"  {kind:<10}  ")
        if not kinds:
            lines("  registers nothing")


def install(cli: typer.Typer) -> None:
    cli.command("plugins", epilog=EPILOG)(list_plugins)
