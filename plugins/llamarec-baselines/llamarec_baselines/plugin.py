"""The llamarec plugin: registers the three baseline retrievers by name."""

from __future__ import annotations

from llamarec_cli import hookimpl


@hookimpl
def register_retrievers(register):
    from .bert4rec import BERT4Rec
    from .narm import NARM
    from .sasrec import SASRec

    register("sasrec", SASRec)
    register("bert4rec", BERT4Rec)
    register("narm", NARM)
