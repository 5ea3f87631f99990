"""The work directory's layout is spelled in llamarec_cli/layout.py only, and its status follows a run's files."""

from __future__ import annotations

import re
from pathlib import Path

from llamarec_cli.layout import STATE_FILE, Status, Workdir

PACKAGE = Path(__file__).resolve().parent.parent / "llamarec_cli"


def test_status_follows_a_training_run(tmp_path):
    layout = Workdir(tmp_path)
    ranker = layout.ranker("ml-100k", "default")
    assert ranker == tmp_path / "ml-100k" / "ranker" / "default"
    assert layout.status(ranker) is Status.MISSING
    partial = layout.partial(ranker)
    assert partial == tmp_path / "ml-100k" / "ranker" / ".default.partial"
    partial.mkdir(parents=True)
    (partial / "run.json").write_text("{}")
    assert layout.status(ranker) is Status.MISSING  # started, but nothing saved to continue from
    layout.state(partial).parent.mkdir()
    layout.state(partial).write_bytes(b"")
    assert layout.state(partial).name == STATE_FILE
    assert layout.status(ranker) is Status.RESUMABLE and layout.resumable(ranker)
    ranker.mkdir()
    (ranker / "manifest.json").write_text("{}")
    assert layout.status(ranker) is Status.DONE
    assert layout.candidates("beauty", "lrurec") == (
        tmp_path / "beauty" / "candidates" / "lrurec.parquet",
        tmp_path / "beauty" / "candidates" / "lrurec.json",
    )


def test_no_other_module_spells_the_layout():
    spelled = re.compile(r"""/ ["'](dataset|retriever|candidates|ranker|reports|training)["']|\.partial["']""")
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "layout.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if spelled.search(line)
    ]
    assert not found, "spell the work directory's layout in layout.py:\n" + "\n".join(found)
