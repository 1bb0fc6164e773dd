"""FAISS index specs (factory strings): which index a spec builds, whether a new collection may use it
(families that filter ids during search and grow incrementally; parameters FAISS accepts but fails on
later), and what a built index can do (physical deletes, its own ids, PQ codebook size).
`dense.py` holds the index built from them.
"""

from __future__ import annotations

import re
from typing import Any

import faiss
import numpy as np

from lodestar.errors import InvalidInput
from lodestar.retrieve.types import METRICS

SPEC_EXAMPLES = "Flat, HNSW32, IVF1024,Flat, IVF1024,PQ16"
# Limits a new collection's index spec must keep (FAISS parses these but fails, aborts or exhausts
# memory only once vectors arrive): IVF lists, HNSW neighbours per node (HNSW0/1 crash the process).
MAX_NLIST = 1 << 20
HNSW_M_RANGE = (2, 256)


def _faiss_message(exc: Exception) -> str:
    """FAISS's own explanation without the C++ function name and source location."""
    line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    match = re.match(r"^Error in .*? at \S+:\d+: (.*)$", line)
    text = match.group(1) if match else line
    return text.removeprefix("Error: ").strip()


def strip_idmap(spec: str) -> str:
    """Drop an explicit IDMap/IDMap2 component: the index supplies its own id handling."""
    parts = [p.strip() for p in spec.split(",")]
    return ",".join(p for p in parts if p not in ("IDMap", "IDMap2"))


def faiss_metric(metric: str) -> int:
    """cosine and ip are inner product in FAISS (cosine on unit vectors); l2 is squared L2."""
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def core_index(index: Any) -> Any:
    """The index under any IDMap / pre-transform wrappers (the part that decides search params)."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap, faiss.IndexPreTransform)):
        index = faiss.downcast_index(index.index)
    return index


def pq_ksub(index: Any) -> int:
    """Centroids per sub-quantizer of the first product quantizer inside `index` (0 if none)."""
    seen = 0
    while index is not None and seen < 8:
        seen += 1
        index = faiss.downcast_index(index)
        pq = getattr(index, "pq", None)
        if pq is not None:
            return int(pq.ksub)
        if isinstance(index, faiss.IndexHNSW):
            index = index.storage
        elif isinstance(index, (faiss.IndexIDMap, faiss.IndexPreTransform)):
            index = index.index
        else:
            return 0
    return 0


def removes_physically(index: Any) -> bool:
    """Whether `remove_ids` works on this index (probed on the empty index, so it costs nothing)."""
    try:
        index.remove_ids(faiss.IDSelectorBatch(np.empty(0, dtype=np.int64)))
    except RuntimeError:
        return False
    return True


def is_native_ivf(index: Any) -> bool:
    """IVF reached through pre-transforms only: it stores the caller's ids itself."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return isinstance(index, faiss.IndexIVF)


def build_index(dim: int, spec: str, metric: str) -> Any:
    """`faiss.index_factory` with its errors turned into InvalidInput naming valid examples."""
    if metric not in METRICS:
        raise InvalidInput(f"metric '{metric}' is not valid; valid metrics: {', '.join(METRICS)}")
    if not isinstance(dim, int) or dim < 1:
        raise InvalidInput(f"index dimension must be a positive integer; got {dim!r}")
    clean = strip_idmap(spec)
    if not clean:
        raise InvalidInput(f"index spec '{spec}' is empty; examples: {SPEC_EXAMPLES}")
    try:
        index = faiss.index_factory(dim, clean, faiss_metric(metric))
    except RuntimeError as exc:
        raise InvalidInput(
            f"index spec '{spec}' is not valid for dim {dim}: {_faiss_message(exc)}; examples: {SPEC_EXAMPLES}"
        ) from None
    except MemoryError:
        raise InvalidInput(
            f"index spec '{spec}' for dim {dim} does not fit in memory; examples: {SPEC_EXAMPLES}"
        ) from None
    core = core_index(index)
    filterable = (faiss.IndexFlat, faiss.IndexScalarQuantizer, faiss.IndexHNSW, faiss.IndexIVF)
    if not isinstance(core, filterable) or isinstance(core, (faiss.IndexIVFFastScan, faiss.IndexNSG)):
        raise InvalidInput(
            f"index spec '{spec}' is not supported: its FAISS index ({type(core).__name__}) cannot filter ids "
            f"during search or grow incrementally; supported families: Flat, SQ*, HNSW*, IVF* with Flat/PQ/SQ "
            f"codes (optionally behind PCA/OPQ); examples: {SPEC_EXAMPLES}"
        )
    for part in (core, getattr(core, "storage", None)):
        typed = faiss.downcast_index(part) if part is not None else None
        if typed is not None and hasattr(typed, "do_polysemous_training"):
            # index_factory turns polysemous training on for PQ: ~11 s of annealing per train for
            # codes we never search with Hamming filtering.
            typed.do_polysemous_training = False
    return index


