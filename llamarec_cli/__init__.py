"""llamarec: two-stage LLM recommendation (LlamaRec). The public API that plugins import."""

__version__ = "0.1.0"

from .data.spec import DatasetSpec, RawFile  # noqa: E402
from .errors import (  # noqa: E402
    ArtifactError,
    DataFormatError,
    LlamarecError,
    RawDataMissingError,
    UnknownNameError,
)
from .hookspecs import hookimpl  # noqa: E402

__all__ = [
    "ArtifactError",
    "DataFormatError",
    "DatasetSpec",
    "LlamarecError",
    "RawDataMissingError",
    "RawFile",
    "UnknownNameError",
    "__version__",
    "hookimpl",
]
