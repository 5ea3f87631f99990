"""The retriever checkpoint in the work directory (sealed manifests and resume state: ``llamarec_cli/artifacts.py``).

Layout: ``<workdir>/<dataset>/retriever/<name>/`` holds ``model.safetensors`` + ``config.json`` (the best model,
written by ``Retriever.save``) and ``manifest.json`` (dataset checksum, item count, effective config, metrics,
versions). A run trains in ``.<name>.partial/`` beside it (with ``training/``, the resumable state) and is renamed
into place only when complete, so an interrupted run leaves the previous checkpoint as it was.
"""

from __future__ import annotations

from pathlib import Path

from .. import settings
from ..artifacts import read_sealed
from ..errors import ArtifactError
from ..layout import Workdir

FORMAT = "llamarec.retriever"
FORMAT_VERSION = 1


def retriever_dir(workdir: Path, dataset: str, name: str) -> Path:
    return Workdir(workdir).retriever(dataset, name)


def partial_dir(workdir: Path, dataset: str, name: str) -> Path:
    return Workdir.partial(retriever_dir(workdir, dataset, name))


def read_manifest(workdir: Path, dataset, name: str) -> dict:
    """The manifest of a complete checkpoint that matches ``dataset``, or an error that says what to rerun."""
    folder = retriever_dir(workdir, dataset.name, name)
    rerun = settings.command_for(f"llamarec retrieve-train {dataset.name} --retriever {name}", workdir)
    path = folder / "manifest.json"
    if not path.is_file():
        from .. import plugins

        plugins.retrievers().get(name)  # a name nothing registers lists the known ones: retrieve-train would fail
        hint = (
            " (an interrupted run can continue with --resume)"
            if partial_dir(workdir, dataset.name, name).exists()
            else ""
        )
        raise ArtifactError(f"No trained retriever '{name}' for {dataset.name} in {workdir}{hint}. Run first: {rerun}")
    manifest = read_sealed(path, rerun, format=FORMAT, version=FORMAT_VERSION, named=folder)
    try:
        same = manifest["dataset"]["checksum"] == dataset.checksum and manifest["num_items"] == dataset.num_items
    except (KeyError, TypeError):
        raise ArtifactError(f"{path} lacks the dataset it was trained on. Rerun: {rerun}") from None
    if not same:
        raise ArtifactError(
            f"The retriever in {folder} was trained on another version of dataset '{dataset.name}' "
            f"({manifest['num_items']:,} items, checksum {manifest['dataset']['checksum'][:12]}; the dataset now has "
            f"{dataset.num_items:,} items, checksum {dataset.checksum[:12]}). Rerun: {rerun}"
        )
    return manifest
