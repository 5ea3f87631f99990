"""The dataset artifact: atomic writes, interrupted runs, unwritable work directories, altered files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
from conftest import shared_path

from llamarec_cli.data import artifact
from llamarec_cli.data.artifact import load_dataset
from llamarec_cli.errors import ArtifactError, WorkdirError
from llamarec_cli.files import sha256_of
from llamarec_cli.stages.preprocess import preprocess


def ml_raw():
    return shared_path("datasets", "ml-latest-small")


def test_interrupted_preprocess_leaves_no_artifact_and_a_rerun_succeeds(workdir, monkeypatch):
    raw = ml_raw()
    real_write = artifact.pl.DataFrame.write_parquet
    calls = []

    def interrupted(self, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # after the first table is on disk
            raise KeyboardInterrupt
        return real_write(self, path, **kwargs)

    monkeypatch.setattr(artifact.pl.DataFrame, "write_parquet", interrupted)
    with pytest.raises(KeyboardInterrupt):
        preprocess("ml-100k", workdir=workdir, raw_dir=raw)
    assert list((workdir / "ml-100k").iterdir()) == []
    with pytest.raises(ArtifactError, match="Run first: llamarec preprocess ml-100k"):
        load_dataset(workdir, "ml-100k")

    monkeypatch.setattr(artifact.pl.DataFrame, "write_parquet", real_write)
    assert preprocess("ml-100k", workdir=workdir, raw_dir=raw).manifest["statistics"]["users"] == 610


def test_killed_preprocess_keeps_the_previous_artifact_intact(workdir, tmp_path):
    """SIGKILL mid-write: the old artifact stays whole; a rerun cleans up and succeeds."""
    raw = ml_raw()
    before = preprocess("ml-100k", workdir=workdir, raw_dir=raw).checksum
    script = (
        "import time, polars as pl\n"
        "from llamarec_cli.data import artifact\n"
        "real = pl.DataFrame.write_parquet\n"
        "def slow(self, path, **kw):\n"
        "    real(self, path, **kw); print('wrote', flush=True); time.sleep(60)\n"
        "pl.DataFrame.write_parquet = slow\n"
        "from llamarec_cli.stages.preprocess import preprocess\n"
        f"preprocess('ml-100k', workdir=__import__('pathlib').Path({str(workdir)!r}), "
        f"raw_dir=__import__('pathlib').Path({str(raw)!r}))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env={**os.environ})
    assert child.stdout.readline().strip() == "wrote"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert load_dataset(workdir, "ml-100k").checksum == before
    assert any(p.name.startswith(".dataset.tmp-") for p in (workdir / "ml-100k").iterdir())
    preprocess("ml-100k", workdir=workdir, raw_dir=raw)
    assert sorted(p.name for p in (workdir / "ml-100k").iterdir()) == ["dataset"]


def test_unwritable_workdir_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    started = time.perf_counter()
    with pytest.raises(
        WorkdirError, match="Cannot write to work directory .*a-file/runs.*--workdir or LLAMAREC_WORKDIR"
    ):
        preprocess("ml-100k", workdir=blocker / "runs", raw_dir=tmp_path)
    assert time.perf_counter() - started < 5


def test_altered_table_is_refused_with_what_to_rerun(workdir):
    dataset = preprocess("ml-100k", workdir=workdir, raw_dir=ml_raw())
    (dataset.path / "items.parquet").write_bytes(b"not parquet")
    with pytest.raises(
        ArtifactError, match=r"items\.parquet is missing or altered\. Rerun: llamarec preprocess ml-100k"
    ):
        load_dataset(workdir, "ml-100k")


@pytest.mark.parametrize(
    "table, edit, problem",
    [
        ("interactions", lambda f: f.with_columns(pl.col("item") + 5000), "item id that items.parquet does not have"),
        ("items", lambda f: f.head(100), "item id that items.parquet does not have"),
        ("items", lambda f: f.with_columns(pl.col("item") + 1), r"item ids of items\.parquet are not 1\.\.3650"),
        ("items", lambda f: f.with_columns(pl.lit(" ").alias("title")), "has no title"),
        ("interactions", lambda f: f.filter(pl.col("split") != "test"), "exactly one test interaction"),
        ("users", lambda f: f.head(5), r"user ids|user id that"),
    ],
)
def test_tables_edited_by_hand_with_their_checksums_updated_are_refused(workdir, table, edit, problem):
    """The checksums catch an accidental change; a deliberate one (or a faulty dataset plugin) must not reach
    training, where an item id past the catalogue crashes inside torch."""
    dataset = preprocess("ml-100k", workdir=workdir, raw_dir=ml_raw())
    file = dataset.path / f"{table}.parquet"
    edit(pl.read_parquet(file)).write_parquet(file)
    manifest = json.loads((dataset.path / "manifest.json").read_text())
    manifest["files"][file.name] = sha256_of(file)
    (dataset.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=rf"is inconsistent: .*({problem}).*Rerun: llamarec preprocess ml-100k"):
        load_dataset(workdir, "ml-100k")


def test_inconsistent_tables_are_never_written(workdir):
    from llamarec_cli.data.artifact import write_dataset
    from llamarec_cli.data.pipeline import Tables

    dataset = preprocess("ml-100k", workdir=workdir, raw_dir=ml_raw())
    before = sha256_of(dataset.path / "items.parquet")
    broken = Tables(dataset.interactions, dataset.items.head(100), dataset.users)
    with pytest.raises(ArtifactError, match="made for dataset 'ml-100k' are inconsistent .*nothing was written"):
        write_dataset(workdir, "ml-100k", broken, dataset.manifest)
    assert sha256_of(dataset.path / "items.parquet") == before  # the previous artifact stands
