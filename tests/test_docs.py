"""The documentation's code runs as written."""

from __future__ import annotations

import re
import sys

from conftest import REPO

from llamarec_cli import plugins
from llamarec_cli.stages.preprocess import preprocess


def python_block_after(markdown: str, marker: str) -> str:
    start = markdown.index(marker)
    return re.search(r"```python\n(.*?)```", markdown[start:], re.S).group(1)


def test_plugin_guide_dataset_example_works(tmp_path, monkeypatch):
    guide = (REPO / "docs" / "plugins.md").read_text()
    (tmp_path / "llamarec_steam.py").write_text(python_block_after(guide, "`llamarec_steam.py`"))
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = [f"u{u},{a},{1000 * u + a}" for u in range(7) for a in range(6)]
    (raw / "reviews.csv").write_text("user_id,app_id,unix_time\n" + "\n".join(rows) + "\n")
    (raw / "games.csv").write_text("app_id,title\n" + "".join(f"{a},Game {a}\n" for a in range(6)))
    monkeypatch.syspath_prepend(str(tmp_path))
    import llamarec_steam

    plugins.register_plugin(llamarec_steam, name="steam")
    try:
        dataset = preprocess("steam", workdir=tmp_path / "runs", raw_dir=raw)
        assert dataset.manifest["statistics"]["users"] == 7
        assert dataset.manifest["statistics"]["interactions"] == 42
    finally:
        plugins.unregister_plugin("steam")
        sys.modules.pop("llamarec_steam", None)


def test_ci_runs_the_readme_commands():
    """CI installs and tests exactly as the README tells a new developer to."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set up and pass the tests", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    install, test = [line.strip() for line in section.strip().splitlines()]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    venv, pip = install.split(" && ", 1)
    assert venv in ci and pip in ci and test in ci
