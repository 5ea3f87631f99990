"""llamarec: two-stage LLM recommendation (LlamaRec). The public API that plugins import."""

__version__ = "0.1.0"

from .data.spec import DatasetSpec, RawFile  # noqa: E402
from .errors import (  # noqa: E402
    ArtifactError,
    ConfigError,
    DataFormatError,
    LlamarecError,
    RawDataMissingError,
    UnknownNameError,
)
from .hookspecs import hookimpl  # noqa: E402

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
