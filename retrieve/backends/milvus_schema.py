"""How a Lodestar collection looks in Milvus: one Milvus collection of chunks, one row each.

Row: `pk` "<chunk index>:<document id>", `doc_id`, `chunk`, `start`/`end` (the chunk's span in its
document), `text` (with sparse=bm25 the chunk's terms as lodestar.text analyses them, which Milvus's BM25
function turns into the `bm25` sparse field), `vector` (the dense embedding), `learned` (sparse=learned: the SPLADE weights),
`meta` (the document's metadata, typed for filtering: milvus_filters.py), and on chunk 0 only
`doc_text` and `doc_meta` (the document as upserted, for Get and hits).

Index strings are Lodestar's (FAISS factory strings); each maps to the Milvus index that computes
the same search, or is refused naming the ones that map.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lodestar.errors import InvalidInput
from lodestar.retrieve.backends.milvus_store import MAX_VARCHAR
from lodestar.text import analyze

MILVUS_INDEXES = "Flat, HNSW{M}, IVF{n},Flat, IVF{n},SQ8, IVF{n},PQ{m}"
METRIC_TYPES = {"cosine": "COSINE", "ip": "IP", "l2": "L2"}
MAX_ID_CHARS = 4096  # doc_id column; Lodestar's max_id_bytes must fit
HNSW_EF_CONSTRUCTION = 40  # FAISS's default, so both backends build the same graph quality
HNSW_EF_SEARCH = 128  # dense.py's efSearch floor
BM25_K1, BM25_B = 1.5, 0.75  # bm25.py's
# BM25 text goes to Milvus already analysed by lodestar.text (words, stop words out, plural stemming),
# one term per word, so Milvus's standard tokenizer only splits it again on the spaces: both backends
# score the same terms
ANALYZER = {"tokenizer": "standard", "filter": ["lowercase"]}


@dataclass(frozen=True)
class DenseIndex:
    """A Milvus index type with its build parameters, and the search parameters for a search of `n`."""

    index_type: str
    params: dict[str, Any]
    nlist: int = 0

    def search_params(self, metric: str, n: int) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.index_type == "HNSW":
            params["ef"] = max(HNSW_EF_SEARCH, 2 * n)
        elif self.nlist:
            params["nprobe"] = min(self.nlist, max(16, self.nlist // 8))  # dense.py's nprobe
        return {"metric_type": METRIC_TYPES[metric], "params": params}


def dense_index(spec: str) -> DenseIndex:
    """The Milvus index for a Lodestar index string; InvalidInput names the ones that map."""
    s = spec.replace(" ", "")
    if s == "Flat":
        return DenseIndex("FLAT", {})
    if m := re.fullmatch(r"HNSW(\d+)", s):
        return DenseIndex("HNSW", {"M": int(m.group(1)), "efConstruction": HNSW_EF_CONSTRUCTION})
    if m := re.fullmatch(r"IVF(\d+),(Flat|SQ8|PQ(\d+))", s):
        nlist = int(m.group(1))
        if m.group(2) == "Flat":
            return DenseIndex("IVF_FLAT", {"nlist": nlist}, nlist)
        if m.group(2) == "SQ8":
            return DenseIndex("IVF_SQ8", {"nlist": nlist}, nlist)
        return DenseIndex("IVF_PQ", {"nlist": nlist, "m": int(m.group(3)), "nbits": 8}, nlist)
    raise InvalidInput(f"index {spec!r} has no Milvus counterpart: on backend milvus use one of {MILVUS_INDEXES}")


def bm25_text(text: str) -> str:
    """What Milvus's BM25 function reads for a chunk or a query: Lodestar's terms, space-separated."""
    return " ".join(analyze(text))


def chunk_schema(client: Any, dim: int, sparse: str) -> Any:
    """The Milvus schema of a collection's chunks (see the module docstring)."""
    from pymilvus import DataType, Function, FunctionType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_CHARS + 24)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=MAX_ID_CHARS)
    for name in ("chunk", "start", "end"):
        schema.add_field(name, DataType.INT64)
    text: dict[str, Any] = {"enable_analyzer": True, "analyzer_params": ANALYZER} if sparse == "bm25" else {}
    schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR, **text)
    schema.add_field("doc_text", DataType.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field("doc_meta", DataType.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field("meta", DataType.JSON)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    if sparse == "bm25":
        schema.add_field("bm25", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(
                name="bm25", function_type=FunctionType.BM25, input_field_names=["text"], output_field_names=["bm25"]
            )
        )
    elif sparse == "learned":
        schema.add_field("learned", DataType.SPARSE_FLOAT_VECTOR)
    return schema


def chunk_indexes(client: Any, spec: str, metric: str, sparse: str) -> Any:
    """Index params: the dense index, and the sparse one (BM25 with bm25.py's k1 and b, or inner product)."""
    dense = dense_index(spec)
    index = client.prepare_index_params()
    index.add_index(
        field_name="vector", index_type=dense.index_type, metric_type=METRIC_TYPES[metric], params=dense.params
    )
    if sparse == "bm25":
        index.add_index(
            field_name="bm25",
            index_type="SPARSE_INVERTED_INDEX",
            metric_type="BM25",
            params={"bm25_k1": BM25_K1, "bm25_b": BM25_B},
        )
    elif sparse == "learned":
        index.add_index(field_name="learned", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    return index