def check_params(index: Any, spec: str) -> None:
    """InvalidInput for parameters FAISS accepts at build time but fails on (or crashes with) later:
    a transform that cannot output its width, HNSW with too few or too many neighbours, 0-bit PQ codes.
    (IVF list counts are checked in `validate` from the spec, before FAISS allocates the lists.)"""
    lo, hi = HNSW_M_RANGE
    todo, seen = [index], 0
    while todo and seen < 16:
        seen += 1
        part = faiss.downcast_index(todo.pop())
        if isinstance(part, faiss.IndexPreTransform):
            for i in range(part.chain.size()):  # type: ignore[attr-defined]  # faiss stubs: a SWIG vector, not a list
                vt = faiss.downcast_VectorTransform(part.chain.at(i))  # type: ignore[attr-defined]  # see above
                name = type(vt).__name__
                if vt.d_out < 1 or (isinstance(vt, (faiss.PCAMatrix, faiss.ITQTransform)) and vt.d_out > vt.d_in):
                    raise InvalidInput(
                        f"index spec '{spec}': {name} cannot output {vt.d_out} dimensions from {vt.d_in}: "
                        f"use 1..{vt.d_in}; examples: {SPEC_EXAMPLES}"
                    )
                if isinstance(vt, faiss.OPQMatrix) and vt.d_out % vt.M:
                    raise InvalidInput(
                        f"index spec '{spec}': OPQ{vt.M} needs an output width divisible by {vt.M}; "
                        f"got {vt.d_out}; examples: {SPEC_EXAMPLES}"
                    )
        if isinstance(part, faiss.IndexHNSW):
            levels = faiss.vector_to_array(part.hnsw.cum_nneighbor_per_level)  # [0, 2M, 3M, ...]; HNSW1 has no level 1
            if levels.size < 3 or not lo <= int(levels[2] - levels[1]) <= hi:
                raise InvalidInput(
                    f"index spec '{spec}': HNSW needs M (neighbours per node) in {lo}..{hi}, as in HNSW{lo}..HNSW{hi}; "
                    f"examples: {SPEC_EXAMPLES}"
                )
        pq = getattr(part, "pq", None)
        if pq is not None and pq.nbits < 1:
            raise InvalidInput(
                f"index spec '{spec}': PQ codes need at least 1 bit per sub-vector (x1..x24); got x{pq.nbits}; "
                f"examples: {SPEC_EXAMPLES}"
            )
        todo += [getattr(part, a) for a in ("index", "storage", "quantizer") if getattr(part, a, None) is not None]


def validate_spec(dim: int, spec: str, metric: str) -> None:
    """InvalidInput when (dim, spec, metric) cannot make an index, or one whose parameters would fail
    only when it trains or adds (`DenseIndex.validate`); nothing is kept."""
    for nlist in re.findall(r"IVF(\d+)", strip_idmap(spec)):  # checked before FAISS allocates the lists
        if not 1 <= int(nlist) <= MAX_NLIST:
            raise InvalidInput(
                f"index spec '{spec}': IVF{nlist} is out of range: use IVF1..IVF{MAX_NLIST}; examples: {SPEC_EXAMPLES}"
            )
    index = build_index(dim, spec, metric)
    check_params(index, spec)
