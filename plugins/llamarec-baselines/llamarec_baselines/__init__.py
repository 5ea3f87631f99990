"""SASRec, BERT4Rec and NARM as llamarec retrievers: the baselines of the LlamaRec paper (Yue et al. 2023, Table 1).

Installing this distribution registers them through the ``llamarec`` entry point (see :mod:`.plugin`), so that
``llamarec retrieve-train ml-100k --retriever sasrec`` works like the built-in ``lrurec``.

The model classes load on first use (``from llamarec_baselines import SASRec``): llamarec loads every plugin at
start-up, and commands that train nothing should not pay for importing torch.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

_MODULES = {
    "SASRec": "sasrec",
    "SASRecConfig": "sasrec",
    "BERT4Rec": "bert4rec",
    "BERT4RecConfig": "bert4rec",
    "NARM": "narm",
    "NARMConfig": "narm",
}

__all__ = [*_MODULES, "__version__"]


def __getattr__(name: str):
    if name in _MODULES:
        return getattr(import_module(f".{_MODULES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
