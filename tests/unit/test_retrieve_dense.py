"""DenseIndex semantics on every index family: exact phase before training, deletes (physical and
tombstones), filtering inside FAISS, snapshots, compaction, and recall of the approximate indexes."""

from __future__ import annotations

import re
from collections.abc import Iterator

import faiss
import numpy as np
import pytest

from lodestar.errors import InvalidInput
from lodestar.retrieve.dense import TOMBSTONE, DenseIndex
from lodestar.retrieve.faiss_runtime import FEW_QUERIES, search_threads

DIM = 32
N = 1000
TRAIN = 400  # IVF16 and PQ4 (256 centroids per sub-quantizer) both train at 400 vectors
SPECS = ["Flat", "HNSW32", "IVF16,Flat", "IVF16,PQ4"]
APPROX_CODES = {"IVF16,PQ4"}  # lossy codes: compare against the index's own exhaustive ranking


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (what cosine scores against)."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """(ids (N,), vectors (N, D)): ids are offset so they never equal row numbers."""
    rng = np.random.default_rng(0)
    return np.arange(10_000, 10_000 + N, dtype=np.int64), rng.standard_normal((N, DIM)).astype(np.float32)


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread() -> Iterator[None]:
    """FAISS's OpenMP threads spin-wait; on a loaded 2-core box that makes HNSW adds ~30x slower."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


_BUILT: dict[tuple[str, str], bytes] = {}


def build(spec: str, ids: np.ndarray, x: np.ndarray, metric: str = "cosine") -> DenseIndex:
    """An index of `spec` holding all of (ids, x), added in two batches so training happens mid-way
    (built once per module, then restored from its snapshot: PQ training is the slow part)."""
    key = (spec, metric)
    if key not in _BUILT:
        index = DenseIndex(DIM, spec, metric=metric, train_size=TRAIN)
        index.add(ids[:300], x[:300])
        index.add(ids[300:], x[300:])
        _BUILT[key] = index.to_bytes()
    return DenseIndex.from_bytes(_BUILT[key])


