#!/usr/bin/env bash
# Run Lodestar's benchmarks; each writes JSON under bench/results/ (see bench/README.md).
#
#   bash bench/run.sh DATA_DIR            (or DATA_DIR=... make bench)
#
# DATA_DIR (the first argument, or $DATA_DIR) is required: a folder holding stsb/{train,dev}.tsv,
# cranfield/beir/, cisi/beir/, squad/qa.jsonl and squad/beir/ (layout: bench/README.md, "Data").
# Environment knobs (defaults in brackets):
#   STEPS         which benchmarks, space-separated [sts embed kernels]; also: beir retrieve shards index
#                 sparse compress specdec runtime adapters (the slow ones: run them by name)
#   RESULTS       output folder [bench/results]
#   MODES         STS modes [mean last prompteol echo token_prepend bidirectional]
#   STS_FILE      STS TSV [$DATA/stsb/dev.tsv]
#   STS_PAIRS     only the first N pairs (smoke test; 0 = all) [0]
#   EMBED_TEXTS   distinct STS sentences for the throughput run [512]
#   CONCURRENCY   client threads for the throughput run [8]
#   EMBED_BATCH   texts per client request [16]
#   KERNEL_DEVICE device for bench/kernels.py [cpu]
#   BEIR_SETS     BEIR folders under $DATA for the beir step [cranfield cisi]
#   BEIR_MODES    dense modes of the beir step [prompteol token_prepend]
#   ALPHAS        weighted-fusion alphas of the beir step [0.1,0.15,0.2,0.3,0.5]
#   DENSE_ADAPTER  the adapters step: bidirectional dense adapter [adapters/bidirectional-stsb]
#   SPARSE_ADAPTER the adapters step: learned-sparse (echo) adapter [adapters/sparse-squad]
#   ADAPTER_ALPHAS weighted-fusion alphas of the adapters step [0.3,0.5,0.7]
#   ADAPTER_RETRIEVERS retrievers of the adapters step [dense,sparse,hybrid]
#   ADAPTER_RESULT the adapters step writes beir_<set>_<this>.jsonl [adapters]
#   ADAPTER_WORK   the adapters step keeps each set's indexed corpus in <this>/<set> (eval beir --work-dir):
#                  an interrupted run resumes, a rerun with other alphas encodes nothing [none]
#   LODESTAR_*    read by the CLI as usual (e.g. LODESTAR_MODEL, LODESTAR_DTYPE)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DATA="${1:-${DATA_DIR:-}}"
if [[ -z "$DATA" ]]; then
    echo "usage: bash bench/run.sh DATA_DIR (or set \$DATA_DIR): a folder with stsb/{train,dev}.tsv," \
        "cranfield/beir/, cisi/beir/ (BEIR: corpus.jsonl, queries.jsonl, qrels/test.tsv)," \
        "squad/qa.jsonl and squad/beir/; see bench/README.md" >&2
    exit 2
fi
STEPS="${STEPS:-sts embed kernels}"
RESULTS="${RESULTS:-bench/results}"
MODES="${MODES:-mean last prompteol echo token_prepend bidirectional}"
STS_FILE="${STS_FILE:-$DATA/stsb/dev.tsv}"
STS_PAIRS="${STS_PAIRS:-0}"
EMBED_TEXTS="${EMBED_TEXTS:-512}"
CONCURRENCY="${CONCURRENCY:-8}"
EMBED_BATCH="${EMBED_BATCH:-16}"
KERNEL_DEVICE="${KERNEL_DEVICE:-cpu}"
BEIR_SETS="${BEIR_SETS:-cranfield cisi}"
BEIR_MODES="${BEIR_MODES:-prompteol token_prepend}"
ALPHAS="${ALPHAS:-0.1,0.15,0.2,0.3,0.5}"
DENSE_ADAPTER="${DENSE_ADAPTER:-adapters/bidirectional-stsb}"
SPARSE_ADAPTER="${SPARSE_ADAPTER:-adapters/sparse-squad}"
ADAPTER_ALPHAS="${ADAPTER_ALPHAS:-0.3,0.5,0.7}"
ADAPTER_RETRIEVERS="${ADAPTER_RETRIEVERS:-dense,sparse,hybrid}"
ADAPTER_RESULT="${ADAPTER_RESULT:-adapters}"
ADAPTER_WORK="${ADAPTER_WORK:-}"

if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY="${PY:-python3}"; fi
LODESTAR=("$PY" -m lodestar.services.cli)

if [[ ! -f "$STS_FILE" ]] && [[ " $STEPS " == *" sts "* || " $STEPS " == *" embed "* ]]; then
    echo "bench/run.sh: no STS file at $STS_FILE (give the data folder as the first argument or \$DATA_DIR)" >&2
    exit 2
