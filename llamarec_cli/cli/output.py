"""Printing: tables and JSON on stdout, messages on stderr."""

from __future__ import annotations

import json

from rich.console import Console

stdout = Console()
stderr = Console(stderr=True)


def print_json(data) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))
