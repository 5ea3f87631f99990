#!/usr/bin/env bash
# What a bare GPU machine lacks for benchmarks/gpu_check.py, gathered here into .carry/ (git-ignored), within the
# 64 MiB a device call may carry. That machine reaches no package index; its image has torch, transformers, peft,
# accelerate, typer, rich, pluggy, safetensors and sentencepiece, but not polars, bitsandbytes or gguf, and not the
# data in ../shared. Run from the repository root, on an x86-64 machine with pip access:
#
#     bash benchmarks/gpu_prepare.sh
#
# then, with the device tool: run(command=<the line this prints>, carry=[".carry"], timeout_s=600).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${LLAMAREC_SHARED:-../shared}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}  # the device image's python3
CUDA_LIB=${CUDA_LIB:-cuda130}           # bitsandbytes' kernel library for the device's torch.version.cuda

rm -rf .carry && mkdir -p .carry/whl .carry/site .carry/shared/datasets/ml-latest-small .carry/shared/tokenizers/llama-2
download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$1" "${@:2}"
}
# polars as wheels, installed there (its runtime unpacked is larger than the wheel)
download .carry/whl "polars==$(python3 -c 'import importlib.metadata as m; print(m.version("polars"))' 2>/dev/null \
    || .venv/bin/python -c 'import importlib.metadata as m; print(m.version("polars"))')"
runtime=$(unzip -p .carry/whl/polars-*.whl '*/METADATA' | grep '^Requires-Dist: polars-runtime' | grep -v extra \
    | sed 's/^Requires-Dist: \([^ ;]*\).*/\1/' || true)
[ -n "$runtime" ] && download .carry/whl "$runtime"
# bitsandbytes and gguf unpacked, bitsandbytes with the one CUDA kernel library the device needs (the wheel holds
# eleven: 43 MB)
mkdir -p .carry/tmp && download .carry/tmp "bitsandbytes==$(.venv/bin/python -c 'import bitsandbytes; print(bitsandbytes.__version__)' 2>/dev/null)" gguf
for wheel in .carry/tmp/*.whl; do unzip -q -o "$wheel" -d .carry/site; done
find .carry/site/bitsandbytes -name 'libbitsandbytes_*.so' ! -name "libbitsandbytes_${CUDA_LIB}.so" \
    ! -name 'libbitsandbytes_cpu.so' -delete
rm -rf .carry/tmp
cp "$SHARED"/datasets/ml-latest-small/{ratings.csv,movies.csv} .carry/shared/datasets/ml-latest-small/
cp "$SHARED"/tokenizers/llama-2/tokenizer.model .carry/shared/tokenizers/llama-2/

size=$(du -sb .carry | cut -f1)
echo "carry: .carry, $((size / 1024 / 1024)) MiB (limit 64 MiB with the working tree)"
[ "$size" -lt $((62 * 1024 * 1024)) ] || { echo "too large to travel" >&2; exit 1; }
echo 'command: python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/whl/*.whl' \
    '&& export PYTHONPATH=/tmp/site:$PWD/.carry/site:$PWD LLAMAREC_SHARED=$PWD/.carry/shared PYTHONUNBUFFERED=1' \
    '&& python3 benchmarks/gpu_check.py 2>&1 | tee $OUT/gpu-check.log'
