"""What a request names and what it is answered, shared by ``serve-shell`` and ``serve``: history entries (titles or
item ids) become items, each entry that names none in one line; a recommendation becomes the JSON both print.

One place for both, so that a title the shell accepts is accepted over HTTP with the same match, and the two JSON
answers cannot drift apart.
"""

from __future__ import annotations

from ..errors import LlamarecError, as_typed
from .recommender import Match, Recommendation, Recommender, normalize


class HistoryError(LlamarecError):
    """A history entry that names no single item: an unknown, ambiguous or unsure title, or an unknown item id."""


def unmatched(match: Match, recommender: Recommender) -> str:
    """The one line for a title that chose no item: what was typed, and what to type instead."""
    name, title = recommender.dataset.name, as_typed(match.query)
    if match.ambiguous:
        titles = list(dict.fromkeys(t for _, t in match.suggestions))
        if len(titles) == 1:  # the very same title more than once in the data (ml-100k has a few): typing cannot help
            items = ", ".join(str(i) for i, _ in match.suggestions)
            return f"Ambiguous title '{title}': {name} has '{titles[0]}' more than once (items {items})."
        return f"Ambiguous title '{title}': {'; '.join(titles)}. Type one exactly as listed."
    if match.suggestions:
        options = "; ".join(t for _, t in match.suggestions)
        return f"Not sure which title '{title}' is. Did you mean: {options}?"
    if not normalize(title):  # no Latin letters or digits: only the title exactly as written could have matched
        return (
            f"No title matches '{title}' in {name}: a title without Latin letters or digits must be typed exactly "
            f"as listed (item id and title) in {recommender.dataset.path / 'items.parquet'}."
        )
    return f"No title like '{title}' in {name}."


def resolve_history(recommender: Recommender, entries: list[str | int]) -> list[int]:
    """The items of a history, oldest first: a string is a title (matched as the shell matches it), an integer the
    item id that answers carry in their ``item`` fields. The first entry that names no single item raises
    HistoryError with its one line."""
    items = []
    for entry in entries:
        if isinstance(entry, int):
            if entry not in recommender.titles:
                known = recommender.titles.keys()
                raise HistoryError(
                    f"No item {entry} in {recommender.dataset.name}: item ids run from {min(known)} to {max(known)}."
                )
            items.append(entry)
            continue
        match = recommender.index.match(entry)
        if match.item is None:
            raise HistoryError(unmatched(match, recommender))
        items.append(match.item)
    return items


def answer_json(recommender: Recommender, rec: Recommendation, *, user: str | None, top: int) -> dict:
    """A recommendation as ``serve-shell --json`` prints it and ``POST /recommend`` returns it: the ranked list cut
    to ``top``, every candidate, the seconds of each stage. Without a ranked list (``--ranker none``, or a request
    with ``"ranker": false``) the ranker, its dtype and α are those of no ranker."""
    ranked = rec.ranked is not None
    result = rec.to_dict()
    result["ranked"] = result["ranked"][:top] if ranked else None
    return {
        "dataset": recommender.dataset.name,
        "user": user,
        "ranker": recommender.ranker_name if ranked else "none",
        "dtype": recommender.dtype if ranked else None,
        "fusion_alpha": rec.alpha,
    } | result
