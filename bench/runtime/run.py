"""Embedding forward runtimes against eager fp32, per mode: speed, per-vector cosine, STS-B Spearman.

    python bench/runtime/run.py --stsb DATA_DIR/stsb [--modes mean last ...] [--runtimes ...]

Selection and report use different data: speed and cosine on STS-B *train* sentences pick the
runtime (`select` in the JSON), the STS-B *dev* pairs report it (cosine of every dev vector to its
eager fp32 vector, Spearman of both). Timed runs alternate eager fp32 and the runtime batch by
batch, `--repeats` times, so load on a shared machine hits both alike; the speed-up is the median
of the per-repeat ratios, with their spread. Writes bench/results/embed_runtime.json atomically.

Runtimes: eager_bf16 (the model cast to bf16: what dtype=auto loads where bf16 is native),
bf16_matmul, bf16_weights and compile (embed/runtime.py), int8_dynamic (torch.ao dynamic int8 on every Linear of
the decoder layers), onnxruntime and openvino (the decoder exported once; plain forwards only).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lodestar.backbone import BackboneConfig, load_backbone
from lodestar.embed.engine import EmbeddingEngine, EngineConfig
from lodestar.embed.eval.sts import read_sts, spearman
from lodestar.embed.types import EmbedOptions

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from external import EXTERNAL, external_engine  # noqa: E402

MODES: dict[str, dict[str, Any]] = {
    "mean": {},
    "last": {},
    "prompteol": {},
    "echo": {},
    "token_prepend": {},
    "bidirectional": {"adapter": "bidirectional-stsb"},
    "sparse": {"mode": "echo", "adapter": "sparse-squad", "sparse": True, "with_dense": True},
}
RUNTIMES = ("eager_bf16", "bf16_matmul", "bf16_weights", "compile", "int8_dynamic", "onnxruntime", "openvino")


def options(mode: str) -> EmbedOptions:
    kw: dict[str, Any] = {"mode": mode, **MODES[mode]}
    return EmbedOptions(**kw)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def sparse_cosine(a: Any, b: Any) -> np.ndarray:
    """Per-text cosine of two learned-sparse outputs (ids, weights) over their union of terms."""
    out = []
    for (ia, wa), (ib, wb) in zip(a, b):
        da, db = dict(zip(ia.tolist(), wa.tolist())), dict(zip(ib.tolist(), wb.tolist()))
        dot = sum(w * db.get(t, 0.0) for t, w in da.items())
        na, nb = np.sqrt(sum(w * w for w in da.values())), np.sqrt(sum(w * w for w in db.values()))
        out.append(dot / max(na * nb, 1e-12))
    return np.asarray(out)


def embed(engine: EmbeddingEngine, texts: list[str], o: EmbedOptions, batch: int) -> Any:
    res = engine.embed_direct(texts, o, batch_size=batch)
    return res.vectors, res.sparse


def timed_ratio(
    ref: EmbeddingEngine, run: EmbeddingEngine, texts: list[str], o: EmbedOptions, batch: int, repeats: int
) -> dict[str, Any]:
    """Per repeat: eager and runtime over the same batches, alternating batch by batch -> ratios."""
    ratios, t_ref, t_run = [], [], []
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    for r in range(repeats):
        a = b = 0.0
        for i, chunk in enumerate(chunks):
            order = (ref, run) if (i + r) % 2 == 0 else (run, ref)
            for eng in order:
                t = time.perf_counter()
                eng.embed_direct(chunk, o, batch_size=batch)
                dt = time.perf_counter() - t
                if eng is ref:
                    a += dt
                else:
                    b += dt
        ratios.append(a / b)
        t_ref.append(a)
        t_run.append(b)
    return {
        "speedup": round(statistics.median(ratios), 3),
        "speedup_min": round(min(ratios), 3),
        "speedup_max": round(max(ratios), 3),
        "eager_s": [round(x, 3) for x in t_ref],
        "runtime_s": [round(x, 3) for x in t_run],
    }


def compare(a: tuple[np.ndarray, Any], b: tuple[np.ndarray, Any], sparse: bool) -> dict[str, float]:
    cos = (unit(a[0]) * unit(b[0])).sum(axis=1)
    out = {"cos_min": round(float(cos.min()), 5), "cos_mean": round(float(cos.mean()), 5)}
    if sparse:
        sc = sparse_cosine(a[1], b[1])
        out.update(sparse_cos_min=round(float(sc.min()), 5), sparse_cos_mean=round(float(sc.mean()), 5))
    return out


def sts(vectors: np.ndarray, texts: list[str], s1: list[str], s2: list[str], gold: np.ndarray) -> float:
    table = unit(vectors)
    index = {t: i for i, t in enumerate(texts)}
    cos = (table[[index[t] for t in s1]] * table[[index[t] for t in s2]]).sum(axis=1)
    return round(spearman(cos, gold), 4)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stsb", type=Path, required=True, help="folder with train.tsv and dev.tsv")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES))
    ap.add_argument("--select-texts", type=int, default=256, help="STS-B train sentences for speed and cosine")
    ap.add_argument("--dev-pairs", type=int, default=0, help="STS-B dev pairs reported (0 = all 1,500)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/embed_runtime.json")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    adapters = (ROOT / "adapters",)
    fp32 = load_backbone(BackboneConfig(dtype="float32", adapter_dirs=adapters))
    reference = EmbeddingEngine(fp32)
    train1, train2, _ = read_sts(args.stsb / "train.tsv")
    select_texts = list(dict.fromkeys(train1 + train2))[: args.select_texts]
    s1, s2, gold = read_sts(args.stsb / "dev.tsv")
    if args.dev_pairs:
        s1, s2, gold = s1[: args.dev_pairs], s2[: args.dev_pairs], gold[: args.dev_pairs]
    dev_texts = list(dict.fromkeys(s1 + s2))

    engines: dict[str, Callable[[], EmbeddingEngine | str]] = {
        "eager_bf16": lambda: EmbeddingEngine(load_backbone(BackboneConfig(dtype="bfloat16", adapter_dirs=adapters))),
        "bf16_matmul": lambda: EmbeddingEngine(fp32, EngineConfig(runtime="bf16_matmul")),
        "bf16_weights": lambda: EmbeddingEngine(fp32, EngineConfig(runtime="bf16_weights")),
        "compile": lambda: EmbeddingEngine(fp32, EngineConfig(runtime="compile")),
        # a fresh export each run, timed like the others' first-call costs
        "onnxruntime": lambda: EmbeddingEngine(
            fp32, EngineConfig(runtime="onnxruntime", runtime_cache=Path(tempfile.mkdtemp(prefix="lodestar-onnx-")))
        ),
        "int8_dynamic": lambda: int8_engine(fp32),
        **{name: _external(name, fp32) for name in EXTERNAL},
    }
    result: dict[str, Any] = {
        "machine": {
            "cpu": cpu_name(),
            "flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()],
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "load_avg_start": os.getloadavg(),
        },
        "select_on": f"STS-B train, first {len(select_texts)} distinct sentences",
        "report_on": f"STS-B dev, {len(gold)} pairs ({len(dev_texts)} sentences)",
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "modes": {},
    }
    built: dict[str, EmbeddingEngine | str] = {}
    for mode in args.modes:
        o = options(mode)
        sparse = bool(o.sparse)
        t = time.perf_counter()
        ref_sel = embed(reference, select_texts, o, args.batch_size)
        ref_dev = embed(reference, dev_texts, o, args.batch_size)
        row: dict[str, Any] = {
            "options": {k: v for k, v in MODES[mode].items()},
            "eager_fp32": {"dev_spearman": sts(ref_dev[0], dev_texts, s1, s2, gold), "dev_s": time.perf_counter() - t},
        }
        print(f"== {mode}: eager fp32 dev spearman {row['eager_fp32']['dev_spearman']}", file=sys.stderr, flush=True)
        for name in args.runtimes:
            try:
                if name not in built:  # built once, reused by every mode (exports and compiles are slow)
                    built[name] = engines[name]()
                engine = built[name]
            except Exception as exc:  # a runtime that cannot be built here is a result, not a crash
                row[name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
                print(f"   {name}: {row[name]['error']}", file=sys.stderr, flush=True)
                continue
            if isinstance(engine, str):
                row[name] = {"skipped": engine}
                continue
            try:
                skip = getattr(engine, "cannot_run", lambda o: None)(o)
                if skip:
                    row[name] = {"skipped": skip}
                    continue
                embed(engine, select_texts[: args.batch_size], o, args.batch_size)  # warm up / compile
                sel = compare(ref_sel, embed(engine, select_texts, o, args.batch_size), sparse)
                timing = timed_ratio(reference, engine, select_texts, o, args.batch_size, args.repeats)
                dev = embed(engine, dev_texts, o, args.batch_size)
                row[name] = {
                    "select": {**sel, **timing},
                    "dev": {**compare(ref_dev, dev, sparse), "spearman": sts(dev[0], dev_texts, s1, s2, gold)},
                    "fallback": engine.runtime.runtime.unsupported(engine.backbone, engine.prepare(["a"], o).spec)
                    if hasattr(engine, "runtime")
                    else None,
                }
            except Exception as exc:
                row[name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            print(f"   {name}: {json.dumps(row[name])[:300]}", file=sys.stderr, flush=True)
        result["modes"][mode] = row
        result["machine"]["load_avg_end"] = os.getloadavg()
        write_json(args.out, result)
    return 0


def _external(name: str, fp32: Any) -> Callable[[], EmbeddingEngine | str]:
    return lambda: external_engine(name, fp32)


def int8_engine(fp32: Any) -> EmbeddingEngine | str:
    """torch.ao dynamic int8 (weights int8 per channel, activations quantised per batch) on every
    Linear of the decoder layers, on a copy of the fp32 model (no adapters: they wrap the Linears)."""
    from torch.ao.quantization import quantize_dynamic

    from lodestar.backbone import Backbone

    model = copy.deepcopy(fp32.model)
    model.model.layers = quantize_dynamic(model.model.layers, {torch.nn.Linear}, dtype=torch.qint8)
    engine = EmbeddingEngine(Backbone.from_model(model, fp32.tokenizer, fp32.model_id))
    engine.cannot_run = lambda o: "no adapters on the quantised copy" if o.adapter else None  # type: ignore[attr-defined]
    return engine


def cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    for line in cpu_flags().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
