"""Printing: tables and JSON on stdout, messages on stderr."""

from __future__ import annotations

import json

from rich.console import Console

stdout = Console()
stderr = Console(stderr=True)


def note(message: str) -> None:
    """One progress or status line on stderr, as the stages' ``log`` callbacks send them."""
    stderr.print(message, highlight=False, soft_wrap=True)


def lines(text: str, first: str = "") -> None:
    """``text`` on stdout wrapped between words at the terminal's width (80 in a pipe), never inside a word or a
    path: ``first`` begins the first line, as many spaces the others."""
    import textwrap

    from rich.markup import escape

    wrapped = textwrap.fill(
        text,
        width=max(stdout.width, 40),
        initial_indent=first,
        subsequent_indent=" " * len(first),
        break_long_words=False,
        break_on_hyphens=False,
    )
    stdout.print(escape(wrapped or first), highlight=False, soft_wrap=True)


def print_json(data) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def metrics_table(title: str, rows: dict[str, dict[str, float]], extra: tuple[str, ...] = ()):
    """A rich table that fits 80 columns: a row per (split or model, metric), a column per cut-off k.

    ``extra`` names further keys of each row's values (e.g. "HitRate@20"), shown as their own rows.
    """
    from rich.table import Table

    from ..evaluation.metrics import KS, NAMES

    table = Table(title=title)
    table.add_column("")
    table.add_column("metric")
    for k in KS:
        table.add_column(f"@{k}", justify="right")
    for label, values in rows.items():
        for i, name in enumerate(NAMES + tuple(extra)):
            if name in extra:
                cells = [f"{values[name]:.4f}" if name in values else ""] + [""] * (len(KS) - 1)
                cells.reverse()  # in the last column
            else:
                cells = [f"{values[f'{name}@{k}']:.4f}" if f"{name}@{k}" in values else "" for k in KS]
            table.add_row(label if i == 0 else "", name, *cells, end_section=i == len(NAMES) + len(extra) - 1)
    return table
