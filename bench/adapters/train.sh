#!/usr/bin/env bash
# Reproduce the adapters shipped under adapters/ (each card repeats its exact command).
#
#   bash bench/adapters/train.sh [DATA_DIR] [WORK_DIR]
#
# DATA_DIR (bench/README.md, "Data") must be given; WORK_DIR (checkpoints, labels) to .lodestar/adapters-work.
# The commands with --dtype bfloat16 ran on a CPU with AVX512-BF16 (bf16 about 4x faster than float32
# there). Where the CPU lacks it (AVX2 only: `grep -c avx512_bf16 /proc/cpuinfo` prints 0) bf16 is emulated,
# about 100x slower than float32: replace it with --dtype auto (float32 there; numbers will differ slightly).
# Runs resume from their checkpoints; finished stages are skipped. The last lines copy each adapter
# (float16 weights, card, README) into adapters/<name>/, what `lodestar serve` offers by name.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
DATA="${1:-${DATA_DIR:-}}"
[[ -n "$DATA" ]] || { echo "usage: bash bench/adapters/train.sh DATA_DIR [WORK_DIR] (see bench/README.md, Data)" >&2; exit 2; }
WORK="${2:-.lodestar/adapters-work}"
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY="${PY:-python3}"; fi
LODESTAR=("$PY" -m lodestar.services.cli)
mkdir -p "$WORK"
STSB_LICENCE="STS Benchmark (Cer et al. 2017): scores CC BY-SA 4.0, sentences under each source's licence"
SQUAD_LICENCE="SQuAD 2.0 (Rajpurkar et al. 2018), Wikipedia text: CC BY-SA 4.0"
CISI_LICENCE="CISI test collection (Glasgow IR group): classic research collection, no licence stated; only its abstracts are used"

# LLM2Vec on STS-B train: MNTP and SimCSE on its sentences, then CoSENT on its scored pairs
# (10% of train held out for early stopping; STS-B dev is only used by the benchmark).
"${LODESTAR[@]}" train bidirectional --corpus "$DATA/stsb/train.tsv" --pairs "$DATA/stsb/train.tsv" \
    --out "$WORK/bidirectional-stsb" --mntp-steps 120 --simcse-steps 80 --supervised-steps 200 --simcse-dropout 0.2 \
    --lora-r 8 --lora-alpha 16 --data-licence "$STSB_LICENCE" --seed 0
# then 100 more CoSENT steps from that adapter, bf16 base (planned 250, stopped after the step-100 evaluation;
# same held-out split): STS-B dev 0.759 -> 0.797,
"${LODESTAR[@]}" train bidirectional --pairs "$DATA/stsb/train.tsv" --stages supervised --init-adapter "$WORK/bidirectional-stsb" \
    --out "$WORK/bidirectional-stsb-more" --supervised-steps 100 --eval-every 50 --patience 3 --dtype bfloat16 \
    --lora-r 8 --lora-alpha 16 --data-licence "$STSB_LICENCE" --seed 0
# and 150 more (about 50 min here): 0.797 -> 0.837 (the shipped run started from the float16 copy of the
# previous step in adapters/bidirectional-stsb). ship.py below ships this one as bidirectional-stsb.
"${LODESTAR[@]}" train bidirectional --pairs "$DATA/stsb/train.tsv" --stages supervised --init-adapter "$WORK/bidirectional-stsb-more" \
    --out "$WORK/bidirectional-stsb-more2" --supervised-steps 150 --eval-every 50 --patience 3 --dtype bfloat16 \
    --lora-r 8 --lora-alpha 16 --data-licence "$STSB_LICENCE" --seed 0

