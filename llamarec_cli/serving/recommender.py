"""Recommendations for one user or a hand-made history: the retriever's candidates, then the ranker's order.

Loads the dataset, the retriever and the ranker once; ``recommend`` answers in two timed stages (retrieval over
all items, then one verbalizer forward pass). ``recommend_many`` batches requests (left-padded, so each scores as
it would alone). Titles typed by a person are matched forgivingly by ``TitleIndex``.
"""

from __future__ import annotations

import difflib
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import LlamarecError

CANDIDATES = 20  # the retriever's candidates a ranker orders: one letter each, (A) to (T)


@dataclass
class Match:
    query: str
    item: int | None  # None: not sure; see ``suggestions``
    title: str | None = None
    exact: bool = False
    suggestions: list[tuple[int, str]] = field(default_factory=list)
    ambiguous: bool = False  # several titles match equally well: ``suggestions`` lists them all


def normalize(title: str, *, keep_year: bool = False) -> str:
    """Case, accents, punctuation and a trailing year do not matter when a person types a title.

    A title with no Latin letters or digits besides its year (emoji, 東京物語) normalises to '', even with
    ``keep_year``: its bare year would otherwise match any such title of that year."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().casefold()
    words = " ".join(re.sub(r"[^\w\s]", " ", re.sub(r"\(\d{4}\)\s*$", "", text)).split())
    if not words or not keep_year:
        return words
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


class TitleIndex:
    """The title typed, looked up from the strictest key to the most forgiving; else the closest titles, accepted
    when one is clearly closest.

    Strictest first so that what a person types exactly always wins: "The Jungle Book (1994)" is that film, though
    without its year it is also "The Jungle Book (1967)". Each key is coarser than the one before, so the first that
    knows the query decides: one item is the match, several are ambiguous (only a stricter query can tell them apart).
    """

    KEYS = (
        str.strip,  # the title as written
        lambda title: title.strip().casefold(),
        lambda title: normalize(title, keep_year=True),  # "the jungle book 1994", "amelie 2001"
        normalize,  # "the jungle book": any year
    )

    def __init__(self, titles: dict[int, str]):
        self.titles = titles
        self.lookups: list[dict[str, list[int]]] = [{} for _ in self.KEYS]
        for item, title in titles.items():
            for key, lookup in zip(self.KEYS, self.lookups):
                if text := key(title):  # a title that normalises to '' is found only by its own text
                    lookup.setdefault(text, []).append(item)
        self.by_key = self.lookups[-1]
        self.keys = list(self.by_key)

    def match(self, query: str) -> Match:
        for key, lookup in zip(self.KEYS, self.lookups):
            items = lookup.get(key(query), [])  # '' is never a key (see __init__)
            if len(items) == 1:
                return Match(query, items[0], self.titles[items[0]], exact=True)
            if items:  # a remake, or the same title twice in the data: the person chooses
                return Match(query, None, suggestions=[(i, self.titles[i]) for i in items], ambiguous=True)
        key = normalize(query)
        if not key:  # nothing to compare letters with: no close titles, rather than a random one
            return Match(query, None)
        close = difflib.get_close_matches(key, self.keys, n=5, cutoff=0.6)
        prefix = [k for k in self.keys if k.startswith(key)][:5]  # "star wars" -> its episodes
        options = list(dict.fromkeys(close + prefix))
        scored = sorted(((difflib.SequenceMatcher(None, key, k).ratio(), k) for k in options), reverse=True)
        suggestions = [(i, self.titles[i]) for _, k in scored for i in self.by_key[k]][:5]
        if scored and scored[0][0] >= 0.85 and (len(scored) == 1 or scored[0][0] - scored[1][0] >= 0.05):
            best = self.by_key[scored[0][1]]
            if len(best) == 1:
                return Match(query, best[0], self.titles[best[0]], suggestions=suggestions)
        return Match(query, None, suggestions=suggestions)


@dataclass
class Recommendation:
    history: list[tuple[int, str]]  # the most recent items, oldest first
    candidates: list[dict]  # retriever order: item, title, score
    ranked: list[dict] | None  # final order (fused when α is set): item, title, probability, letter
    seconds: dict[str, float]
    alpha: float | None = None  # the fusion weight of the ranker; None: the ranker's order alone

    def to_dict(self) -> dict:
        return {
            "history": [{"item": i, "title": t} for i, t in self.history],
            "candidates": self.candidates,
            "ranked": self.ranked,
            "seconds": self.seconds,
        }


class Recommender:
    def __init__(
        self,
        dataset_name: str,
        *,
        workdir: Path,
        retriever: str | None = None,
        ranker: str = "default",
        adapter: str | None = None,
        model: str | None = None,
        dtype: str | None = None,
        device: str = "auto",
        candidates: int = CANDIDATES,
        fusion: str = "auto",
        templates_dir: Path | None = None,
    ):
        from ..data.artifact import load_dataset
        from ..stages.evaluate import check_served_retriever, load_ranker, ranker_plan
        from ..stages.retrieve_train import load_retriever
        from ..training import resolve_device

        resolve_device(device)  # a bad --device is refused before minutes of loading, with the accepted values
        self.dataset = load_dataset(workdir, dataset_name)
        # α: the weight of the ranker's log-probabilities against the retriever's (ranking/fusion.py); None: ranker only
        retriever, self.alpha, self.alpha_source, trained = ranker_plan(
            workdir, self.dataset, ranker, adapter, retriever, fusion
        )
        self.retriever_name = retriever
        self.retriever, retriever_manifest = load_retriever(workdir, self.dataset, retriever, device)
        if trained:  # retrieval is live here, but a retrained retriever is not the one the ranker learned beside
            weights = retriever_manifest["files"]["model.safetensors"]  # the sha256 load_retriever checked
            check_served_retriever(workdir, self.dataset, retriever, weights, ranker, trained)
        self.device = next(self.retriever.parameters()).device
        self.k = candidates
        self.titles = self.dataset.titles
        self.index = TitleIndex(self.titles)
        full = self.dataset.interactions.group_by("user", maintain_order=True).agg("item")
        self.histories = dict(zip(full["user"].to_list(), full["item"].to_list()))
        self.llm = self.encoder = self.dtype = None
        self.ranker_name, self.dtype_reason = "none", ""
        if ranker != "none":
            loaded = load_ranker(
                self.dataset,
                workdir,
                ranker=ranker,
                adapter=adapter,
                model=model,
                dtype=dtype,
                device=device,
                templates_dir=templates_dir,  # where a ranker trained with --templates-dir finds its template
            )
            self.llm, self.encoder, self.ranker_name = loaded.model, loaded.encoder, loaded.description
            self.dtype, self.dtype_reason = loaded.dtype, loaded.dtype_reason
            self.encoder.verbalizer.ids(candidates)  # more candidates than letters: refused now, not per request

    def notes(self) -> list[str]:
        """What a person starting a server or shell should know about how it will rank: the dtype chosen, and
        whether the ranker's scores are fused with the retriever's."""
        lines = [self.dtype_reason] if self.dtype_reason else []
        if self.ranker_name != "none":
            fused = f"α = {self.alpha:g}" if self.alpha is not None else "off"
            lines.append(f"Fusion with the retriever's scores: {fused} ({self.alpha_source}).")
        return lines

    def user_history(self, user: str) -> list[int]:
        """By the dataset's original user id, or else the internal number."""
        return self.histories[self.dataset.require_user(user)]

    def recommend(self, history: list[int]) -> Recommendation:
        return self.recommend_many([history])[0]

    @torch.no_grad()
    def recommend_many(
        self, histories: list[list[int]], batch_size: int = 8, *, rank: bool = True
    ) -> list[Recommendation]:
        """One retrieval over all ``histories``, then (with a ranker, unless ``rank`` is False) their prompts in
        left-padded forward passes of up to ``batch_size``. Each stage's seconds are shared out over the requests."""
        from ..ranking.fusion import fuse, order
        from ..ranking.prompts import Example
        from ..ranking.scoring import pass_token_cap, score_examples
        from ..retrieval.data import EvalSet
        from ..retrieval.evaluate import top_k

        if any(not h for h in histories):
            raise LlamarecError("A history needs at least one item.")
        began = time.perf_counter()
        data = EvalSet("serve", list(range(len(histories))), histories, [0] * len(histories))
        items, scores, _ = top_k(self.retriever, data, self.device, self.k)
        retrieval = time.perf_counter() - began
        lists = [
            [(i, s) for i, s in zip(row.tolist(), values.tolist()) if s != float("-inf")]
            for row, values in zip(items, scores)
        ]
        ranked_scores = None
        ranking = 0.0
        if self.llm is not None and rank:
            began = time.perf_counter()
            examples = [Example(h, [i for i, _ in c], None, None, [s for _, s in c]) for h, c in zip(histories, lists)]
            # A server keeps training's 1,024-token passes on a CPU: with 4,096, the RSS of a load test at
            # concurrency 16 grew with each repeat (1.27 -> 1.53 GiB over three), as it did not before.
            cap = pass_token_cap(next(self.llm.parameters()).device)
            ranked_scores = score_examples(self.llm, self.encoder, examples, batch_size=batch_size, tokens_per_pass=cap)
            ranking = time.perf_counter() - began
        results = []
        for n, (history, candidates) in enumerate(zip(histories, lists)):
            shown = history[-(self.encoder.template.history_length if self.encoder else 20) :]
            ranked = None
            if ranked_scores is not None:
                alpha = 1.0 if self.alpha is None else self.alpha
                final = fuse(ranked_scores[n], examples[n].retriever_scores, alpha)
                probs = torch.softmax(final, dim=-1)
                letters = self.encoder.verbalizer.letters
                ranked = [
                    {
                        "item": candidates[j][0],
                        "title": self.titles[candidates[j][0]],
                        "probability": float(probs[j]),
                        "letter": letters[j],
                    }
                    for j in order(final)
                ]
            results.append(
                Recommendation(
                    history=[(i, self.titles[i]) for i in shown],
                    candidates=[{"item": i, "title": self.titles[i], "score": s} for i, s in candidates],
                    ranked=ranked,
                    seconds={"retrieval": retrieval / len(histories), "ranking": ranking / len(histories)},
                    alpha=self.alpha if ranked is not None else None,
                )
            )
        return results
