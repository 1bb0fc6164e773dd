"""Metadata filters of a search: validated once, compiled to one SQL predicate over a document's
metadata JSON (`d.metadata`, d = the store's docs table) that selects the chunks a search may rank.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lodestar.errors import InvalidInput, shown
from lodestar.retrieve.types import Filter

FILTER_OPS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte")
MAX_FILTER_VALUES = 1024  # values in one in/nin list
MAX_FILTERS = 64  # conditions in one search (SQLite refuses an expression tree near 1000 deep)
MAX_TOTAL_VALUES = 8192  # values over all of a search's filters (SQLite's bound parameters)
MAX_FIELD_CHARS = 256
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class CompiledFilter:
    """A validated AND of metadata conditions as SQL over `d.metadata` (d = docs)."""

    sql: str
    params: tuple[Any, ...]


def _is_number(v: Any) -> bool:
    """A JSON number (bool excluded: True is an int in Python)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_scalar(v: Any, where: str) -> None:
    """A filter value SQLite compares as JSON does: null, bool, string, 64-bit int or finite float."""
    if v is None or isinstance(v, (bool, str)):
        return
    if isinstance(v, int):
        if not _INT64[0] <= v <= _INT64[1]:
            raise InvalidInput(f"{where}: integer {v} is outside the 64-bit range")
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise InvalidInput(f"{where}: {v} is not a finite number")
        return
    raise InvalidInput(
        f"{where}: value of type {type(v).__name__} is not allowed: use a string, number, boolean or null"
    )


def _eq_sql(path: str, v: Any) -> tuple[str, list[Any]]:
    """A 0/1 predicate: the field equals `v` with JSON type respected (1 never equals true)."""
    if v is None:  # null matches an explicit null or a missing field
        return "COALESCE(json_type(d.metadata, ?), 'null') = 'null'", [path]
    if isinstance(v, bool):
        return "COALESCE(json_type(d.metadata, ?) = ?, 0)", [path, "true" if v else "false"]
    if _is_number(v):
        return "COALESCE(json_type(d.metadata, ?) IN ('integer', 'real') AND json_extract(d.metadata, ?) = ?, 0)", [
            path,
            path,
            v,
        ]
    return "COALESCE(json_type(d.metadata, ?) = 'text' AND json_extract(d.metadata, ?) = ?, 0)", [path, path, v]


def _in_sql(path: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
    """A 0/1 predicate: the field equals one of `values` (grouped by JSON type, one json_each each)."""
    parts: list[str] = []
    params: list[Any] = []
    strings = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if _is_number(v)]
    bools = sorted({"true" if v else "false" for v in values if isinstance(v, bool)})
    if strings:
        parts.append(
            "COALESCE(json_type(d.metadata, ?) = 'text' AND json_extract(d.metadata, ?) IN (SELECT value FROM json_each(?)), 0)"
        )
        params += [path, path, json.dumps(strings)]
    if numbers:
        parts.append(
            "COALESCE(json_type(d.metadata, ?) IN ('integer', 'real') AND json_extract(d.metadata, ?) IN (SELECT value FROM json_each(?)), 0)"
        )
        params += [path, path, json.dumps(numbers)]
    if bools:
        parts.append(f"COALESCE(json_type(d.metadata, ?) IN ({', '.join('?' * len(bools))}), 0)")
        params += [path, *bools]
    if any(v is None for v in values):
        sql, p = _eq_sql(path, None)
        parts.append(sql)
        params += p
    return ("(" + " OR ".join(parts) + ")") if parts else "0", params


_RANGE = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def compile_filters(filters: Sequence[Filter], max_filters: int = MAX_FILTERS) -> CompiledFilter | None:
    """Validate `filters` and turn their AND into SQL; None when there are none.

    eq/ne compare a top-level metadata value with its JSON type respected; eq null matches a null or
    missing field; ne/nin also match documents without the field. Range ops compare numbers with
    numbers and strings with strings (ISO dates order correctly); other types never match.
    """
    if not filters:
        return None
    if len(filters) > max_filters:
        raise InvalidInput(f"{len(filters)} filters in one search; the limit is max_filters_per_search={max_filters}")
    total = sum(len(f.value) for f in filters if isinstance(getattr(f, "value", None), (list, tuple)))
    if total > MAX_TOTAL_VALUES:
        raise InvalidInput(f"{total} filter values in one search; the limit is {MAX_TOTAL_VALUES} over all filters")
    clauses: list[str] = []
    params: list[Any] = []
    for i, f in enumerate(filters):
        name = getattr(f, "field", None)
        where = f"filter {i} ({shown(name)} {shown(getattr(f, 'op', None), 40)})"
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"filter {i}: field is empty: name a top-level metadata key")
        if len(name) > MAX_FIELD_CHARS or '"' in name or any(ord(c) < 32 for c in name):
            raise InvalidInput(
                f"{where}: field must be at most {MAX_FIELD_CHARS} characters with no double quote or control characters"
            )
        op = getattr(f, "op", None)
        if op not in FILTER_OPS:
            raise InvalidInput(f"{where}: unknown op {shown(op, 40)}: valid ops are {', '.join(FILTER_OPS)}")
        value = f.value
        path = f'$."{name}"'
        if op in ("in", "nin"):
            if not isinstance(value, (list, tuple)):
                raise InvalidInput(f"{where}: op {op!r} needs a list of values, got {type(value).__name__}")
            if len(value) > MAX_FILTER_VALUES:
                raise InvalidInput(f"{where}: {len(value)} values; the limit is {MAX_FILTER_VALUES}")
            for v in value:
                _check_scalar(v, where)
            sql, p = _in_sql(path, value)
            clauses.append(sql if op == "in" else f"NOT {sql}")
        elif op in _RANGE:
            if not (_is_number(value) or isinstance(value, str)):
                raise InvalidInput(f"{where}: op {op!r} needs a number or a string, got {type(value).__name__}")
            _check_scalar(value, where)
            types = "IN ('integer', 'real')" if _is_number(value) else "= 'text'"
            sql = f"COALESCE(json_type(d.metadata, ?) {types} AND json_extract(d.metadata, ?) {_RANGE[op]} ?, 0)"
            p = [path, path, value]
            clauses.append(sql)
        else:
            if isinstance(value, (list, tuple, dict)):
                raise InvalidInput(f"{where}: op {op!r} needs a single value; use 'in'/'nin' for a list")
            _check_scalar(value, where)
            sql, p = _eq_sql(path, value)
            clauses.append(sql if op == "eq" else f"NOT {sql}")
        params += p
    return CompiledFilter(" AND ".join(f"({c})" for c in clauses), tuple(params))