# Decoder SPLADE on SQuAD questions -> paragraphs with BM25 hard negatives (125 steps, about 45 min here).
"$PY" bench/adapters/triplets.py squad "$DATA/squad/qa.jsonl" "$WORK/squad_triplets.jsonl"
"${LODESTAR[@]}" train sparse --triplets "$WORK/squad_triplets.jsonl" --out "$WORK/sparse-squad" \
    --steps 125 --batch 8 --max-tokens 128 --lr 2e-4 --lora-r 8 --lora-alpha 16 --data-licence "$SQUAD_LICENCE" --seed 0

# The unsupervised adapter: 100 more SimCSE steps from the first run's simcse stage (about 30 min here;
# the scored pairs only pick the checkpoint): STS-B dev 0.681 -> 0.740. (The shipped run started from
# the float16 copy of that stage in adapters/bidirectional-stsb-unsup.)
"${LODESTAR[@]}" train bidirectional --corpus "$DATA/stsb/train.tsv" --pairs "$DATA/stsb/train.tsv" --stages simcse \
    --init-adapter "$WORK/bidirectional-stsb/simcse/adapter" --out "$WORK/bidirectional-stsb-unsup-more" \
    --simcse-steps 100 --simcse-dropout 0.2 --eval-every 50 --patience 3 --dtype bfloat16 \
    --lora-r 8 --lora-alpha 16 --data-licence "$STSB_LICENCE" --seed 0

"$PY" bench/adapters/ship.py "$WORK/bidirectional-stsb-more2" adapters/bidirectional-stsb
"$PY" bench/adapters/ship.py "$WORK/bidirectional-stsb-unsup-more" adapters/bidirectional-stsb-unsup \
    --extra '{"stage": "simcse (MNTP then unsupervised SimCSE, 80 + 100 steps; no labels in training)"}'
"$PY" bench/adapters/ship.py "$WORK/sparse-squad" adapters/sparse-squad

# Domain adaptation without labels on a corpus none of the above saw (CISI's abstracts; its queries
# and judgements are only used by the benchmark): the backbone writes a query for 160 passages, and
# those continue the shipped SQuAD sparse adapter
# Not shipped: it is specific to that corpus. Its BEIR figures (bench/results/beir_cisi_adapt160.jsonl;
# _unfiltered.jsonl is the run from before the grounded-query filter):
#   BEIR_SETS=cisi STEPS=adapters SPARSE_ADAPTER=$WORK/adapt-cisi/sparse/adapter \
#   ADAPTER_RETRIEVERS=sparse,hybrid ADAPTER_RESULT=adapt160 bash bench/run.sh
# beir_cisi_adapt640.jsonl is the same with --passages 640 --steps 100 --eval-every 20, unfiltered (no better:
# learned sparse 0.313, hybrid 0.376 against 0.317 and 0.377).
"${LODESTAR[@]}" adapt --corpus "$DATA/cisi/beir" --out "$WORK/adapt-cisi" --kinds sparse --passages 160 \
    --sparse-init adapters/sparse-squad --steps 30 --batch 8 --eval-every 10 \
    --lora-r 8 --lora-alpha 16 --data-licence "$CISI_LICENCE" --seed 0

# The same on Cranfield's abstracts (bench/results/beir_cranfield_adapt160.jsonl: BEIR_SETS=cranfield,
# SPARSE_ADAPTER=$WORK/adapt-cranfield/sparse/adapter, the rest as above).
CRANFIELD_LICENCE="Cranfield-1400 collection: classic research collection, no licence stated; only its abstracts are used"
"${LODESTAR[@]}" adapt --corpus "$DATA/cranfield/beir" --out "$WORK/adapt-cranfield" --kinds sparse --passages 160 \
    --sparse-init adapters/sparse-squad --steps 30 --batch 8 --eval-every 10 \
    --lora-r 8 --lora-alpha 16 --data-licence "$CRANFIELD_LICENCE" --seed 0