fi

mkdir -p "$RESULTS"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Write a step's JSON atomically: a failed run never leaves a half-written result behind.
publish() { mv -f "$1" "$2"; echo "  -> $2"; }

if [[ " $STEPS " == *" sts "* ]]; then
    sts_input="$STS_FILE"
    if [[ "$STS_PAIRS" != 0 ]]; then
        sts_input="$TMP/sts_head.tsv"
        "$PY" bench/sts_texts.py "$STS_FILE" "$sts_input" --pairs "$STS_PAIRS"
    fi
    for mode in $MODES; do
        echo "== sts $mode ($sts_input)"
        "${LODESTAR[@]}" eval sts "$sts_input" --mode "$mode" --quiet > "$TMP/sts_$mode.json"
        publish "$TMP/sts_$mode.json" "$RESULTS/sts_$mode.json"
    done
fi

if [[ " $STEPS " == *" embed "* ]]; then
    echo "== bench embed (mode mean, $EMBED_TEXTS texts, concurrency $CONCURRENCY, $EMBED_BATCH texts/request)"
    "$PY" bench/sts_texts.py "$STS_FILE" "$TMP/texts.txt" --limit "$EMBED_TEXTS"
    "${LODESTAR[@]}" bench embed --texts "$TMP/texts.txt" --mode mean --concurrency "$CONCURRENCY" \
        --batch-size "$EMBED_BATCH" --out "$TMP/embed_throughput.json" > /dev/null
    publish "$TMP/embed_throughput.json" "$RESULTS/embed_throughput.json"
    echo "== bench embed --edge (TLS + token + metrics + access log on vs off, interleaved)"
    "${LODESTAR[@]}" bench embed --edge --texts "$TMP/texts.txt" --mode mean --concurrency "$CONCURRENCY" \
        --batch-size "$EMBED_BATCH" --out "$TMP/embed_edge_cost.json" > /dev/null
    publish "$TMP/embed_edge_cost.json" "$RESULTS/embed_edge_cost.json"
fi

if [[ " $STEPS " == *" kernels "* ]]; then
    echo "== kernels ($KERNEL_DEVICE)"
    "$PY" bench/kernels.py --device "$KERNEL_DEVICE" --out "$TMP/kernels_$KERNEL_DEVICE.json"
    publish "$TMP/kernels_$KERNEL_DEVICE.json" "$RESULTS/kernels_$KERNEL_DEVICE.json"
fi

if [[ " $STEPS " == *" beir "* ]]; then
    for set in $BEIR_SETS; do
        : > "$TMP/beir_$set.jsonl"
        for mode in $BEIR_MODES; do
            echo "== beir $set ($mode)"
            "${LODESTAR[@]}" eval beir "$DATA/$set/beir" --retriever dense,bm25,hybrid --fusion rrf,weighted \
                --alpha "$ALPHAS" --mode "$mode" --quiet >> "$TMP/beir_$set.jsonl"
        done
        publish "$TMP/beir_$set.jsonl" "$RESULTS/beir_$set.jsonl"
    done
fi

# The trained adapters on BEIR: learned sparse alone, and hybrid with the bidirectional dense adapter
# (BM25 on the same sets: beir_<set>.jsonl). One collection per set holds both sides.
if [[ " $STEPS " == *" adapters "* ]]; then
    for set in $BEIR_SETS; do
        echo "== beir $set (bidirectional + $DENSE_ADAPTER, learned sparse $SPARSE_ADAPTER)"
        out="beir_${set}_${ADAPTER_RESULT}.jsonl"
        work=()
        if [[ -n "$ADAPTER_WORK" ]]; then work=(--work-dir "$ADAPTER_WORK/$set"); fi
        "${LODESTAR[@]}" eval beir "$DATA/$set/beir" --retriever "$ADAPTER_RETRIEVERS" --fusion rrf,weighted \
            --alpha "$ADAPTER_ALPHAS" --mode bidirectional --adapter "$DENSE_ADAPTER" --sparse learned \
            --sparse-adapter "$SPARSE_ADAPTER" "${work[@]}" --quiet > "$TMP/$out"
        publish "$TMP/$out" "$RESULTS/$out"
    done
fi

if [[ " $STEPS " == *" retrieve "* ]]; then
    echo "== bench retrieve (100k vectors per index type; gRPC latency on cranfield)"
    "${LODESTAR[@]}" bench retrieve --corpus "$DATA/cranfield/beir" --quiet --out "$TMP/retrieve.json" > /dev/null
    publish "$TMP/retrieve.json" "$RESULTS/retrieve.json"
fi

