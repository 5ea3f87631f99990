"""Benchmark: ``llamarec preprocess beauty`` on a synthetic Amazon-2014 dataset of 10 million ratings.

What it measures: the wall-clock time and the peak resident memory of the whole command, end to end (start-up,
reading the ratings CSV, the title filter, the iterative 5-core, the metadata scan, the split, writing and
re-reading the Parquet artifact), in a fresh subprocess per run, so the memory is that of preprocessing alone.
The targets are under 60 s and under 4 GiB on a 2-core machine.

The input is generated first (not timed) in the 2014 format of ``ratings_Beauty.csv`` and
``meta_Beauty.json.gz``, scaled up from the real Beauty files (2.02M ratings, 1.21M users, 249k items): user
activity and item popularity follow truncated power laws, so the iterative 5-core keeps a non-trivial dataset.
Generated files are kept in ``--data-dir`` (by default a folder under the system temp dir named after the
generation parameters) and reused by later runs with the same parameters.

Run (from the repository root, with the project's virtual environment)::

    .venv/bin/python benchmarks/preprocess.py                # 10M ratings, 3 runs
    .venv/bin/python benchmarks/preprocess.py --interactions 1000000 --repeats 1   # a quick check

Results go to ``benchmarks/results/preprocess.json`` and ``benchmarks/results/preprocess.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gzip
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import psutil

from llamarec_cli import precision

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DATASET = "beauty"
RATINGS_FILE = "ratings_Beauty.csv"
META_FILE = "meta_Beauty.json.gz"
STAMP_FILE = "generated.json"
GENERATOR_VERSION = 1  # bump when the generated content changes, so old data folders are not reused

TARGET_SECONDS = 60.0
TARGET_MIB = 4096.0
DISTURBED = 0.1  # a run during which other processes or the hypervisor took this share of the machine's CPU

ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DAY = 86_400
FIRST_DAY = dt.date(2000, 6, 1)  # the span of the 2014 Amazon ratings
LAST_DAY = dt.date(2014, 7, 23)


# --- parameters ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GenParams:
    """Everything that determines the generated files (the data folder is reused only if all of it matches)."""

    interactions: int
    users: int  # target number of distinct users (the real Beauty file has 0.6 per rating)
    items: int  # target number of distinct items (0.12 per rating)
    user_exponent: float | None  # None: solved so that the users' mean activity gives ``users``
    item_exponent: float | None
    user_cap: int  # most ratings of one user
    item_cap: int  # most ratings of one item
    seed: int
    version: int = GENERATOR_VERSION

    def key(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interactions", type=int, default=10_000_000, help="ratings to generate")
    parser.add_argument("--users", type=int, help="distinct users to aim for [default: 0.6 per rating]")
    parser.add_argument("--items", type=int, help="distinct items to aim for [default: 0.12 per rating]")
    parser.add_argument(
        "--user-exponent", type=float, help="power-law exponent of user activity [default: solved from --users]"
    )
    parser.add_argument(
        "--item-exponent", type=float, help="power-law exponent of item popularity [default: solved from --items]"
    )
    parser.add_argument("--user-cap", type=int, help="most ratings of one user [default: 0.01%% of all]")
    parser.add_argument("--item-cap", type=int, help="most ratings of one item [default: 0.4%% of all]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="measured runs; the median time is reported")
    parser.add_argument("--data-dir", type=Path, help="where the generated raw files are (or go)")
    parser.add_argument(
        "--llamarec",
        default=str(Path(sys.executable).parent / "llamarec"),
        help="the llamarec executable [default: the one beside this Python]",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for preprocess.json / .md")
    return parser.parse_args(argv)


def gen_params(args: argparse.Namespace) -> GenParams:
    n = args.interactions
    return GenParams(
        interactions=n,
        users=args.users or round(n * 0.6),
        items=args.items or round(n * 0.12),
        user_exponent=args.user_exponent,
        item_exponent=args.item_exponent,
        user_cap=args.user_cap or max(20, n // 10_000),
        item_cap=args.item_cap or max(50, n // 250),
        seed=args.seed,
    )


# --- ratings ---------------------------------------------------------------------------------------------------


def _truncated_zeta(exponent: float, cap: int) -> np.ndarray:
    """P(k) proportional to k^-exponent for k = 1..cap."""
    weights = np.arange(1, cap + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def exponent_for_mean(mean: float, cap: int) -> float:
    """The exponent whose truncated power law on 1..cap has this mean (bisection; the mean falls as it grows)."""
    ks = np.arange(1, cap + 1, dtype=np.float64)
    lo, hi = 1.0001, 8.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (ks * _truncated_zeta(mid, cap)).sum() > mean:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def power_law_degrees(rng: np.random.Generator, total: int, exponent: float, cap: int) -> np.ndarray:
    """Degrees drawn from the truncated power law until they add up to exactly ``total``."""
    pmf = _truncated_zeta(exponent, cap)
    mean = (np.arange(1, cap + 1) * pmf).sum()
    degrees = np.empty(0, dtype=np.int64)
    while degrees.sum() < total:
        draw = rng.choice(np.arange(1, cap + 1), size=int(total / mean * 1.05) + 100, p=pmf)
        degrees = np.concatenate([degrees, draw])
    cumulative = np.cumsum(degrees)
    last = int(np.searchsorted(cumulative, total))
    degrees = degrees[: last + 1].copy()
    degrees[-1] -= cumulative[last] - total
    return degrees[degrees > 0]


def pair_users_items(rng: np.random.Generator, user_deg: np.ndarray, item_deg: np.ndarray):
    """Match user and item "slots" at random (a bipartite configuration model) with no repeated (user, item).

    Returns user and item indices sorted by user. The items of repeated pairs are shuffled together with as many
    random other slots, which keeps every degree; a few rounds remove all repeats.
    """
    users = np.repeat(np.arange(user_deg.size, dtype=np.int64), user_deg)
    items = np.repeat(np.arange(item_deg.size, dtype=np.int64), item_deg)
    rng.shuffle(items)
    for _ in range(100):
        _, first = np.unique(users * item_deg.size + items, return_index=True)
        repeated = np.setdiff1d(np.arange(users.size), first, assume_unique=True)
        if repeated.size == 0:
            return users, items
        mixed = np.union1d(repeated, rng.integers(0, users.size, repeated.size))
        items[mixed] = rng.permutation(items[mixed])
    raise RuntimeError("could not remove repeated (user, item) pairs; lower the caps")


def sample_days(rng: np.random.Generator, users: np.ndarray, user_deg: np.ndarray) -> np.ndarray:
    """Day numbers (since 1970) per rating: recent years weigh more, and a user often rates several on one day."""
    first, last = (d.toordinal() - dt.date(1970, 1, 1).toordinal() for d in (FIRST_DAY, LAST_DAY))
    latest = last - rng.exponential(500, user_deg.size).astype(np.int64)  # each user's last rating
    same_day = rng.random(users.size) < 0.4
    gaps = np.where(same_day, 0, rng.geometric(1 / 120, users.size))
    starts = np.concatenate([[0], np.cumsum(user_deg)[:-1]])
    cumulative = np.cumsum(gaps)
    back = cumulative - cumulative[starts][users]  # days before the user's latest rating
    return np.clip(latest[users] - back, first, last)


def random_codes(rng: np.random.Generator, n: int, prefix: str, length: int, alphabet: str) -> np.ndarray:
    """``n`` distinct codes ``prefix`` + ``length`` random characters, in random order (numpy bytes)."""
    letters = np.frombuffer(alphabet.encode(), dtype=np.uint8)
    head = np.frombuffer(prefix.encode(), dtype=np.uint8)
    width = len(prefix) + length
    codes = np.empty(0, dtype=f"S{width}")
    while codes.size < n:
        m = n - codes.size + 1000
        body = letters[rng.integers(0, letters.size, (m, length), dtype=np.uint8)]
        raw = np.concatenate([np.broadcast_to(head, (m, head.size)), body], axis=1)
        codes = np.unique(np.concatenate([codes, np.ascontiguousarray(raw).view(f"S{width}").ravel()]))
    return rng.permutation(codes)[:n]


def make_asins(rng: np.random.Generator, n: int) -> list[str]:
    """Mostly 'B00' + 7 characters; 2% ISBN-like (ten digits, leading zeros kept as text), as in the real file."""
    books = int(n * 0.02)
    codes = np.concatenate(
        [
            random_codes(rng, n - books, "B00", 7, ALNUM),
            random_codes(rng, books, "", 10, "0123456789").astype("S10"),
        ]
    )
    return rng.permutation(codes).astype(str).tolist()


def write_ratings(
    path: Path,
    rng: np.random.Generator,
    user_ids: pl.Series,
    asins: pl.Series,
    users: np.ndarray,
    items: np.ndarray,
    days: np.ndarray,
    chunk: int = 1_000_000,
) -> None:
    """``user,asin,rating,unixtime`` lines, no header, in random order."""
    order = rng.permutation(users.size)
    stars = rng.choice(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), size=users.size, p=[0.07, 0.05, 0.09, 0.19, 0.60])
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as out:
        for start in range(0, users.size, chunk):
            rows = order[start : start + chunk]
            pl.DataFrame(
                {
                    "user": user_ids.gather(users[rows]),
                    "asin": asins.gather(items[rows]),
                    "rating": stars[rows],
                    "time": days[rows] * DAY,
                }
            ).write_csv(out, include_header=False)
    tmp.replace(path)


# --- metadata --------------------------------------------------------------------------------------------------

BRANDS = [
    "L'Oreal Paris",
    "Burt's Bees",
    "Neutrogena",
    "Olay",
    "Maybelline New York",
    "Revlon",
    "Aveeno",
    "CeraVe",
    "Bath &amp; Body Works",
    "Crabtree &amp; Evelyn",
    "Dolce &amp; Gabbana",
    "Johnson's",
    "Victoria's Secret",
    "Lanc\u00f4me",
    "Clinique",
    "Nivea",
    "Dove",
    "Garnier",
    "Essie",
    "OPI",
    "Philips",
    "Conair",
    "Remington",
    "Paul Mitchell",
    "Pantene",
    "Herbal Essences",
    "St. Ives",
    "Yes To",
    "Physicians Formula",
    "e.l.f.",
    "NYX",
    "Urban Decay",
    "Too Faced",
    "Benefit",
    "Tarte",
    "Bobbi Brown",
    "Est\u00e9e Lauder",
    "Kiehl's",
    "Dr. Bronner's",
    "Mario Badescu",
    "Derma E",
    "Acure",
    "Aura Cacia",
    "Now Foods",
    "Jason",
    "Alba Botanica",
]
LINES = [
    "Ultra",
    "Advanced",
    "Daily",
    "Intensive",
    "Pure",
    "Natural",
    "Organic",
    "Hydrating",
    "Revitalift",
    "Age Defying",
    "Sensitive",
    "Professional",
    "Classic",
    "Ultimate",
    "Radiant",
    "Smooth",
    "Fresh",
    "Gentle",
]
PRODUCTS = [
    "Lip Balm",
    "Moisturizer",
    "Face Wash",
    "Night Cream",
    "Eye Cream",
    "Shampoo",
    "Conditioner",
    "Body Lotion",
    "Nail Polish",
    "Mascara",
    "Eyeliner",
    "Foundation",
    "Concealer",
    "Serum",
    "Toner",
    "Hair Dryer",
    "Flat Iron",
    "Makeup Brush Set",
    "Bath Salts",
    "Body Wash",
    "Hand Cream",
    "Sunscreen SPF 30",
    'Soap, "Magic" Formula',
    "Eau de Parfum Spray",
    "Cleansing Oil",
    "Exfoliating Scrub",
    "Face Mask",
]
SIZES = ["0.15 Ounce", "1.7 Fl Oz", "8 Ounce", "16 Fl Oz", "2 Count", "Pack of 3", "1 Ounce", "3.4 oz", "100ml"]
CATEGORIES = [
    ["Beauty", "Skin Care", "Face"],
    ["Beauty", "Skin Care", "Body"],
    ["Beauty", "Makeup", "Eyes"],
    ["Beauty", "Makeup", "Face"],
    ["Beauty", "Makeup", "Lips"],
    ["Beauty", "Hair Care", "Shampoos"],
    ["Beauty", "Hair Care", "Styling Tools"],
    ["Beauty", "Fragrance", "Women's"],
    ["Beauty", "Fragrance", "Men's"],
    ["Beauty", "Tools & Accessories", "Makeup Brushes & Tools"],
    ["Beauty", "Bath & Body", "Bath"],
    ["Beauty", "Skin Care", "Sun"],
    ["Beauty", "Skin Care", "Eyes"],
]
WORDS = (
    "the a and of to for with your skin hair formula gentle daily use moisture natural oil vitamin e "
    "extract long lasting color lightweight non-greasy absorbs quickly leaves soft smooth fresh scent "
    "dermatologist tested paraben free cruelty all types dry sensitive protect restore shine volume "
    "clean rinse apply evenly morning night results visible weeks"
).split()


def make_titles(rng: np.random.Generator, n: int) -> list[str | None]:
    """Product titles; 2% missing (None: no key), 1% empty or blank, the rest non-empty."""
    parts = [rng.integers(0, len(table), n) for table in (BRANDS, LINES, PRODUCTS, SIZES)]
    fate = rng.random(n)
    titles: list[str | None] = []
    for i, (b, ln, p, s) in enumerate(zip(*(part.tolist() for part in parts))):
        if fate[i] < 0.02:
            titles.append(None)
        elif fate[i] < 0.03:
            titles.append("" if fate[i] < 0.025 else "   ")
        else:
            titles.append(f"{BRANDS[b]} {LINES[ln]} {PRODUCTS[p]}, {SIZES[s]}")
    return titles


def description_pool(rng: np.random.Generator, size: int = 20_000) -> list[str]:
    lengths = rng.integers(10, 45, size)
    words = rng.integers(0, len(WORDS), int(lengths.sum()))
    pool, at = [], 0
    for length in lengths.tolist():
        text = " ".join(WORDS[w] for w in words[at : at + length].tolist())
        pool.append(text[0].upper() + text[1:] + ".")
        at += length
    return pool


def write_meta(
    path: Path, rng: np.random.Generator, asins: list[str], item_slots: np.ndarray, chunk: int = 50_000
) -> dict:
    """One ``repr(dict)`` per item, asin first, gzipped; related items are drawn by popularity."""
    n = len(asins)
    titles = make_titles(rng, n)
    descriptions = description_pool(rng)
    tmp = path.with_name(path.name + ".part")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as out:
        for start in range(0, n, chunk):
            ids = range(start, min(start + chunk, n))
            m = len(ids)
            bought = rng.integers(0, 21, m)
            viewed = rng.integers(0, 11, m)
            related = item_slots[rng.integers(0, item_slots.size, sum(bought) + sum(viewed))].tolist()
            bought, viewed = bought.tolist(), viewed.tolist()
            desc = rng.integers(0, len(descriptions) * 6 // 5, m).tolist()  # about 1 in 6 has none
            price = np.round(rng.lognormal(2.5, 0.9, m), 2).tolist()
            has_price = (rng.random(m) < 0.75).tolist()
            rank = rng.integers(1, 400_000, m).tolist()
            category = rng.integers(0, len(CATEGORIES), m).tolist()
            image = random_codes(rng, m, "", 11, ALNUM + "abcdefghijklmnopqrstuvwxyz").astype(str).tolist()
            lines, at = [], 0
            for j, item in enumerate(ids):
                record: dict = {"asin": asins[item]}
                if desc[j] < len(descriptions):
                    record["description"] = descriptions[desc[j]]
                if titles[item] is not None:
                    record["title"] = titles[item]
                if has_price[j]:
                    record["price"] = price[j]
                record["imUrl"] = f"http://ecx.images-amazon.com/images/I/{image[j]}._SY300_.jpg"
                also = related[at : at + bought[j] + viewed[j]]
                at += bought[j] + viewed[j]
                record["related"] = {
                    "also_bought": [asins[k] for k in also[: bought[j]]],
                    "also_viewed": [asins[k] for k in also[bought[j] :]],
                }
                record["salesRank"] = {"Beauty": rank[j]}
                record["categories"] = [CATEGORIES[category[j]]]
                lines.append(repr(record))
            out.write("\n".join(lines) + "\n")
    tmp.replace(path)
    return {
        "items": n,
        "missing_title": sum(t is None for t in titles),
        "empty_title": sum(t is not None and not t.strip() for t in titles),
    }


# --- generation ------------------------------------------------------------------------------------------------


def default_data_dir(params: GenParams) -> Path:
    return Path(tempfile.gettempdir()) / f"llamarec-bench-{DATASET}-{params.interactions}-{params.key()}"


def generate(data_dir: Path, params: GenParams) -> dict:
    """Write the raw files into ``data_dir`` unless they are there for the same parameters; return their stats."""
    stamp = data_dir / STAMP_FILE
    if stamp.is_file() and (data_dir / RATINGS_FILE).is_file() and (data_dir / META_FILE).is_file():
        saved = json.loads(stamp.read_text())
        if saved.get("params") == dataclasses.asdict(params):
            print(f"Reusing generated data in {data_dir}")
            return saved["stats"]
    data_dir.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    began = time.perf_counter()
    rng = np.random.default_rng(params.seed)
    n = params.interactions
    user_exponent = params.user_exponent or exponent_for_mean(n / params.users, params.user_cap)
    item_exponent = params.item_exponent or exponent_for_mean(n / params.items, params.item_cap)
    user_deg = power_law_degrees(rng, n, user_exponent, params.user_cap)
    item_deg = power_law_degrees(rng, n, item_exponent, params.item_cap)
    print(f"Generating {n:,} ratings by {user_deg.size:,} users of {item_deg.size:,} items into {data_dir}")
    users, items = pair_users_items(rng, user_deg, item_deg)
    days = sample_days(rng, users, user_deg)
    user_ids = pl.Series(random_codes(rng, user_deg.size, "A", 13, ALNUM).astype(str))
    asins = make_asins(rng, item_deg.size)
    write_ratings(data_dir / RATINGS_FILE, rng, user_ids, pl.Series(asins), users, items, days)
    meta = write_meta(data_dir / META_FILE, rng, asins, items)
    stats = {
        "interactions": int(users.size),
        "users": int(user_deg.size),
        "items": int(item_deg.size),
        "user_exponent": round(user_exponent, 4),
        "item_exponent": round(item_exponent, 4),
        "users_with_5_or_more": int((user_deg >= 5).sum()),
        "items_with_5_or_more": int((item_deg >= 5).sum()),
        "max_user_ratings": int(user_deg.max()),
        "max_item_ratings": int(item_deg.max()),
        "distinct_days": int(np.unique(days).size),
        "meta_items_without_title_key": meta["missing_title"],
        "meta_items_with_empty_title": meta["empty_title"],
        "ratings_bytes": (data_dir / RATINGS_FILE).stat().st_size,
        "meta_gz_bytes": (data_dir / META_FILE).stat().st_size,
        "generation_seconds": round(time.perf_counter() - began, 1),
    }
    stamp.write_text(json.dumps({"params": dataclasses.asdict(params), "stats": stats}, indent=2) + "\n")
    return stats


# --- measurement -----------------------------------------------------------------------------------------------


def child_env(cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAREC_")}
    env.update(LLAMAREC_OFFLINE="1", LLAMAREC_CACHE_DIR=str(cache_dir))
    return env


def cpu_counters() -> tuple[float, float] | None:
    """Machine-wide busy and stolen CPU seconds so far, to tell a run disturbed by other work."""
    times = psutil.cpu_times()
    busy = times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
    return busy, getattr(times, "steal", 0.0)


def descendants(root: int) -> set[int]:
    """``root`` and all its descendants alive now."""
    try:
        process = psutil.Process(root)
        return {root} | {child.pid for child in process.children(recursive=True)}
    except psutil.Error:  # the process ended meanwhile
        return set()


def rss_kib(pids: set[int]) -> int:
    """Summed resident memory of ``pids`` now (KiB); processes that ended count 0."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return total // 1024