# Tried, not shipped (negative): does supervision from another collection's judgements transfer? sparse-squad
# continued for 150 steps (about 45 min here) on SQuAD + CISI's qrels (2,347 triplets), measured on Cranfield,
# which it did not see: query_idf 0.330 against sparse-squad's 0.338 (bench/results/sparse_variants_cranfield_squad_cisi.json;
# the plain dot product 0.301 against 0.294). Commented out; to rerun:
#   "$PY" bench/adapters/triplets.py beir "$DATA/cisi/beir" "$WORK/cisi_triplets.jsonl"
#   "$PY" bench/adapters/triplets.py mix "$WORK/squad_cisi_triplets.jsonl" "$WORK/squad_triplets.jsonl" "$WORK/cisi_triplets.jsonl"
#   "${LODESTAR[@]}" train sparse --triplets "$WORK/squad_cisi_triplets.jsonl" --out "$WORK/sparse-squad-cisi" \
#       --init-adapter adapters/sparse-squad --steps 150 --batch 8 --max-tokens 128 --lr 1e-4 --lora-r 8 --lora-alpha 16 \
#       --dtype bfloat16 --eval-every 25 --patience 3 --seed 0 \
#       --data-licence "$SQUAD_LICENCE; CISI test collection (Glasgow IR group): classic research collection, no licence stated"
#   "$PY" bench/adapters/sparse_variants.py "$DATA/cranfield/beir" "$WORK/sparse-squad-cisi/adapter" \
#       --cache .lodestar/variants-cranfield-sc.npz --out bench/results/sparse_variants_cranfield_squad_cisi.json

# Shipped as sparse-squad-cranfield: the same continuation on SQuAD + Cranfield's qrels (2,810 triplets,
# 150 steps, about 40 min here), measured on CISI, which it did not see: query_idf 0.398 against BM25's
# 0.382 and sparse-squad's 0.347 (bench/results/sparse_variants_cisi_squad_cranfield.json). Trained on
# Cranfield's judgements: not to be benchmarked on Cranfield.
"$PY" bench/adapters/triplets.py beir "$DATA/cranfield/beir" "$WORK/cranfield_triplets.jsonl"
"$PY" bench/adapters/triplets.py mix "$WORK/squad_cranfield_triplets.jsonl" "$WORK/squad_triplets.jsonl" "$WORK/cranfield_triplets.jsonl"
"${LODESTAR[@]}" train sparse --triplets "$WORK/squad_cranfield_triplets.jsonl" --out "$WORK/sparse-squad-cranfield" \
    --init-adapter adapters/sparse-squad --steps 150 --batch 8 --max-tokens 128 --lr 1e-4 --lora-r 8 --lora-alpha 16 \
    --dtype bfloat16 --eval-every 25 --patience 3 --seed 0 \
    --data-licence "$SQUAD_LICENCE; Cranfield-1400 collection: classic research collection, no licence stated"
"$PY" bench/adapters/sparse_variants.py "$DATA/cisi/beir" "$WORK/sparse-squad-cranfield/adapter" \
    --cache .lodestar/variants-cisi-scr.npz --out bench/results/sparse_variants_cisi_squad_cranfield.json
"$PY" bench/adapters/ship.py "$WORK/sparse-squad-cranfield" adapters/sparse-squad-cranfield \
    --extra '{"benchmark": "CISI nDCG@10 (not seen in training), offline scorer bench/adapters/sparse_variants.py: query_idf 0.398 (BM25 0.382; sparse-squad 0.347 through the stack), plain dot product 0.332; bench/results/sparse_variants_cisi_squad_cranfield.json. Trained on Cranfield judgements: do not benchmark it on Cranfield."}'