def brute(q: np.ndarray, x: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k (Q, k) with ties broken by id."""
    scores = unit(q) @ unit(x).T  # (Q, N)
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


def reference(
    index: DenseIndex, q: np.ndarray, ids: np.ndarray, x: np.ndarray, allowed: np.ndarray, k: int
) -> np.ndarray:
    """Expected top-k ids among `allowed`: brute force, or for lossy codes the index's own full ranking."""
    if index.spec not in APPROX_CODES:
        mask = np.isin(ids, allowed)
        return brute(q, x[mask], ids[mask], k)[1]
    saved = index.nprobe
    index.nprobe = index.nlist  # exhaustive over the codes
    _, full = index.search(q, index.count)
    index.nprobe = saved
    return np.stack([row[np.isin(row, allowed)][:k] for row in full])


@pytest.mark.parametrize("spec", SPECS)
def test_add_search_finds_each_vector_itself(spec: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    index = build(spec, ids, x)
    assert index.count == N and index.trained and index.note == ""
    scores, found = index.search(x[:100], 10)
    assert scores.shape == found.shape == (100, 10) and scores.dtype == np.float32 and found.dtype == np.int64
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    share = np.mean(found[:, 0] == ids[:100])
    assert share >= (0.9 if spec in APPROX_CODES else 1.0)
    if spec not in APPROX_CODES:
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)  # cosine of a vector with itself


@pytest.mark.parametrize("spec", ["IVF16,Flat", "IVF16,PQ4"])
def test_untrained_phase_is_exact_then_trains(spec: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    index = DenseIndex(DIM, spec, train_size=TRAIN)
    index.add(ids[:300], x[:300])
    assert not index.trained
    assert index.note == f"{spec} trains at {TRAIN} vectors; 300 so far (searching exactly until then)"
    scores, found = index.search(x[500:520], 7)
    want_s, want_i = brute(x[500:520], x[:300], ids[:300], 7)
    np.testing.assert_array_equal(found, want_i)
    np.testing.assert_allclose(scores, want_s, atol=1e-5)
    assert index.remove(ids[:10]) == 10 and index.count == 290
    assert not np.isin(index.search(x[:10], 5)[1], ids[:10]).any()
    index.add(ids[300:410], x[300:410])  # 400 live: trains now
    assert index.trained and index.note == "" and index.count == 400
    np.testing.assert_array_equal(np.sort(index.ids()), np.sort(np.concatenate([ids[10:300], ids[300:410]])))


def test_default_train_sizes() -> None:
    assert DenseIndex(DIM, "IVF100,Flat").train_size == 3900
    assert DenseIndex(DIM, "IVF4,Flat").train_size == 256
    assert DenseIndex(DIM, "IVF16,PQ4").train_size == 39 * 256  # PQ codebooks: 39 points per centroid
    assert DenseIndex(DIM, "Flat").trained and DenseIndex(DIM, "HNSW32").trained


@pytest.mark.parametrize("spec", SPECS)
def test_removed_ids_never_return(spec: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    index = build(spec, ids, x)
    gone = ids[::7]
    assert index.remove(np.concatenate([gone, [1, 2]])) == gone.size  # unknown ids are not counted
    assert index.remove(gone) == 0
    assert index.count == N - gone.size
    _, found = index.search(x[::7], 50)  # the removed vectors themselves as queries
    assert not np.isin(found, gone).any()
    assert np.isin(found[found >= 0], ids).all()
    assert not np.isin(index.ids(), gone).any()
    _, found = index.search(x[::7], 5, allowed=ids[::7][:20])  # only removed ids allowed
    assert (found == -1).all()


def test_tombstones_on_hnsw_and_re_add(data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    index = build("HNSW32", ids, x)
    index.remove(ids[:50])
    labels = faiss.vector_to_array(index._main.id_map)
    assert (labels == TOMBSTONE).sum() == 50  # still in the graph, relabelled
    assert "50 removed vectors" in index.note and index.tombstones == 50
    # re-adding a removed id with a new vector finds the new vector, never the old one
    fresh = unit(np.random.default_rng(9).standard_normal((1, DIM)).astype(np.float32))
    index.add(ids[:1], fresh)
    scores, found = index.search(fresh, 3)
    assert found[0, 0] == ids[0] and abs(scores[0, 0] - 1.0) < 1e-4
    scores, found = index.search(x[:1], 3)
    assert found[0, 0] != ids[0]
    assert index.count == N - 49


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat", "IVF16,PQ4"])
def test_physical_removal(spec: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    index = build(spec, ids, x)
    index.remove(ids[:50])
    assert index._main.ntotal == N - 50 and index._dead == 0 and index.note == ""


@pytest.mark.parametrize("spec", SPECS)
def test_allowed_restricts_before_ranking(spec: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    index = build(spec, ids, x)
    allowed = ids[[3, 77, 500, 901, 999]]
    q = x[10:30]
    scores, found = index.search(q, 10, allowed=allowed)
    assert (found[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert all(set(row[:5]) == set(allowed) for row in found)  # exactly the 5, every time
    np.testing.assert_array_equal(found[:, :5], reference(index, q, ids, x, allowed, 5))
    top3 = index.search(q, 3, allowed=allowed)[1]
    np.testing.assert_array_equal(top3, reference(index, q, ids, x, allowed, 3))
    # unknown and duplicated ids in `allowed` are harmless; an empty set returns nothing
    np.testing.assert_array_equal(index.search(q, 3, allowed=np.concatenate([allowed, allowed, [7]]))[1], top3)
    assert (index.search(q, 3, allowed=np.empty(0, dtype=np.int64))[1] == -1).all()


@pytest.mark.parametrize("spec", ["HNSW32", "IVF16,Flat"])
def test_wide_filter_keeps_recall(spec: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    """A filter admitting 30% through the FAISS selector (exact path off) stays accurate."""
    ids, x = data
    index = build(spec, ids, x)
    index.exact_factor = 0
    allowed = ids[np.random.default_rng(1).choice(N, 300, replace=False)]
    q = x[:50] + 0.1 * np.random.default_rng(2).standard_normal((50, DIM)).astype(np.float32)
    _, found = index.search(q, 10, allowed=allowed)
    assert np.isin(found, allowed).all()
    want = reference(index, q, ids, x, allowed, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, want)])
    assert recall >= 0.95


@pytest.mark.parametrize("spec", SPECS)
def test_round_trip_gives_identical_results(spec: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    index = build(spec, ids, x)
    index.remove(ids[:30])
    index.nprobe = 5
    blob = index.to_bytes()
    assert blob == index.to_bytes()  # deterministic
    again = DenseIndex.from_bytes(blob)
    assert (again.count, again.trained, again.spec, again.metric, again.nprobe) == (
        index.count,
        index.trained,
        spec,
        "cosine",
        5,
    )
    np.testing.assert_array_equal(again.ids(), index.ids())
    for allowed in (None, ids[100:400]):
        s1, i1 = index.search(x[:40], 10, allowed=allowed)
        s2, i2 = again.search(x[:40], 10, allowed=allowed)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)
    again.add(ids[:30], x[:30])  # the restored index keeps working
    assert again.count == N


def test_round_trip_untrained_and_corrupt(data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    index = DenseIndex(DIM, "IVF16,Flat", train_size=TRAIN)
    index.add(ids[:100], x[:100])
    again = DenseIndex.from_bytes(index.to_bytes())
    assert not again.trained and again.count == 100 and again.note == index.note
    np.testing.assert_array_equal(again.search(x[:5], 4)[1], index.search(x[:5], 4)[1])
    again.add(ids[100:500], x[100:500])
    assert again.trained
    with pytest.raises(ValueError):
        DenseIndex.from_bytes(b"nonsense")
    with pytest.raises(ValueError):
        DenseIndex.from_bytes(index.to_bytes()[:-10])


def test_compact_drops_tombstones(data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    index = build("HNSW32", ids, x)
    index.remove(ids[::2])
    before = index.search(x[:50], 10)[1]
    index.compact()
    assert index._dead == 0 and index._main.ntotal == N // 2 and index.note == ""
    np.testing.assert_array_equal(index.ids(), ids[1::2])
    after = index.search(x[:50], 10)[1]
    want = brute(x[:50], x[1::2], ids[1::2], 10)[1]
    for got in (before, after):
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)]) >= 0.95
    flat = build("Flat", ids, x)
    flat.remove(ids[:5])
    flat.compact()  # nothing to do: deletes were physical
    assert flat.count == N - 5


@pytest.mark.parametrize("spec", ["Flat", "HNSW32"])
def test_l2_and_ip_scores(spec: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    q = x[:5] + 0.5
    l2 = build(spec, ids, x, metric="l2")
    scores, found = l2.search(q, 5)
    dist = np.linalg.norm(q[:, None, :] - x[None, :, :], axis=2)  # (Q, N)
    np.testing.assert_array_equal(found, ids[np.argsort(dist, axis=1)[:, :5]])
    np.testing.assert_allclose(scores, -np.sort(dist, axis=1)[:, :5], rtol=1e-4)
    ip = build(spec, ids, x, metric="ip")
    scores, found = ip.search(q, 5)
    dots = q @ x.T  # (Q, N), not normalised
    np.testing.assert_array_equal(found, ids[np.argsort(-dots, axis=1)[:, :5]])
    np.testing.assert_allclose(scores, -np.sort(-dots, axis=1)[:, :5], rtol=1e-4)
    # the exact path for selective filters on HNSW scores the same way
    allowed = ids[:4]
    scores, found = l2.search(q, 2, allowed=allowed)
    np.testing.assert_allclose(scores, -np.sort(dist[:, :4], axis=1)[:, :2], rtol=1e-4)


def test_padding_when_fewer_hits(data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    index = DenseIndex(DIM, "HNSW32")
    assert (index.search(x[:2], 3)[1] == -1).all()
    index.add(ids[:2], x[:2])
    scores, found = index.search(x[:1], 4)
    assert list(found[0, 2:]) == [-1, -1] and np.isneginf(scores[0, 2:]).all()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("HNSW0", "HNSW needs M"),  # aborted the process at the first add
        ("HNSW1", "HNSW needs M"),  # segfaulted at the first add
        ("IVF4_HNSW0,Flat", "HNSW needs M"),  # the same, inside an IVF quantizer (at training)
        ("HNSW100000", "HNSW needs M"),  # ~800 KB of neighbour lists per vector
        ("PCA64,Flat", "PCAMatrix cannot output 64 dimensions from 32: use 1..32"),  # failed at training
        ("ITQ64,Flat", "ITQTransform cannot output 64 dimensions from 32"),
        ("PCA0,Flat", "cannot output 0 dimensions"),  # every vector became empty: all scores 0
        ("OPQ7,Flat", "OPQ7 needs an output width divisible by 7"),  # failed at training
        ("IVF0,Flat", "IVF0 is out of range: use IVF1..IVF1048576"),  # failed at every search
        ("IVF100000000,Flat", "IVF100000000 is out of range"),  # bad_alloc (or gigabytes) at creation
        ("IVF4,PQ8x0", "at least 1 bit"),  # segfaulted
    ],
)
def test_specs_that_parse_but_would_fail_later_are_refused(spec: str, message: str) -> None:
    """FAISS builds these, then fails (or crashes) only when vectors arrive: a collection would
    acknowledge writes its index can never take, and every rebuild from the store would fail again."""
    with pytest.raises(InvalidInput, match=re.escape(message)) as err:
        DenseIndex.validate(DIM, spec, "cosine")
    assert f"index spec '{spec}'" in str(err.value) and "examples: Flat, HNSW32" in str(err.value)


@pytest.mark.parametrize(
    "spec", ["HNSW2", "HNSW256", "PCA16,Flat", "PCAR32,IVF4,Flat", "OPQ8_64,Flat", "IVF4_HNSW32,Flat", "HNSW8_PQ4"]
)
def test_specs_at_the_limits_work(spec: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    DenseIndex.validate(DIM, spec, "l2")
    index = DenseIndex(DIM, spec, "l2", train_size=256)
    index.add(ids[:300], x[:300])
    assert index.count == 300 and index.search(x[:1], 1)[1].shape == (1, 1)


def test_invalid_inputs(data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    with pytest.raises(InvalidInput, match=r"index spec 'IVF16,PQ5' is not valid for dim 32: .*examples: Flat, HNSW32"):
        DenseIndex.validate(DIM, "IVF16,PQ5", "cosine")
    with pytest.raises(InvalidInput, match="could not parse"):
        DenseIndex.validate(DIM, "Nope", "cosine")
    with pytest.raises(InvalidInput, match="valid metrics: cosine, ip, l2"):
        DenseIndex.validate(DIM, "Flat", "hamming")
    with pytest.raises(InvalidInput, match="not supported"):
        DenseIndex.validate(DIM, "PQ4", "cosine")  # IndexPQ cannot filter during search
    with pytest.raises(InvalidInput, match=r"train_size must be an integer >= 256"):
        DenseIndex(DIM, "IVF16,PQ4", train_size=100)
    DenseIndex.validate(DIM, "IDMap2,HNSW32", "l2")  # an explicit IDMap is accepted and ignored
    index = DenseIndex(DIM, "Flat")
    index.add(ids[:10], x[:10])
    with pytest.raises(InvalidInput, match="already in the index"):
        index.add(ids[5:6], x[5:6])
    with pytest.raises(InvalidInput, match="repeat"):
        index.add(np.array([1, 1]), x[:2])
    with pytest.raises(InvalidInput, match=r"shape \(N, 32\)"):
        index.add(ids[20:22], x[:2, :10])
    with pytest.raises(InvalidInput, match=">= 0"):
        index.add(np.array([-5]), x[:1])
    with pytest.raises(InvalidInput, match="NaN"):
        index.add(np.array([99]), np.full((1, DIM), np.nan, dtype=np.float32))
    with pytest.raises(InvalidInput, match="k must be"):
        index.search(x[:1], 0)
    with pytest.raises(InvalidInput, match=r"shape \(Q, 32\)"):
        index.search(x[0], 1)


def clustered(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random Gaussian-mixture vectors and nearby queries (embedding-like: clusters with wide spread)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, dim)).astype(np.float32)
    x = centres[rng.integers(0, 100, n)] + 1.5 * rng.standard_normal((n, dim)).astype(np.float32)
    q = centres[rng.integers(0, 100, 200)] + 1.5 * rng.standard_normal((200, dim)).astype(np.float32)
    return x, q


@pytest.mark.parametrize("spec", ["HNSW32", "IVF128,Flat"])
def test_recall_at_10_vs_flat(spec: str) -> None:
    x, q = clustered(20_000, 64, seed=3)
    ids = np.arange(20_000, dtype=np.int64)
    flat = DenseIndex(64, "Flat")
    flat.add(ids, x)
    index = DenseIndex(64, spec)  # default knobs: ef_search 128; IVF128 trains at 4992, nprobe 16
    for lo in range(0, 20_000, 5_000):
        index.add(ids[lo : lo + 5_000], x[lo : lo + 5_000])
    assert index.trained
    truth = flat.search(q, 10)[1]
    found = index.search(q, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
    assert recall >= 0.95, f"{spec} recall@10 {recall:.3f}"


@pytest.mark.gpu
def test_gpu_search_matches_cpu(data: tuple[np.ndarray, np.ndarray]) -> None:
    if DenseIndex(DIM, "Flat")._gpu_ok is False:
        pytest.skip("faiss has no GPU support here (faiss-cpu or no CUDA device)")
    ids, x = data
    for spec in ("Flat", "IVF16,Flat"):
        gpu = build(spec, ids, x)
        cpu = build(spec, ids, x)
        cpu._gpu_ok = False
        s_gpu, i_gpu = gpu.search(x[:50], 10)
        assert gpu._gpu is not None  # the clone served it
        s_cpu, i_cpu = cpu.search(x[:50], 10)
        assert np.mean(i_gpu == i_cpu) >= 0.98
        np.testing.assert_allclose(s_gpu, s_cpu, atol=1e-3)
        blob = gpu.to_bytes()  # snapshots come from the CPU copy
        assert DenseIndex.from_bytes(blob).count == N


def test_search_threads_one_for_a_few_queries_default_for_a_batch_restored_after() -> None:
    faiss.omp_set_num_threads(3)
    try:
        with search_threads(1):
            assert faiss.omp_get_max_threads() == 1
        assert faiss.omp_get_max_threads() == 3
        with search_threads(FEW_QUERIES):
            assert faiss.omp_get_max_threads() == 3
        with search_threads(1, configured=2):
            assert faiss.omp_get_max_threads() == 2
        with pytest.raises(RuntimeError), search_threads(1):
            raise RuntimeError("a failed search")
        assert faiss.omp_get_max_threads() == 3
    finally:
        faiss.omp_set_num_threads(1)
