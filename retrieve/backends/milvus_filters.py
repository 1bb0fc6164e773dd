"""Metadata filters as Milvus boolean expressions over a chunk's `meta` JSON field.

Lodestar's filter semantics (filters.py: JSON types respected, 1 never equals true, eq null matches
a null or missing field, ne/nin also match a missing field, ranges compare numbers with numbers and
strings with strings) are kept by storing metadata *typed*: numbers as JSON numbers, every other
scalar as a string with a type prefix (``s:`` string, ``b:1``/``b:0`` boolean, ``n:`` null, ``j:``
a nested list or object, which no scalar filter matches). An expression then compares like with like.

Every value and key is written as an escaped string or a number literal built here, never pasted:
a filter value cannot change the expression (tests/unit/test_milvus_filters.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from lodestar.retrieve.filters import MAX_FILTERS, compile_filters
from lodestar.retrieve.types import Filter

META = "meta"
NEVER = "chunk < 0"  # a chunk index is >= 0: an always-false condition (an empty `in`)
ALWAYS = "chunk >= 0"
_RANGE = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def typed(value: Any) -> Any:
    """A metadata value as stored for filtering (see the module docstring)."""
    if isinstance(value, bool):
        return "b:1" if value else "b:0"
    if isinstance(value, (int, float)):
        return value
    if value is None:
        return "n:"
    if isinstance(value, str):
        return "s:" + value
    return "j:" + json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def typed_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """A document's metadata with every top-level value typed (what a chunk's `meta` holds)."""
    return {key: typed(value) for key, value in metadata.items()}


def string_literal(text: str) -> str:
    """`text` as a double-quoted expression literal: backslash, quote and control characters escaped."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def id_list(ids: Sequence[str]) -> str:
    """Strings (document ids) as a list literal for `field in [...]`, every one escaped."""
    return "[" + ", ".join(string_literal(i) for i in ids) + "]"


def literal(value: Any) -> str:
    """A typed value (number or string) as an expression literal."""
    if isinstance(value, bool):  # typed() never returns one; guard the int branch anyway
        raise TypeError("booleans are stored typed as strings")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("filter numbers are finite")
        return repr(value)
    return string_literal(str(value))


def field_ref(key: str) -> str:
    """The JSON path of a top-level metadata key."""
    return f"{META}[{string_literal(key)}]"


def _eq(ref: str, value: Any) -> str:
    if value is None:  # null matches an explicit null or a missing key
        return f"(not exists {ref} or {ref} == {literal(typed(None))})"
    return f"({ref} == {literal(typed(value))})"


def _in(ref: str, values: Sequence[Any]) -> str:
    if not values:
        return f"({NEVER})"
    return "(" + " or ".join(_eq(ref, v) for v in values) + ")"


def _range(ref: str, op: str, value: Any) -> str:
    sign = _RANGE[op]
    if isinstance(value, str):  # strings only: stay inside the "s:" prefix range
        return f'({ref} {sign} {literal(typed(value))} and {ref} >= "s:" and {ref} < "s;")'
    return f"({ref} {sign} {literal(value)})"


def milvus_expression(filters: Sequence[Filter], max_filters: int = MAX_FILTERS) -> str:
    """The AND of `filters` as a Milvus expression ("" = no filter); validated as filters.py does
    (the same InvalidInput messages for a bad field, op or value)."""
    if compile_filters(filters, max_filters) is None:
        return ""
    clauses = []
    for f in filters:
        ref = field_ref(f.field)
        if f.op in ("in", "nin"):
            clause = _in(ref, list(f.value))
        elif f.op in _RANGE:
            clause = _range(ref, f.op, f.value)
        else:
            clause = _eq(ref, f.value)
        if f.op in ("ne", "nin"):
            # a missing key matches ne/nin, except where null is among the values (eq null matches it)
            values = f.value if f.op == "nin" else [f.value]
            clause = f"(not {clause})" if None in values else f"(not exists {ref} or not {clause})"
        clauses.append(clause)
    return " and ".join(clauses)