# Shipped as sparse-cranfield-title (no labels; specific to Cranfield, so shipped for its benchmarks):
# `adapt --queries title` on Cranfield (1,397 titled abstracts, 150 steps, 50-56 min here): through the stack
# learned sparse 0.343, hybrid 0.344, against BM25 0.364 (bench/results/beir_cranfield_adapt_title.jsonl:
# BEIR_SETS=cranfield STEPS=adapters SPARSE_ADAPTER=adapters/sparse-cranfield-title ADAPTER_RESULT=adapt_title
# bash bench/run.sh "$DATA"). Its searches with feedback and length normalisation are at the end of this file.
"${LODESTAR[@]}" adapt --corpus "$DATA/cranfield/beir" --out "$WORK/adapt-cranfield-title" --queries title \
    --kinds sparse --passages 1398 --sparse-init adapters/sparse-squad --steps 150 --batch 8 \
    --lora-r 8 --lora-alpha 16 --dtype bfloat16 --seed 0 \
    --data-licence "Cranfield-1400 collection: classic research collection, no licence stated; only its titles and abstracts are used"
"$PY" bench/adapters/ship.py "$WORK/adapt-cranfield-title/sparse" adapters/sparse-cranfield-title

# Tried, not shipped (negative): Cranfield's own judgements, cross-validated. Fold 0 of 2 of its queries
# (110, a hash of the query id: retrieve.eval.beir.in_fold) held out; sparse-squad continued 80 steps on the
# other 115 queries' triplets (836) mixed with 400 SQuAD triplets (27 min here), then scored on the held-out
# fold only (encoding 35 min): query_idf 0.244 against BM25's 0.344 on the same queries
# (bench/results/sparse_variants_cranfield_cv0.json; lr 2e-4). The gentler run (lr 1e-4, lambda_d 1e-4):
# 0.273, hybrid 0.287 (bench/results/sparse_variants_cranfield_cv0_gentle.json). Fold 1 was not trained.
# Commented out; to rerun:
#   "$PY" bench/adapters/triplets.py beir "$DATA/cranfield/beir" "$WORK/cranfield_not0.jsonl" --exclude-fold 0/2
#   "$PY" bench/adapters/triplets.py mix "$WORK/squad_shuffled.jsonl" "$WORK/squad_triplets.jsonl"
#   head -400 "$WORK/squad_shuffled.jsonl" > "$WORK/squad400.jsonl"
#   "$PY" bench/adapters/triplets.py mix "$WORK/squad400_cranfield_not0.jsonl" "$WORK/squad400.jsonl" "$WORK/cranfield_not0.jsonl"
#   "${LODESTAR[@]}" train sparse --triplets "$WORK/squad400_cranfield_not0.jsonl" --out "$WORK/sparse-cv0" \
#       --init-adapter adapters/sparse-squad --steps 80 --batch 8 --max-tokens 128 --lr 2e-4 --lora-r 8 --lora-alpha 16 \
#       --dtype bfloat16 --eval-every 20 --patience 3 --seed 0 \
#       --data-licence "$SQUAD_LICENCE; Cranfield-1400 collection: classic research collection, no licence stated"
#   "$PY" bench/adapters/sparse_variants.py "$DATA/cranfield/beir" "$WORK/sparse-cv0/adapter" --fold 0/2 \
#       --cache .lodestar/variants-cranfield-cv0.npz --dense adapters/bidirectional-stsb \
#       --dense-cache .lodestar/dense-cranfield-stsb.npz --out bench/results/sparse_variants_cranfield_cv0.json
#   (the gentler run: --out "$WORK/sparse-cv0-gentle" --lr 1e-4 --lambda-d 1e-4, its own --cache and --out)

# Tried, not served (negative): training-free scoring changes on one Cranfield encoding with sparse-squad.
# Vocabulary folded to one weight per word form 0.336 (plurals merged 0.329) against query_idf's 0.337;
# Rocchio pseudo-relevance feedback 0.341-0.348, its hybrid with bidirectional-stsb at most 0.359 (BM25 0.366
# on the same queries); bench/results/sparse_variants_cranfield_fold_prf.json (encodings 27 + 9 min here).
# Commented out; to rerun:
#   "$PY" bench/adapters/sparse_variants.py "$DATA/cranfield/beir" adapters/sparse-squad \
#       --cache .lodestar/variants-cranfield-squad.npz --dense adapters/bidirectional-stsb \
#       --dense-cache .lodestar/dense-cranfield-stsb.npz --alphas 0.15,0.2,0.3,0.5 \
#       --out bench/results/sparse_variants_cranfield_fold_prf.json

