"""Generate Python gRPC code from protos/ (grpcio-tools + mypy-protobuf).

Run by setup.py's build step and by `make protos`. A proto package `lodestar.<svc>.v1` lands in the
folder that holds the Python package `lodestar.<svc>` (see PACKAGE_DIRS), so generated imports such
as `from lodestar.embed.v1 import embed_pb2` resolve. Generated files are git-ignored.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"

# Python package -> folder (relative to the repository root). setup.py reads this map too.
PACKAGE_DIRS: dict[str, str] = {
    "lodestar": "lodestar",
    "lodestar.backbone": "backbone",
    "lodestar.embed": "embed",
    "lodestar.services": "services",
    "lodestar.kernels": "kernels",
    "lodestar.retrieve": "retrieve",
    "lodestar.compress_ctx": "compress_ctx",
    "lodestar.generate": "generate",
    # speed benchmarks (`lodestar bench ...`); the folder's scripts and results are not packages
    "lodestar.bench": "bench",
}


# Proto folders generated under another Python package (the proto package, i.e. the wire name,
# stays as written): lodestar/compress/v1 becomes lodestar.compress_ctx.v1, because the engine
# folder is compress_ctx/; lodestar/index/v1 becomes lodestar.retrieve.v1 (jobs live in retrieve/).
# protoc is told the file's virtual path with `-I<virtual>=<folder>`.
PYTHON_ALIASES: dict[str, str] = {"lodestar/compress": "lodestar/compress_ctx", "lodestar/index": "lodestar/retrieve"}


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def import_path(proto: Path) -> str:
    """The path protoc knows `proto` by, which decides the generated module's package."""
    rel = proto.relative_to(PROTO_ROOT).as_posix()
    for src, dst in PYTHON_ALIASES.items():
        if rel.startswith(src + "/"):
            return dst + rel[len(src) :]
    return rel


def generated_packages() -> dict[str, str]:
    """Python packages the protos generate (e.g. lodestar.embed.v1 -> embed/v1)."""
    out: dict[str, str] = {}
    for proto in proto_files():
        rel = Path(import_path(proto)).parent  # lodestar/embed/v1
        package = ".".join(rel.parts)
        parent, leaf = package.rsplit(".", 1)
        if parent not in PACKAGE_DIRS:
            raise SystemExit(f"{proto}: no folder holds Python package {parent!r}; add it to PACKAGE_DIRS")
        out[package] = f"{PACKAGE_DIRS[parent]}/{leaf}"
    return out


def generate() -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc  # build-time dependency only

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = [import_path(p) for p in proto_files()]
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            *(f"-I{dst}={PROTO_ROOT / src}" for src, dst in PYTHON_ALIASES.items()),
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
        ]
        plugins = _mypy_plugins()
        if plugins:
            args += [f"--plugin=protoc-gen-{name}={path}" for name, path in plugins.items()]
            args += [f"--mypy_out={tmp}", f"--mypy_grpc_out={tmp}"]
        if protoc.main(args + files) != 0:
            raise SystemExit("protoc failed")
        for package, folder in generated_packages().items():
            src = Path(tmp, *package.split("."))
            dst = ROOT / folder
            dst.mkdir(parents=True, exist_ok=True)
            (dst / "__init__.py").write_text('"""Generated from protos/; do not edit."""\n')
            for f in src.iterdir():
                if f.suffix in {".py", ".pyi"}:
                    shutil.copyfile(f, dst / f.name)
                    written.append(dst / f.name)
    return written


def _mypy_plugins() -> dict[str, str]:
    """mypy-protobuf's protoc plugins by absolute path (PATH may not hold the venv's bin)."""
    found = {}
    for name in ("mypy", "mypy_grpc"):
        exe = Path(sys.executable).parent / f"protoc-gen-{name}"
        path = str(exe) if exe.exists() else shutil.which(f"protoc-gen-{name}")
        if path:
            found[name] = path
    return found if len(found) == 2 else {}


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT))
