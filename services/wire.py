"""Wire helpers every service's conversion shares, on the server and in the client: proto enums to
the engines' names and back, JSON object fields, and "unset = engine default" field reading."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar, cast

from google.protobuf.message import Message

from lodestar.errors import InvalidInput
from lodestar.retrieve.prepare import TOO_DEEP

if TYPE_CHECKING:
    # the generic base of the enum wrappers mypy-protobuf generates (stub-only): `name_to_enum(rpb.Retriever, ...)`
    # then returns `rpb.Retriever.ValueType`, what the message constructors take
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

_V = TypeVar("_V", bound=int)


def _prefix(enum: _EnumTypeWrapper[Any]) -> str:
    """RETRIEVER_UNSPECIFIED -> RETRIEVER_: the prefix every value of a closed-set enum carries."""
    return enum.Name(0).removesuffix("UNSPECIFIED")


def enum_names(enum: _EnumTypeWrapper[Any]) -> list[str]:
    """The engine names of an enum's values, in number order ("dense", "sparse", ...)."""
    prefix = _prefix(enum)
    return [name.removeprefix(prefix).lower() for name, number in enum.items() if number != 0]


def enum_to_name(enum: _EnumTypeWrapper[Any], value: int, what: str) -> str:
    """RETRIEVER_DENSE -> "dense"; 0 (unspecified) -> ""; a number this server does not know ->
    InvalidInput naming the valid ones (proto3 keeps unknown enum numbers instead of refusing them)."""
    if value == 0:
        return ""
    try:
        name = enum.Name(value)
    except ValueError:
        raise InvalidInput(f"{what}: unknown value {value}; valid are {', '.join(_valid(enum))}") from None
    return name.removeprefix(_prefix(enum)).lower()


def name_to_enum(enum: _EnumTypeWrapper[_V], name: str, what: str) -> _V:
    """ "dense" -> RETRIEVER_DENSE; "" -> 0 (the engine's default); anything else -> ValueError naming the valid ones."""
    if not name:
        return cast(_V, 0)
    try:
        return enum.Value(_prefix(enum) + name.upper())
    except ValueError:
        raise ValueError(f"unknown {what} {name[:200]!r}: valid are {', '.join(enum_names(enum))}") from None


def stored_name_to_enum(enum: _EnumTypeWrapper[_V], name: str) -> _V:
    """A stored engine name -> its enum number (0 for a name the enum lacks: never raised on output)."""
    return dict(enum.items()).get(_prefix(enum) + name.upper(), cast(_V, 0))


def _valid(enum: _EnumTypeWrapper[Any]) -> list[str]:
    return [f"{name} ({number})" for name, number in enum.items() if number != 0]


def chosen(enum: _EnumTypeWrapper[Any], value: int, legacy: str, what: str) -> str:
    """The engine name an enum field picks, else the deprecated string field it replaced, else ""."""
    return enum_to_name(enum, value, what) or legacy


def set_fields(msg: Message, names: tuple[str, ...]) -> dict[str, Any]:
    """{name: value} for the optional fields of `msg` that are set: unset ones keep the engine's default."""
    return {name: getattr(msg, name) for name in names if msg.HasField(name)}


def json_object(text: str, what: str) -> dict[str, Any]:
    """A JSON object field ("" = {}); malformed, non-object or too deep -> InvalidInput saying which."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc.msg} at char {exc.pos}") from None
    except RecursionError:
        raise InvalidInput(f"{what} is {TOO_DEEP}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
