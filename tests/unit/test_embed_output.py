"""Output shaping: dimension prefix + renormalisation, and dtype packing round trips."""

from __future__ import annotations

import numpy as np
import pytest

from lodestar.embed.output import DTYPES, pack, shape_vectors, unpack
from lodestar.embed.types import EmbedOptions
from lodestar.errors import InvalidInput


@pytest.fixture
def vectors() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(5, 13)).astype(np.float32)  # 13: binary rows need padding bits


def test_shape_vectors_prefix_then_renormalise(vectors: np.ndarray) -> None:
    out = shape_vectors(vectors, 4, normalize=True)
    assert out.shape == (5, 4) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    expected = vectors[:, :4] / np.linalg.norm(vectors[:, :4], axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_shape_vectors_without_normalisation_keeps_values(vectors: np.ndarray) -> None:
    np.testing.assert_array_equal(shape_vectors(vectors, None, normalize=False), vectors)
    np.testing.assert_array_equal(shape_vectors(vectors, 3, normalize=False), vectors[:, :3])


def test_shape_vectors_zero_row_stays_finite() -> None:
    out = shape_vectors(np.zeros((2, 4), dtype=np.float32), None, normalize=True)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_float_round_trip(vectors: np.ndarray, dtype: str) -> None:
    packed = pack(vectors, dtype)
    assert packed.shape == (5, 13) and packed.dtype == dtype
    assert len(packed.data) == vectors.size * np.dtype(dtype).itemsize
    back = unpack(packed.data, packed.shape, dtype)
    np.testing.assert_allclose(back.astype(np.float32), vectors, rtol=1e-3 if dtype == "float16" else 0)


def test_int8_is_per_row_symmetric(vectors: np.ndarray) -> None:
    vectors[1] *= 100.0  # a different scale per row must not matter
    packed = pack(vectors, "int8")
    assert len(packed.data) == vectors.size
    back = unpack(packed.data, packed.shape, "int8")
    assert back.dtype == np.int8
    expected = np.rint(127.0 * vectors / np.abs(vectors).max(axis=1, keepdims=True))
    np.testing.assert_array_equal(back, expected.astype(np.int8))
    assert (np.abs(back).max(axis=1) == 127).all()  # every row uses its full range
    cos = (back * vectors).sum(1) / np.linalg.norm(back, axis=1) / np.linalg.norm(vectors, axis=1)
    assert (cos > 0.999).all()


def test_binary_is_sign_bits_msb_first_padded_per_row() -> None:
    v = np.array([[1, -1, -1, -1, -1, -1, -1, 1, 0.5, -2], [-1, 1, 1, 1, 1, 1, 1, 1, -1, 3]], dtype=np.float32)
    packed = pack(v, "binary")
    assert packed.shape == (2, 10)
    assert packed.data == bytes([0b10000001, 0b10000000, 0b01111111, 0b01000000])  # 2 bytes a row
    back = unpack(packed.data, packed.shape, "binary")
    np.testing.assert_array_equal(back, (v > 0).astype(np.uint8))


def test_binary_round_trip(vectors: np.ndarray) -> None:
    packed = pack(vectors, "binary")
    assert len(packed.data) == 5 * 2  # 13 bits -> 2 bytes a row
    np.testing.assert_array_equal(unpack(packed.data, packed.shape, "binary"), vectors > 0)


def test_float16_refuses_what_it_cannot_hold() -> None:
    """Unnormalised vectors past float16's range used to go out as inf without a word."""
    ok = pack(np.array([[65504.0, -1.0]], dtype=np.float32), "float16")
    assert unpack(ok.data, ok.shape, "float16").tolist() == [[65504.0, -1.0]]
    with pytest.raises(InvalidInput, match=r"\(70000\) is beyond float16's range .*ask for dtype float32"):
        pack(np.array([[1.0, -70000.0]], dtype=np.float32), "float16")


def test_unknown_dtype_lists_the_valid_ones(vectors: np.ndarray) -> None:
    with pytest.raises(InvalidInput) as err:
        pack(vectors, "int4")
    for name in DTYPES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="float32, float16, int8, binary"):
        unpack(b"", (0, 0), "int4")


def test_engine_dimensions_and_dtypes(tiny_engine) -> None:  # type: ignore[no-untyped-def]
    texts = ["short", "a somewhat longer text"]
    raw = tiny_engine.embed(texts, EmbedOptions(normalize=False)).vectors  # (2, 64)
    res = tiny_engine.embed(texts, EmbedOptions(dimensions=16))
    assert res.vectors.shape == (2, 16)
    np.testing.assert_allclose(res.vectors, shape_vectors(raw, 16, normalize=True), atol=1e-5)
    for dtype in DTYPES:
        r = tiny_engine.embed(texts, EmbedOptions(dimensions=16, dtype=dtype))
        assert r.packed.dtype == dtype and r.packed.shape == (2, 16)
        back = unpack(r.packed.data, r.packed.shape, dtype).astype(np.float32)
        if dtype == "binary":
            np.testing.assert_array_equal(back, r.vectors > 0)
        else:
            cos = (back * r.vectors).sum(1) / np.linalg.norm(back, axis=1)
            assert (cos > 0.999).all()
