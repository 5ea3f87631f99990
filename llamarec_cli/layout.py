"""Where each artifact lives in a work directory, and how far each got: the one place the layout is spelled.

    <workdir>/<dataset>/
      dataset/                                  preprocess
      retriever/<name>/                         retrieve-train (in .<name>.partial/ while it trains)
      candidates/<retriever>.parquet, .json     candidates
      ranker/<name>/                            rank-train (in .<name>.partial/ while it trains)
      reports/evaluate-<name>.json, .md         evaluate

A training run works in the partial folder beside its artifact: ``run.json`` (its config) from the start, and from its
first validation on ``training/state.safetensors``, what ``--resume`` continues. Whether a present artifact still
matches its inputs (the dataset's checksum, the retriever's weights) is for the stage that loads it to say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from .errors import ConfigError

STATE_FILE = "state.safetensors"  # the resumable training state, in <partial>/training/: retriever and ranker
MANIFEST = "manifest.json"
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def plain(kind: str, name: str) -> str:
    """``name`` if it can name a folder in the work directory and nothing outside it; refused otherwise."""
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name):
        raise ConfigError(
            f"A {kind} name is letters, digits, '.', '_' and '-', starting with a letter or digit; got '{name}'."
        )
    return name


class Status(StrEnum):
    DONE = "done"  # the artifact is there (its manifest was written last)
    RESUMABLE = "resumable"  # not there, but an interrupted run saved state to continue from
    MISSING = "missing"


@dataclass(frozen=True)
class Workdir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))  # library callers may pass a string

    def dataset(self, dataset: str) -> Path:
        return self.root / plain("dataset", dataset) / "dataset"

    def retriever(self, dataset: str, name: str) -> Path:
        return self.root / plain("dataset", dataset) / "retriever" / plain("retriever", name)

    def candidates(self, dataset: str, retriever: str) -> tuple[Path, Path]:
        """The candidates table and its metadata."""
        folder = self.root / plain("dataset", dataset) / "candidates"
        plain("retriever", retriever)
        return folder / f"{retriever}.parquet", folder / f"{retriever}.json"

    def ranker(self, dataset: str, name: str) -> Path:
        if name == "none":  # what --ranker none means to evaluate, serve and serve-shell: no ranker
            raise ConfigError(
                "'none' is no ranker's name: --ranker none means the retriever alone. Give a trained ranker's name "
                "(rank-train --name), or choose another."
            )
        return self.root / plain("dataset", dataset) / "ranker" / plain("ranker", name)

    def reports(self, dataset: str) -> Path:
        return self.root / plain("dataset", dataset) / "reports"

    @staticmethod
    def partial(artifact: Path) -> Path:
        """The folder a training run works in before its artifact is renamed into place."""
        return artifact.with_name(f".{artifact.name}.partial")

    @staticmethod
    def training(partial: Path) -> Path:
        """The folder of a run's resumable state (dropped when the run finishes)."""
        return partial / "training"

    @staticmethod
    def state(partial: Path) -> Path:
        return Workdir.training(partial) / STATE_FILE

    def resumable(self, artifact: Path) -> bool:
        """Whether an interrupted run of ``artifact`` saved state that ``--resume`` can continue."""
        return self.state(self.partial(artifact)).is_file()

    def status(self, artifact: Path) -> Status:
        if (artifact / MANIFEST).is_file():
            return Status.DONE
        return Status.RESUMABLE if self.resumable(artifact) else Status.MISSING
