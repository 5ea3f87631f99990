"""llamarec plugins"""

from __future__ import annotations

import typer

from .. import plugins
from .options import Json
from .output import print_json, stdout

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
    from rich.table import Table

    table = Table(title="llamarec plugins")
    for column in ("plugin", "distribution", "datasets", "retrievers", "templates", "commands"):
        table.add_column(column)
    for row in rows:
        dist = f"{row['distribution']} {row['version']}".strip()
        table.add_row(
            row["name"],
            dist,
            *(", ".join(row[k]) for k in ("datasets", "retrievers", "templates", "commands")),
        )
    stdout.print(table)


def install(cli: typer.Typer) -> None:
    cli.command("plugins", epilog=EPILOG)(list_plugins)
