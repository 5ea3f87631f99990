"""Which dtype the ranker computes in when the user says ``--dtype auto``, and why, in one line.

On a GPU: bf16 where it supports it, else fp32 (fp16 training without loss scaling overflows). On a CPU it depends on
the chip: with AMX or AVX512-BF16 (recent Xeons) a bf16 matrix multiply runs several times faster than fp32; without
them bf16 is emulated and slower. Flags in /proc/cpuinfo exist only on Linux and say nothing of how torch's kernels
use them, so a short probe measures both rates once per machine (about 0.1 s) and caches the answer, keyed by CPU
(its name and bf16-related flags), torch version and thread count, in ``cache_dir()/cpu-dtype.json``. bf16 is chosen
when it multiplies at least ``FAST_ENOUGH`` times as fast as fp32.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass

from . import settings

DTYPES = ("auto", "bf16", "fp16", "fp32")
FAST_ENOUGH = 2.0  # bf16 / fp32 multiply rate above which bf16 pays for its conversions on a CPU
PROBE_FILE = "cpu-dtype.json"


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # bf16, fp16 or fp32
    reason: str  # one line for the user

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "reason": self.reason}


def choose_dtype(requested: str, device) -> DtypeChoice:
    """``requested`` (auto, bf16, fp16 or fp32) made concrete for ``device``, with the reason."""
    import torch

    from .errors import ConfigError

    if requested not in DTYPES:
        raise ConfigError(f"Unknown dtype '{requested}'. Use one of: {', '.join(DTYPES)}.")
    if requested != "auto":
        return DtypeChoice(requested, f"dtype {requested}, as asked (--dtype)")
    if torch.device(device).type == "cuda":
        if torch.cuda.is_bf16_supported():
            return DtypeChoice("bf16", "dtype bf16 (auto: this GPU supports bf16; --dtype fp32 for float32)")
        return DtypeChoice("fp32", "dtype fp32 (auto: this GPU has no bf16; fp16 without loss scaling overflows)")
    if torch.device(device).type != "cpu":
        return DtypeChoice("fp32", f"dtype fp32 (auto: the default on {torch.device(device).type})")
    probe = cpu_probe()
    ratio = probe["bf16_gflops"] / probe["fp32_gflops"]
    measured = f"bf16 multiplies {ratio:.1f}x as fast as fp32 on this CPU, measured once"
    if ratio >= FAST_ENOUGH:
        return DtypeChoice("bf16", f"dtype bf16 (auto: {measured}; --dtype fp32 to change)")
    return DtypeChoice("fp32", f"dtype fp32 (auto: {measured}, too little to gain)")


def cpu_probe() -> dict:
    """This machine's fp32 and bf16 matrix-multiply rates (GFLOP/s), measured once and cached."""
    return cached_measurements(
        {"fp32_gflops": lambda: matmul_gflops("fp32"), "bf16_gflops": lambda: matmul_gflops("bf16")}
    )


def cached_measurements(measures: dict) -> dict:
    """Each of ``measures`` (name -> a function measuring a positive number on this machine) from the cache of this
    machine's probes, measured and added to it when missing (ranking/attention.py adds its timings here too)."""
    path = settings.cache_dir() / PROBE_FILE
    key = machine_key()
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    entry = cached.get(key) if isinstance(cached.get(key), dict) else {}
    missing = {name: measure for name, measure in measures.items() if not _positive(entry.get(name))}
    if missing:
        entry = entry | {name: measure() for name, measure in missing.items()}
        cached[key] = entry
        try:  # a read-only cache only costs the probe again next time
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cached, indent=2) + "\n", encoding="utf-8")
            tmp.replace(path)
        except OSError:
            pass
    return {name: entry[name] for name in measures} | {"file": str(path)}


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def machine_key() -> str:
    import torch

    features = " ".join(matrix_features())
    return f"{cpu_model()} [{features}] | torch {torch.__version__} | {torch.get_num_threads()} threads"


MATRIX_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")  # what decides how fast torch multiplies in bf16


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def matrix_features() -> list[str]:
    """The CPU flags behind the bf16 rate. A virtual machine's model name can be as vague as "AMD EPYC" for chips of
    different generations, so the name alone would let one machine's probe answer for another."""
    flags = set((_cpuinfo("flags") or "").split())
    return [flag for flag in MATRIX_FLAGS if flag in flags]


def _cpuinfo(field: str) -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def matmul_gflops(dtype: str, m: int = 256, k: int = 576, n: int = 1536, repeats: int = 8, rounds: int = 3) -> float:
    """The best of ``rounds`` timings of ``repeats`` (m x k) @ (k x n) multiplies on the CPU, in GFLOP/s. The shape is
    a small LLM's MLP projection over a few hundred tokens: what the ranker's forward pass mostly does."""
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a = torch.randn(m, k).to(torch_dtype)
    b = torch.randn(k, n).to(torch_dtype)
    a @ b  # the first call picks and warms the kernel
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - began)
    return repeats * 2 * m * k * n / best / 1e9