if [[ " $STEPS " == *" sparse "* ]]; then
    echo "== bench sparse (learned-sparse impact index: 10k, 100k, 300k synthetic SPLADE-like vectors, with and without IDF)"
    "${LODESTAR[@]}" bench sparse --quiet --out "$TMP/sparse_impact.json" > /dev/null
    publish "$TMP/sparse_impact.json" "$RESULTS/sparse_impact.json"
    "${LODESTAR[@]}" bench sparse --no-idf --quiet --out "$TMP/sparse_impact_noidf.json" > /dev/null
    publish "$TMP/sparse_impact_noidf.json" "$RESULTS/sparse_impact_noidf.json"
fi

if [[ " $STEPS " == *" shards "* ]]; then
    echo "== bench shards (single-query latency: one dense index vs 2 and 4 shards, 100k x 576-d)"
    "${LODESTAR[@]}" bench shards --quiet --out "$TMP/shards.json" > /dev/null
    publish "$TMP/shards.json" "$RESULTS/shards.json"
fi

if [[ " $STEPS " == *" index "* ]]; then
    echo "== bench index (cranfield corpus; in-process vs 1, 2 Celery workers)"
    "${LODESTAR[@]}" bench index --corpus "$DATA/cranfield/beir" --workers 1,2 --quiet --out "$TMP/index.json" > /dev/null
    publish "$TMP/index.json" "$RESULTS/index.json"
fi

if [[ " $STEPS " == *" compress "* ]]; then
    echo "== compress (SQuAD: extractive, abstractive)"
    "$PY" bench/compress/run.py --qa "$DATA/squad/qa.jsonl" --corpus "$DATA/squad/beir" --results "$RESULTS" --quiet
fi

if [[ " $STEPS " == *" runtime "* ]]; then
    echo "== runtime (embedding forward runtimes vs eager fp32 per mode: speed on STS-B train, quality on dev)"
    "$PY" bench/runtime/run.py --stsb "$DATA/stsb" --out "$RESULTS/embed_runtime.json"
fi

if [[ " $STEPS " == *" specdec "* ]]; then
    echo "== specdec (code completion from the stdlib datastore; SQuAD RAG from the passages)"
    "$PY" bench/specdec/run.py --squad "$DATA/squad/qa.jsonl" --results "$RESULTS" --quiet
fi

# Summary of whatever results the folder holds now (this run's and earlier ones).
"$PY" - "$RESULTS" <<'PY'
import json
import sys
from pathlib import Path

results = Path(sys.argv[1])
print(f"\n== summary ({results})")
sts = sorted(results.glob("sts_*.json"))
if sts:
    print(f"{'STS mode':16s} {'spearman':>9s} {'pairs':>6s} {'seconds':>8s}  model")
    for p in sts:
        r = json.loads(p.read_text().strip().splitlines()[-1])
        print(f"{r['mode']:16s} {r['spearman']:9.4f} {r['pairs']:6d} {r['seconds']:8.1f}  {r['model']} ({r['torch_dtype']})")
tp = results / "embed_throughput.json"
if tp.exists():
    r = json.loads(tp.read_text())
    s, c, b = r["served"], r["in_process"], r["batcher"]
    print(f"\nembed throughput: {r['model']} {r['torch_dtype']} on {r['device']}, mode {r['mode']}, "
          f"{r['texts']} texts, {r['concurrency']} clients x {r['batch_size']} texts/request")
    print(f"  served      {s['tokens_per_s']:9.1f} tok/s {s['texts_per_s']:8.1f} texts/s   p50 {s['p50_ms']:.0f} ms  p99 {s['p99_ms']:.0f} ms")
    print(f"  in-process  {c['tokens_per_s']:9.1f} tok/s {c['texts_per_s']:8.1f} texts/s   (batch {c['batch_size']}, length-sorted)")
    verdict = "meets" if r["served_over_ceiling"] >= r.get("target", 0.85) else "BELOW"
    print(f"  served/ceiling {r['served_over_ceiling']:.1%} ({verdict} target {r.get('target', 0.85):.0%}); "
          f"batcher {b['batches']} batches, {b['mean_batch_texts']} texts/batch, padding {b['padding_ratio']:.1%}")
for p in sorted(results.glob("kernels_*.json")):
    r = json.loads(p.read_text())
    print(f"\nkernels on {r['device']} ({r['device_name']}):")
    for row in r["results"]:
        tri = "" if row.get("triton_ms") is None else f"  triton {row['triton_ms']:.3f} ms  x{row['speedup']}"
        shape = "x".join(map(str, row["shape"])) if "shape" in row else f"{row['head']} {row['texts']}x{row['positions']}"
        peak = "" if row.get("torch_peak_mib") is None else f" ({row['torch_peak_mib']} MiB)"
        print(f"  {row['op']:17s} {shape:>24s} {row['dtype']:5s} torch {row['torch_ms']:.3f} ms{peak}{tri}")
PY
