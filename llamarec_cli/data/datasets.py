"""The paper's three datasets (METHOD.md §2), registered by the built-in plugin like any other dataset."""

from __future__ import annotations

from .readers import read_amazon_ratings, read_amazon_titles, read_movielens_ratings, read_movielens_titles
from .spec import DatasetSpec, RawFile

GROUPLENS = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
SNAP_2014 = "snap.stanford.edu/data/amazon/productGraph/categoryFiles"
UCSD_2018 = (
    "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2",
    "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/metaFiles2",
    "http://deepyeti.ucsd.edu/jianmo/amazon/metaFiles2",
)
AMAZON_LICENCE = "Amazon review data (McAuley lab, UCSD): for research use; cite the dataset papers."


def _snap(name: str) -> tuple[str, ...]:
    return (f"https://{SNAP_2014}/{name}", f"http://{SNAP_2014}/{name}")


def _amazon(name: str, category: str, description: str, *, meta_2018: bool, split_sha256: str) -> DatasetSpec:
    ratings, meta = f"ratings_{category}.csv", f"meta_{category}.json.gz"
    meta_urls = tuple(f"{base}/{meta}" for base in UCSD_2018) if meta_2018 else _snap(meta)
    return DatasetSpec(
        name=name,
        description=description,
        raw_files=(
            RawFile(ratings, urls=_snap(ratings)),
            RawFile(meta, urls=meta_urls, aliases=(meta.removesuffix(".gz"),)),
        ),
        read_interactions=lambda files: read_amazon_ratings(files[ratings]),
        read_titles=lambda files, needed: read_amazon_titles(files[meta], needed, python_literals=not meta_2018),
        source=f"{ratings} (Amazon 2014) + {meta} (Amazon {'2018' if meta_2018 else '2014'})",
        licence=AMAZON_LICENCE,
        retrieval_defaults={"batch_size": 64, "max_len": 50},  # METHOD.md §3
        ranking_defaults={"batch_size": 12},  # METHOD.md §5
        split_sha256=split_sha256,
    )


ML_100K = DatasetSpec(
    name="ml-100k",
    description="MovieLens ml-latest-small (the paper's 'ML-100k')",
    raw_files=(
        RawFile(
            "ratings.csv",
            urls=(GROUPLENS,),
            archive="ml-latest-small.zip",
            sha256="aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
        ),
        RawFile(
            "movies.csv",
            urls=(GROUPLENS,),
            archive="ml-latest-small.zip",
            sha256="5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
        ),
    ),
    read_interactions=lambda files: read_movielens_ratings(files["ratings.csv"]),
    read_titles=lambda files, needed: read_movielens_titles(files["movies.csv"]),
    source="ml-latest-small.zip (GroupLens, release of 2018-09-26)",
    licence="MovieLens (GroupLens): research use; redistribution under the same terms (see its README.txt).",
    retrieval_defaults={"batch_size": 16, "max_len": 200},  # METHOD.md §3
    ranking_defaults={"batch_size": 16},  # METHOD.md §5
)

# The paper's own splits (llamarec-split.json, as the LlamaRec authors published them)
BEAUTY_SPLIT = "b910eaf755935a52333ee261c7a3023aefb2c94a93ef77dc32ff6a81c0a115f2"
GAMES_SPLIT = "d960b60756a8f3160d20b066ea1c9f52365ad10a2377475f4e714cfc8fdde3d6"
BEAUTY = _amazon("beauty", "Beauty", "Amazon 2014 Beauty", meta_2018=False, split_sha256=BEAUTY_SPLIT)
GAMES = _amazon(
    "games",
    "Video_Games",
    "Amazon 2014 Video Games, titles from the 2018 metadata",
    meta_2018=True,
    split_sha256=GAMES_SPLIT,
)

BUILTIN_DATASETS = (ML_100K, BEAUTY, GAMES)