class TreeMemory(threading.Thread):
    """Samples the summed RSS of a process tree: the worker processes a run starts add to its own peak.

    The RSS of the known processes is read every ``every`` seconds; the tree itself is rescanned every
    ``rescan`` samples (a scan of /proc costs a few ms of CPU, which would otherwise disturb a 2-core machine).
    """

    def __init__(self, pid: int, every: float = 0.05, rescan: int = 10):
        super().__init__(daemon=True)
        self.pid, self.every, self.rescan = pid, every, rescan
        self.peak_kib, self.done = 0, threading.Event()

    def run(self) -> None:
        tree, tick = {self.pid}, 0
        while not self.done.wait(self.every):
            if tick % self.rescan == 0:
                tree = descendants(self.pid) or tree
            tick += 1
            self.peak_kib = max(self.peak_kib, rss_kib(tree))


def run_once(llamarec: str, data_dir: Path) -> dict:
    """One ``llamarec preprocess`` in a fresh process: wall time, peak memory and its output.

    Peak memory is measured twice: exactly for the largest single process (``wait4``'s ru_maxrss, which covers
    the child and the processes it waited for, as a maximum, not a sum), and by sampling the sum over the whole
    process tree every 50 ms (it can miss a spike shorter than that, and counts shared pages once per process).
    CPU time that other processes used meanwhile is reported, to flag runs disturbed by other work on the machine.
    """
    with tempfile.TemporaryDirectory(prefix="llamarec-bench-run-") as tmp:
        tmp = Path(tmp)
        command = [
            llamarec,
            "preprocess",
            DATASET,
            "--raw-dir",
            str(data_dir),
            "--workdir",
            str(tmp / "work"),
            "--json",
        ]
        with open(tmp / "stdout", "w+") as out, open(tmp / "stderr", "w+") as err:
            counters, own = cpu_counters(), os.times()
            began = time.perf_counter()
            child = subprocess.Popen(command, stdout=out, stderr=err, env=child_env(tmp / "cache"))
            sampler = TreeMemory(child.pid)
            sampler.start()
            _, status, usage = os.wait4(child.pid, 0)
            seconds = time.perf_counter() - began
            sampler.done.set()
            sampler.join()
            after, own_after = cpu_counters(), os.times()
            child.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if child.returncode != 0:
            raise SystemExit(f"{shlex.join(command)} failed ({child.returncode}):\n{stderr[-4000:]}")
        manifest = json.loads((tmp / "work" / DATASET / "dataset" / "manifest.json").read_text())
    cpu = usage.ru_utime + usage.ru_stime
    busy, stolen = (after[0] - counters[0], after[1] - counters[1]) if counters and after else (None, None)
    if busy is not None:  # what this benchmark's own process (and its memory sampler) used is not "other"
        busy -= (own_after.user - own.user) + (own_after.system - own.system)
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # KiB on Linux; the largest single process
        "peak_tree_rss_mib": round(sampler.peak_kib / 1024, 1),  # the child and its workers together, sampled
        "cpu_seconds": round(cpu, 2),
        # CPU seconds that other processes used during the run, and that the hypervisor took (steal)
        "other_cpu_seconds": None if busy is None else round(max(busy - cpu, 0.0), 1),
        "stolen_cpu_seconds": None if stolen is None else round(stolen, 1),
        "disturbed": busy is not None and max(busy - cpu, stolen) > DISTURBED * seconds * nproc(),
        "output": json.loads(stdout),
        "versions": manifest["versions"],
    }