# Tried, not shipped: the dense side adapted to Cranfield with its titles as queries (no labels),
# continuing bidirectional-stsb; 60 steps 20 min here, 60 more 17 min. Dense nDCG@10 0.182 -> 0.259 -> 0.270,
# hybrid with sparse-squad + query_idf 0.345 -> 0.356 -> 0.359 (BM25 0.366 on the same queries);
# bench/results/sparse_variants_cranfield_dense_title{60,120}.json. Commented out; to rerun:
#   "${LODESTAR[@]}" adapt --corpus "$DATA/cranfield/beir" --out "$WORK/adapt-cranfield-title-dense" --queries title \
#       --kinds dense --passages 1398 --dense-init adapters/bidirectional-stsb --steps 60 --batch 4 --lr 1e-4 \
#       --lora-r 8 --lora-alpha 16 --dtype bfloat16 --eval-every 20 --patience 3 --seed 0
#   (the same with --steps 120 continues the stage from its step-60 checkpoint)
#   "$PY" bench/adapters/sparse_variants.py "$DATA/cranfield/beir" adapters/sparse-squad \
#       --cache .lodestar/variants-cranfield-squad.npz --dense "$WORK/adapt-cranfield-title-dense/dense/adapter" \
#       --dense-cache .lodestar/dense-cranfield-title120.npz --alphas 0.15,0.2,0.3,0.5,0.7 \
#       --out bench/results/sparse_variants_cranfield_dense_title120.json

# Both title adapters in one collection, through the whole stack (bench/results/beir_cranfield_adapt_title_both.jsonl:
# learned sparse 0.343, dense 0.270, hybrid 0.360 at alpha 0.3, BM25 0.364; trained and indexed on an AVX512-BF16 CPU:
# sparse 55 min, dense 26 min, indexing 38 min), then the offline variants on the vectors that run stored
# (bench/results/sparse_variants_cranfield_title_both.json: with pseudo-relevance feedback, which is not served,
# the hybrid reaches 0.374). The two adapt commands above (the sparse one with --steps 150, the dense one with
# --steps 80 then --steps 120), then; commented out:
#   BEIR_SETS=cranfield STEPS=adapters DENSE_ADAPTER="$WORK/adapt-cranfield-title-dense/dense/adapter" \
#       SPARSE_ADAPTER="$WORK/adapt-cranfield-title/sparse/adapter" ADAPTER_RESULT=adapt_title_both \
#       ADAPTER_ALPHAS=0.2,0.3,0.5 ADAPTER_WORK=.lodestar/beir-work bash bench/run.sh "$DATA"
#   "$PY" bench/adapters/sparse_variants.py "$DATA/cranfield/beir" "$WORK/adapt-cranfield-title/sparse/adapter" \
#       --from-collection .lodestar/beir-work/cranfield --cache .lodestar/variants-cranfield-title.npz \
#       --dense "$WORK/adapt-cranfield-title-dense/dense/adapter" --dense-cache .lodestar/dense-cranfield-title.npz \
#       --alphas 0.15,0.2,0.3,0.5 --out bench/results/sparse_variants_cranfield_title_both.json
# and the same collection searched with served pseudo-relevance feedback (beir_cranfield_adapt_title_both_feedback3.jsonl:
# learned sparse 0.359, hybrid 0.374 at alpha 0.3; 4 min, nothing re-encoded):
#   "${LODESTAR[@]}" eval beir "$DATA/cranfield/beir" --retriever sparse,hybrid --fusion rrf,weighted --alpha 0.2,0.3,0.5 \
#       --mode bidirectional --adapter "$WORK/adapt-cranfield-title-dense/dense/adapter" --sparse learned \
#       --sparse-adapter "$WORK/adapt-cranfield-title/sparse/adapter" --work-dir .lodestar/beir-work/cranfield --feedback 3 --quiet \
#       > bench/results/beir_cranfield_adapt_title_both_feedback3.jsonl

