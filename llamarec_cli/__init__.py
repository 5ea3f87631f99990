"""llamarec: two-stage LLM recommendation (LlamaRec). The public API that plugins import."""

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

_TORCH_API = {"Retriever", "RetrieverConfig", "option"}  # imported on first use: `llamarec --help` stays fast


def __getattr__(name):
    if name in _TORCH_API:
        from .retrieval import contract

        return getattr(contract, name)
    raise AttributeError(f"module 'llamarec_cli' has no attribute {name!r}")


__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataFormatError",
    "DatasetSpec",
    "LlamarecError",
    "RawDataMissingError",
    "RawFile",
    "Retriever",
    "RetrieverConfig",
    "UnknownNameError",
    "__version__",
    "hookimpl",
    "option",
]
