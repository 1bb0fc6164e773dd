#!/usr/bin/env bash
# Build .gpu/ for bench/gpu/run.sh: what a lent GPU machine lacks and cannot fetch (it reaches no
# package registry). Run here, after `make install`, right before the device call, so the wheel
# holds the code being measured:
#   .gpu/wheels/   lodestar as a wheel (its generated gRPC code included) and faiss-cpu for the
#                  machine's Python 3.12; the image brings CUDA torch, triton, transformers, peft
#   .gpu/smollm2/  the bundled model's tokenizer and config, without its weights
# The device tool carries the checkout plus what `carry` names, 64 MiB in all: call it with
# carry [".gpu"]. The bundled weights (94 MB of GGUF) cannot travel, hence random weights there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PY:-.venv/bin/python}"
GPU_PYTHON="${GPU_PYTHON:-3.12}"  # the lent image's python3
rm -rf .gpu
mkdir -p .gpu/wheels .gpu/smollm2

"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .gpu/wheels .
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/wheels "faiss-cpu==1.15.1"

"$PY" - <<'PY'
import shutil
from pathlib import Path

from lodestar.backbone.loader import bundled_gguf, dequantised_cache

folder = dequantised_cache(bundled_gguf(), Path.home() / ".cache" / "lodestar")
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json", "generation_config.json"):
    if (folder / name).exists():
        shutil.copy(folder / name, Path(".gpu/smollm2") / name)
PY

tree_bytes=$(git ls-files -z | xargs -0 cat 2>/dev/null | wc -c)
carry_bytes=$(du -sb .gpu | cut -f1)
total=$(( (tree_bytes + carry_bytes) / 1048576 ))
echo "checkout $((tree_bytes / 1048576)) MiB + .gpu $((carry_bytes / 1048576)) MiB = ${total} MiB (the device tool carries 64 MiB)"
if (( total >= 62 )); then
    echo "bench/gpu/prepare.sh: too large to carry; leave faiss-cpu out (the faiss step then fails alone)" >&2
    exit 1
fi
