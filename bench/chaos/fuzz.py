"""A fuzzer that walks every Lodestar RPC's request descriptor and mutates its fields.

Each request starts plausible (names of a collection that exists, short texts, valid enum values)
and then 1 to 3 of its fields, at any depth, get a hostile value: empty, huge, negative, NaN and
infinities, enum numbers the server does not know, control, bidi and astral characters, deep and
wide JSON, long repeated fields. What must hold: no INTERNAL or UNKNOWN status, every status message
under 1 KB, no call outliving its deadline, and the server still answering afterwards.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from lodestar.compress_ctx.v1 import compress_pb2
from lodestar.embed.v1 import embed_pb2
from lodestar.generate.v1 import generate_pb2
from lodestar.retrieve.v1 import index_pb2, retrieve_pb2

SERVICES: list[ServiceDescriptor] = [
    embed_pb2.DESCRIPTOR.services_by_name["EmbedService"],
    retrieve_pb2.DESCRIPTOR.services_by_name["RetrieveService"],
    index_pb2.DESCRIPTOR.services_by_name["IndexService"],
    compress_pb2.DESCRIPTOR.services_by_name["CompressService"],
    generate_pb2.DESCRIPTOR.services_by_name["GenerateService"],
]
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
MAX_MESSAGE = 1024
COLLECTION = "fz"  # the fuzzer creates it (with a few documents) before it starts
MUTANT_DEPTH = 3  # nested messages filled this deep

F = FieldDescriptor
HOSTILE_STRINGS = [
    "",
    " ",
    "x" * 100_000,
    "\x00",
    "a\x00b",
    "\x01\x02\x1b[31m\x7f",
    "line\nbreak\r\n",
    "evil\u202egnp.exe",
    "\u2066\u2069\u200f",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🎉 ü",
    "\ufeff\ufffe\uffff",
    "../../../../etc/passwd",
    "/etc",
    "NaN",
    "-1",
    "[" * 5000 + "]" * 5000,
    '{"a":' * 3000 + "1" + "}" * 3000,
    "{" + ",".join(f'"k{i}":{i}' for i in range(10_000)) + "}",
    '{"x": NaN}',
    "null",
    "[]",
    '"string"',
    "é" * 20_000,
]
HOSTILE_INTS = [0, -1, 1, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1, 7, 65536]
HOSTILE_FLOATS = [0.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e308, -1e-308, 1e30, 2.5]
INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


@dataclass
class Finding:
    method: str
    code: str
    message: str
    mutations: list[str]


@dataclass
class FuzzReport:
    requests: int = 0
    codes: Counter = field(default_factory=Counter)
    bad: list[Finding] = field(default_factory=list)  # INTERNAL / UNKNOWN
    long_messages: list[Finding] = field(default_factory=list)
    overruns: list[Finding] = field(default_factory=list)  # calls that outlived their deadline
    max_message: int = 0
    methods: Counter = field(default_factory=Counter)
    server_alive: bool = True
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.bad and not self.long_messages and not self.overruns and self.server_alive

    def to_json(self) -> dict[str, Any]:
        def cut(fs: list[Finding]) -> list[dict[str, Any]]:
            return [{**f.__dict__, "message": f.message[:300]} for f in fs[:20]]

        return {
            "requests": self.requests,
            "codes": dict(self.codes.most_common()),
            "methods": len(self.methods),
            "internal_or_unknown": len(self.bad),
            "messages_over_1kb": len(self.long_messages),
            "deadline_overruns": len(self.overruns),
            "max_message_chars": self.max_message,
            "server_alive": self.server_alive,
            "seconds": round(self.seconds, 1),
            "findings": cut(self.bad) + cut(self.long_messages) + cut(self.overruns),
        }


def _plausible_string(f: Any, rng: random.Random) -> str:
    name = f.name
    if name in ("collection", "name") or name.endswith("collection"):
        return COLLECTION
    if name.endswith("_json"):
        return rng.choice(["{}", '{"topic": "a"}', '"a"', "1", '["a", "b"]'])
    if name in ("id", "job_id") or name.endswith("_id"):
        return rng.choice(["d1", "d2", "job-1"])
    if name in ("mode", "sparse_mode"):
        return rng.choice(["mean", "last", ""])
    if name in ("field",):
        return "topic"
    if name in ("op",):
        return rng.choice(["eq", "in", ""])
    return rng.choice(["hello world", "the quick brown fox", "a", "what is retrieval?"])


def _plausible(f: Any, rng: random.Random) -> Any:
    t = f.type
    if t == F.TYPE_STRING:
        return _plausible_string(f, rng)
    if t == F.TYPE_BYTES:
        return b'{"id": "x", "text": "hello"}'
    if t == F.TYPE_BOOL:
        return rng.random() < 0.3
    if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return rng.choice([0.0, 0.5, 1.0])
    if t == F.TYPE_ENUM:
        return rng.choice([v.number for v in f.enum_type.values])
    return rng.choice([0, 1, 2, 5])


def fill(msg: Message, rng: random.Random, depth: int = 0) -> None:
    """Set a plausible value in most fields of `msg`, nested messages up to MUTANT_DEPTH."""
    for f in msg.DESCRIPTOR.fields:
        if rng.random() < 0.35:
            continue
        repeated = f.is_repeated
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            continue
        if f.type == F.TYPE_MESSAGE:
            if depth >= MUTANT_DEPTH:
                continue
            if repeated:
                for _ in range(rng.randint(1, 3)):
                    fill(getattr(msg, f.name).add(), rng, depth + 1)
            else:
                fill(getattr(msg, f.name), rng, depth + 1)
                getattr(msg, f.name).SetInParent()
        elif repeated:
            getattr(msg, f.name).extend(_plausible(f, rng) for _ in range(rng.randint(1, 3)))
        else:
            setattr(msg, f.name, _plausible(f, rng))


def _hostile(f: Any, rng: random.Random) -> tuple[Any, str]:
    t = f.type
    v: Any
    if t == F.TYPE_STRING:
        v = rng.choice(HOSTILE_STRINGS)
        return v, repr(v[:40]) + (f"..({len(v)})" if len(v) > 40 else "")
    if t == F.TYPE_BYTES:
        v = rng.choice([b"", b"\xff\xfe\x00", b"{" * 10_000, b"x" * 200_000, b'{"id": "\x00", "text": ""}'])
        return v, f"bytes({len(v)})"
    if t == F.TYPE_BOOL:
        return True, "True"
    if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        v = rng.choice(HOSTILE_FLOATS)
        return v, repr(v)
    if t == F.TYPE_ENUM:
        v = rng.choice([9999, 17, -5, 2**31 - 1])
        return v, f"enum {v}"
    lo, hi = INT_RANGES.get(t, (0, 2**32 - 1))
    v = min(max(rng.choice(HOSTILE_INTS), lo), hi)
    return v, str(v)


def mutate(msg: Message, rng: random.Random, path: str = "") -> str:
    """Give one field somewhere in `msg` a hostile value; -> what was done."""
    fields = [f for f in msg.DESCRIPTOR.fields if not (f.message_type and f.message_type.GetOptions().map_entry)]
    if not fields:
        return f"{path or msg.DESCRIPTOR.name}: (no fields)"
    f = rng.choice(fields)
    where = f"{path}{f.name}"
    if f.is_repeated and rng.random() < 0.2:
        msg.ClearField(f.name)
        return f"{where}=[]"
    if f.type == F.TYPE_MESSAGE:
        if f.is_repeated:
            box = getattr(msg, f.name)
            if rng.random() < 0.25:
                item = box.add()
                fill(item, rng, MUTANT_DEPTH - 1)
                n = rng.choice([500, 2000])
                for _ in range(n - 1):
                    box.add().CopyFrom(item)
                return f"{where}=[x{n}]"
            if not box:
                fill(box.add(), rng, MUTANT_DEPTH - 1)
            return mutate(box[rng.randrange(len(box))], rng, where + "[].")
        sub = getattr(msg, f.name)
        if rng.random() < 0.2:
            msg.ClearField(f.name)
            return f"{where}=unset"
        sub.SetInParent()
        return mutate(sub, rng, where + ".")
    value, shown = _hostile(f, rng)
    if f.is_repeated:
        box = getattr(msg, f.name)
        n = rng.choice([1, 3, 1025, 5000]) if f.type != F.TYPE_STRING or len(value) < 1000 else rng.choice([1, 3])
        del box[:]
        box.extend([value] * n)
        return f"{where}=[{shown} x{n}]"
    setattr(msg, f.name, value)
    return f"{where}={shown}"


def request_for(method: MethodDescriptor, rng: random.Random) -> tuple[Message, list[str]]:
    cls = GetMessageClass(method.input_type)
    msg = cls()
    fill(msg, rng)
    mutations = [mutate(msg, rng) for _ in range(rng.randint(1, 3))]
    return msg, mutations


def _callable(channel: grpc.Channel, service: ServiceDescriptor, method: MethodDescriptor) -> Any:
    path = f"/{service.full_name}/{method.name}"
    req = GetMessageClass(method.input_type)
    resp = GetMessageClass(method.output_type)
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    return kind(path, request_serializer=req.SerializeToString, response_deserializer=resp.FromString)


def _send(call: Any, method: MethodDescriptor, requests: list[Message], deadline: float) -> None:
    arg: Any = iter(requests) if method.client_streaming else requests[0]
    result = call(arg, timeout=deadline)
    if method.server_streaming:
        for _ in result:
            pass


def prepare(channel: grpc.Channel) -> None:
    """The collection plausible requests name, with a few documents."""
    create = _callable(channel, SERVICES[1], SERVICES[1].methods_by_name["CreateCollection"])
    upsert = _callable(channel, SERVICES[1], SERVICES[1].methods_by_name["Upsert"])
    try:
        create(retrieve_pb2.CreateCollectionRequest(config=retrieve_pb2.CollectionConfig(name=COLLECTION)), timeout=60)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    docs = [
        retrieve_pb2.Document(id=f"d{i}", text=f"document {i}: the quick brown fox", metadata_json='{"topic": "a"}')
        for i in range(8)
    ]
    upsert(retrieve_pb2.UpsertRequest(collection=COLLECTION, documents=docs), timeout=120)


def fuzz(address: str, requests: int, seed: int = 0, deadline: float = 10.0, slack: float = 3.0) -> FuzzReport:
    """Send `requests` mutated requests, round-robin over every RPC, each with `deadline` seconds."""
    rng = random.Random(seed)
    report = FuzzReport()
    options = [("grpc.max_send_message_length", 256 * 1024 * 1024), ("grpc.max_receive_message_length", -1)]
    start = time.monotonic()
    with grpc.insecure_channel(address, options=options) as channel:
        prepare(channel)
        methods = [(s, m) for s in SERVICES for m in s.methods]
        calls = {(s.full_name, m.name): _callable(channel, s, m) for s, m in methods}
        for i in range(requests):
            service, method = methods[i % len(methods)]
            msgs, mutations = [], []
            for _ in range(rng.randint(1, 3) if method.client_streaming else 1):
                msg, done = request_for(method, rng)
                msgs.append(msg)
                mutations += done
            name = f"{service.name}.{method.name}"
            report.methods[name] += 1
            began = time.monotonic()
            code, message = grpc.StatusCode.OK, ""
            try:
                _send(calls[(service.full_name, method.name)], method, msgs, deadline)
            except grpc.RpcError as e:
                code, message = e.code(), e.details() or ""
            took = time.monotonic() - began
            report.requests += 1
            report.codes[code.name] += 1
            report.max_message = max(report.max_message, len(message))
            finding = Finding(name, code.name, message, mutations)
            if code in BAD_CODES:
                report.bad.append(finding)
            if len(message.encode()) >= MAX_MESSAGE:
                report.long_messages.append(finding)
            if took > deadline + slack:
                report.overruns.append(Finding(name, code.name, f"took {took:.1f}s", mutations))
        report.server_alive = alive(channel)
    report.seconds = time.monotonic() - start
    return report


def alive(channel: grpc.Channel) -> bool:
    """The server still answers a cheap call."""
    info = _callable(channel, SERVICES[0], SERVICES[0].methods_by_name["Info"])
    try:
        info(embed_pb2.InfoRequest(), timeout=30)
        return True
    except grpc.RpcError:
        return False
