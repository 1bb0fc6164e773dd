"""The only module that converts between protobuf messages and domain objects."""

from __future__ import annotations

from lodestar.embed.output import Packed, unpack
from lodestar.embed.types import EmbedOptions, EmbedResult
from lodestar.embed.v1 import embed_pb2 as pb

DTYPE_TO_NAME = {
    pb.DTYPE_UNSPECIFIED: "float32",
    pb.DTYPE_FLOAT32: "float32",
    pb.DTYPE_FLOAT16: "float16",
    pb.DTYPE_INT8: "int8",
    pb.DTYPE_BINARY: "binary",
}
NAME_TO_DTYPE = {name: code for code, name in DTYPE_TO_NAME.items() if code != pb.DTYPE_UNSPECIFIED}


def embed_options(req: pb.EmbedRequest) -> EmbedOptions:
    tp = req.token_prepend
    return EmbedOptions(
        mode=req.mode,
        prompt=req.prompt,
        instruction=req.instruction,
        adapter=req.adapter,
        dimensions=req.dimensions,
        normalize=req.normalize if req.HasField("normalize") else True,
        dtype=DTYPE_TO_NAME.get(req.dtype, f"<unknown enum {req.dtype}>"),
        truncate=req.truncate != pb.TRUNCATE_NONE,
        max_tokens=req.max_tokens,
        start_layer=tp.start_layer if tp.HasField("start_layer") else None,
        end_layer=tp.end_layer if tp.HasField("end_layer") else None,
        output_layer=tp.output_layer if tp.HasField("output_layer") else None,
    )


def embed_response(result: EmbedResult, request_id: str = "") -> pb.EmbedResponse:
    return pb.EmbedResponse(
        embeddings=pb.Embeddings(
            data=result.packed.data, shape=list(result.packed.shape), dtype=NAME_TO_DTYPE[result.packed.dtype]
        ),
        token_counts=result.token_counts,
        truncated=result.truncated,
        model=result.model,
        mode=result.mode,
        request_id=request_id,
    )


def info_response(info: dict, version: str) -> pb.InfoResponse:
    return pb.InfoResponse(
        model=info["model"],
        dimensions=info["dimensions"],
        max_tokens=info["max_tokens"],
        max_texts_per_request=info["max_texts_per_request"],
        modes=[pb.ModeInfo(name=n, description=d, default_prompt=p) for n, d, p in info["modes"]],
        default_mode=info["default_mode"],
        adapters=info["adapters"],
        dtypes=info["dtypes"],
        torch_dtype=info["torch_dtype"],
        device=info["device"],
        num_layers=info["num_layers"],
        version=version,
    )


# --- client side ----------------------------------------------------------------------------


def embed_request(texts: list[str], options: EmbedOptions, request_id: str = "") -> pb.EmbedRequest:
    if options.dtype not in NAME_TO_DTYPE:
        raise ValueError(f"unknown dtype {options.dtype!r}: valid are {', '.join(NAME_TO_DTYPE)}")
    tp = pb.TokenPrependOptions(
        start_layer=options.start_layer, end_layer=options.end_layer, output_layer=options.output_layer
    )
    return pb.EmbedRequest(
        texts=texts,
        mode=options.mode,
        prompt=options.prompt,
        instruction=options.instruction,
        adapter=options.adapter,
        dimensions=options.dimensions,
        normalize=options.normalize,
        dtype=NAME_TO_DTYPE[options.dtype],
        truncate=pb.TRUNCATE_END if options.truncate else pb.TRUNCATE_NONE,
        max_tokens=options.max_tokens,
        token_prepend=tp,
        request_id=request_id,
    )


def embed_result(resp: pb.EmbedResponse) -> EmbedResult:
    """Decode a response; `vectors` holds the array in its wire dtype (binary: 0/1 per dimension)."""
    e = resp.embeddings
    shape = (int(e.shape[0]), int(e.shape[1]))
    dtype = DTYPE_TO_NAME[e.dtype]
    return EmbedResult(
        vectors=unpack(e.data, shape, dtype),
        packed=Packed(data=e.data, shape=shape, dtype=dtype),
        token_counts=list(resp.token_counts),
        truncated=list(resp.truncated),
        model=resp.model,
        mode=resp.mode,
    )


def info_dict(resp: pb.InfoResponse) -> dict:
    return {
        "model": resp.model,
        "dimensions": resp.dimensions,
        "max_tokens": resp.max_tokens,
        "max_texts_per_request": resp.max_texts_per_request,
        "modes": [{"name": m.name, "description": m.description, "default_prompt": m.default_prompt} for m in resp.modes],
        "default_mode": resp.default_mode,
        "adapters": list(resp.adapters),
        "dtypes": list(resp.dtypes),
        "torch_dtype": resp.torch_dtype,
        "device": resp.device,
        "num_layers": resp.num_layers,
        "version": resp.version,
    }