# --- reporting -------------------------------------------------------------------------------------------------


def memory_gib() -> float:
    return round(psutil.virtual_memory().total / 2**30, 1)


def git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "llamarec_cli"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        return head + ("+uncommitted changes in llamarec_cli" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def nproc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_info(versions: dict, revision: str) -> dict:
    return {
        "nproc": nproc(),
        "cpu_model": precision.cpu_model(),
        "memory_gib": memory_gib(),
        "os": platform.platform(),
        "python": versions.get("python"),
        "polars": versions.get("polars"),
        "llamarec": versions.get("llamarec"),
        "llamarec_revision": revision,
    }


def reproduce_command(args: argparse.Namespace) -> str:
    python = os.path.relpath(sys.executable, REPO) if Path(sys.executable).is_relative_to(REPO) else sys.executable
    parts = [
        python,
        "benchmarks/preprocess.py",
        "--interactions",
        str(args.interactions),
        "--repeats",
        str(args.repeats),
        "--seed",
        str(args.seed),
    ]
    for flag in ("users", "items", "user_exponent", "item_exponent", "user_cap", "item_cap"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return shlex.join(parts)


def summarize(args, params: GenParams, data_stats: dict, runs: list[dict], revision: str) -> dict:
    seconds = statistics.median(r["seconds"] for r in runs)
    quiet = [r["seconds"] for r in runs if not r["disturbed"]]
    peak = max(max(r["peak_rss_mib"], r["peak_tree_rss_mib"]) for r in runs)  # the larger of the two measures
    output = runs[-1]["output"]
    return {
        "benchmark": f"llamarec preprocess {DATASET} (synthetic Amazon 2014 data)",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "reproduce": reproduce_command(args),
        "command": f"llamarec preprocess {DATASET} --raw-dir DATA --workdir TMP --json"
        " (env LLAMAREC_OFFLINE=1 LLAMAREC_CACHE_DIR=TMP)",
        "parameters": {**dataclasses.asdict(params), "repeats": args.repeats},
        "generated_data": data_stats,
        "runs": [{k: v for k, v in r.items() if k not in ("output", "versions")} for r in runs],
        "median_seconds": seconds,
        "min_seconds": min(r["seconds"] for r in runs),  # the least disturbed run, for comparison
        "median_undisturbed_seconds": statistics.median(quiet) if quiet else None,
        "peak_rss_mib": peak,
        "peak_single_process_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "peak_tree_rss_mib": max(r["peak_tree_rss_mib"] for r in runs),
        "statistics": {k: output[k] for k in ("users", "items", "interactions", "avg_length", "density")},
        "targets": {
            "seconds": {"target": TARGET_SECONDS, "measured": seconds, "met": seconds < TARGET_SECONDS},
            "peak_rss_mib": {"target": TARGET_MIB, "measured": peak, "met": peak < TARGET_MIB},
        },
        "machine": machine_info(runs[-1]["versions"], revision),
    }


def markdown(result: dict) -> str:
    t, m, s, g = result["targets"], result["machine"], result["statistics"], result["generated_data"]
    yes = {True: "yes", False: "**no**"}
    quiet = "none" if result["median_undisturbed_seconds"] is None else f"{result['median_undisturbed_seconds']:.1f} s"
    return "\n".join(
        [
            f"# Benchmark: {result['benchmark']}",
            "",
            f"{result['date']} · {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB · Python {m['python']}, "
            f"polars {m['polars']}, llamarec {m['llamarec']} ({m['llamarec_revision']})",
            "",
            f"Input: {g['interactions']:,} ratings by {g['users']:,} users of {g['items']:,} items "
            f"(ratings CSV {g['ratings_bytes'] / 2**20:,.0f} MiB, "
            f"metadata {g['meta_gz_bytes'] / 2**20:,.0f} MiB gzipped).",
            "",
            "| measure | measured | target | met |",
            "| --- | ---: | ---: | :---: |",
            f"| wall time, median of {len(result['runs'])} | {t['seconds']['measured']:.1f} s | "
            f"< {t['seconds']['target']:.0f} s | {yes[t['seconds']['met']]} |",
            f"| peak memory (RSS), max of {len(result['runs'])} | {t['peak_rss_mib']['measured']:,.0f} MiB | "
            f"< {t['peak_rss_mib']['target'] / 1024:.0f} GiB | {yes[t['peak_rss_mib']['met']]} |",
            "",
            f"Fastest run: {result['min_seconds']:.1f} s; median of the undisturbed runs: {quiet}. Runs on a shared "
            "virtual machine vary with its host's load: the CPU time of the same work, the CPU time other processes "
            "used and the time the hypervisor took (stolen) show how much; a run is marked disturbed when either of "
            f"the last two exceeds {DISTURBED:.0%} of the machine's CPU time. Peak memory is the larger of the largest "
            "single process's exact peak (wait4) and the sampled sum over the process tree (the command and any "
            "worker processes it starts).",
            "",
            "| run | wall (s) | peak RSS, largest process (MiB) | peak RSS, process tree (MiB) | CPU (s) "
            "| other processes' CPU (s) | stolen CPU (s) | disturbed |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
            *(
                f"| {i} | {r['seconds']:.1f} | {r['peak_rss_mib']:,.0f} | {r['peak_tree_rss_mib']:,.0f} "
                f"| {r['cpu_seconds']:.1f} | "
                f"{r['other_cpu_seconds']} | {r['stolen_cpu_seconds']} | {'**yes**' if r['disturbed'] else 'no'} |"
                for i, r in enumerate(result["runs"], start=1)
            ),
            "",
            "| users | items | interactions | avg. length | density |",
            "| ---: | ---: | ---: | ---: | ---: |",
            f"| {s['users']:,} | {s['items']:,} | {s['interactions']:,} | {s['avg_length']:.2f} | {s['density']:.6f} |",
            "",
            f"Reproduce: `{result['reproduce']}`",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = gen_params(args)
    data_dir = args.data_dir or default_data_dir(params)
    data_stats = generate(data_dir, params)
    print(
        "Generated data: "
        + ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in data_stats.items())
    )
    revision = git_revision()  # the package may be edited while this runs: check it did not change
    runs = []
    for i in range(args.repeats):
        runs.append(run_once(args.llamarec, data_dir))
        print(
            f"run {i + 1}/{args.repeats}: {runs[-1]['seconds']:.1f} s, peak RSS {runs[-1]['peak_rss_mib']:,.0f} MiB "
            f"(process tree {runs[-1]['peak_tree_rss_mib']:,.0f} MiB), "
            f"CPU {runs[-1]['cpu_seconds']:.1f} s (others {runs[-1]['other_cpu_seconds']} s, "
            f"stolen {runs[-1]['stolen_cpu_seconds']} s)"
        )
    if any(r["disturbed"] for r in runs):
        print(
            "warning: other processes or the hypervisor took CPU during some runs (see 'disturbed')",
            file=sys.stderr,
        )
    if git_revision() != revision:
        revision += f" (changed to {git_revision()} during the runs)"
        print(f"warning: the package changed while measuring: {revision}", file=sys.stderr)
    result = summarize(args, params, data_stats, runs, revision)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "preprocess.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / "preprocess.md").write_text(markdown(result))
    t = result["targets"]
    print(
        f"\nmedian {t['seconds']['measured']:.1f} s (target < {TARGET_SECONDS:.0f} s: "
        f"{'met' if t['seconds']['met'] else 'NOT met'}), peak RSS {t['peak_rss_mib']['measured']:,.0f} MiB "
        f"(target < {TARGET_MIB:.0f} MiB: {'met' if t['peak_rss_mib']['met'] else 'NOT met'})"
    )
    print("statistics: " + json.dumps(result["statistics"]))
    print(f"wrote {args.results / 'preprocess.json'} and {args.results / 'preprocess.md'}")
    print(f"reproduce: {result['reproduce']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