# The learned-sparse setting chosen on CISI and applied to Cranfield. CISI's stored sparse-squad-cranfield
# collection (the adapters step with ADAPTER_WORK, or this eval), then the variants rescored from it
# (sparse_variants_cisi_squad_cranfield_cv.json; best: feedback 3, weight 1, length_norm 0.25) and that
# setting served (beir_cisi_sparse_cranfield_feedback3{,_ln025}.jsonl; the first without --length-norm):
#   "${LODESTAR[@]}" eval beir "$DATA/cisi/beir" --retriever sparse,hybrid --fusion rrf,weighted --alpha 0.3,0.5 \
#       --mode bidirectional --adapter adapters/bidirectional-stsb --sparse learned --sparse-adapter adapters/sparse-squad-cranfield \
#       --work-dir .lodestar/beir-work/cisi --feedback 3 --length-norm 0.25 --quiet
#   "$PY" bench/adapters/sparse_variants.py "$DATA/cisi/beir" adapters/sparse-squad-cranfield --from-collection .lodestar/beir-work/cisi \
#       --cache .lodestar/variants-cisi-fc.npz --dense adapters/bidirectional-stsb --dense-cache .lodestar/dense-cisi-fc.npz \
#       --alphas 0.2,0.3,0.5 --out bench/results/sparse_variants_cisi_squad_cranfield_cv.json
# Cranfield with the shipped title adapter (beir_cranfield_sparse_title.jsonl: 20 min of indexing, then each
# setting reuses the stored collection; sparse_variants_cranfield_title_cv.json the variants and the
# cross-validated pick):
#   for a in "--feedback 3" "--feedback 3 --length-norm 0.25" ""; do "${LODESTAR[@]}" eval beir "$DATA/cranfield/beir" \
#       --retriever sparse --sparse learned --sparse-adapter adapters/sparse-cranfield-title \
#       --work-dir .lodestar/beir-work/cranfield-title $a --quiet; done
#   "$PY" bench/adapters/sparse_variants.py "$DATA/cranfield/beir" adapters/sparse-cranfield-title \
#       --from-collection .lodestar/beir-work/cranfield-title --cache .lodestar/variants-cranfield-title2.npz \
#       --out bench/results/sparse_variants_cranfield_title_cv.json
# The dense title adapter, retrained and shipped as bidirectional-cranfield-title (80 steps, 18 min here), and the
# hybrid with it (dense encoded offline, fused as the engine fuses; the same sparse_variants_cranfield_title_cv.json):
"${LODESTAR[@]}" adapt --corpus "$DATA/cranfield/beir" --out "$WORK/adapt-cranfield-title-dense" --queries title \
    --kinds dense --passages 1398 --dense-init adapters/bidirectional-stsb --steps 80 --batch 4 --lr 1e-4 \
    --lora-r 8 --lora-alpha 16 --dtype bfloat16 --eval-every 20 --patience 3 --seed 0 \
    --data-licence "Cranfield-1400 collection: classic research collection, no licence stated; only its titles and abstracts are used"
"$PY" bench/adapters/ship.py "$WORK/adapt-cranfield-title-dense/dense" adapters/bidirectional-cranfield-title
#   "$PY" bench/adapters/sparse_variants.py "$DATA/cranfield/beir" adapters/sparse-cranfield-title \
#       --from-collection .lodestar/beir-work/cranfield-title --cache .lodestar/variants-cranfield-title2.npz \
#       --dense adapters/bidirectional-cranfield-title --dense-cache .lodestar/dense-cranfield-title2.npz \
#       --alphas 0.2,0.3,0.5 --out bench/results/sparse_variants_cranfield_title_cv.json
