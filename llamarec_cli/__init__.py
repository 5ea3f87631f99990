"""llamarec: two-stage LLM recommendation (LlamaRec). The public API that plugins import."""

from .config import option
from .data.spec import DatasetSpec, RawFile
from .errors import (
    ArtifactError,
    ConfigError,
    DataFormatError,
    LlamarecError,
    RawDataMissingError,
    UnknownNameError,
)
from .hookspecs import hookimpl
from .version import __version__

# imported on first use (torch, polars): `llamarec --help` and a plugin's import stay fast
_LAZY_API = {
    "Retriever": "retrieval.contract",
    "RetrieverConfig": "retrieval.contract",
    "Dropout": "retrieval.dropout",  # nn.Dropout drawing a quarter of the random numbers: faster on CPU
    "preprocess": "stages.preprocess",  # for a plugin's tests: preprocess(name, workdir=..., raw_dir=...)
    "train_retriever": "stages.retrieve_train",  # train_retriever(dataset, workdir=..., retriever=name)
}


def __getattr__(name):
    if name in _LAZY_API:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY_API[name]}", __name__), name)
    raise AttributeError(f"module 'llamarec_cli' has no attribute {name!r}")


__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataFormatError",
    "DatasetSpec",
    "Dropout",
    "LlamarecError",
    "RawDataMissingError",
    "RawFile",
    "Retriever",
    "RetrieverConfig",
    "UnknownNameError",
    "__version__",
    "hookimpl",
    "option",
    "preprocess",
    "train_retriever",
]
