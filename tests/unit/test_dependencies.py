"""The dependency rule (DESIGN.md): `services -> {generate -> compress_ctx, retrieve, embed} -> backbone,
kernels`, plus the root `lodestar` modules (errors, text, embedding, ...) every engine may import.

Checked by parsing every engine module's imports (lazy and TYPE_CHECKING ones too): an engine that
needs another takes it as a constructor argument typed by a Protocol (`lodestar.embedding.Embedder`),
not by importing its package. Training, evaluation and benchmark code (which `lodestar serve`
never imports) may use any engine and is left out.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from lodestar.embedding import Embedder, TextEmbedder

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ("backbone", "kernels", "embed", "retrieve", "compress_ctx", "generate")
SHARED = {"backbone", "kernels"}  # every engine may import these
ALLOWED = {"generate": {"compress_ctx", "retrieve", "embed"}}  # beyond SHARED and itself
OFFLINE = {"train", "evaluate", "eval", "evaluation", "bench", "benchmarks"}  # module or folder names


def offline(rel: Path) -> bool:
    """Training, evaluation or benchmark code: a folder or module so named (or train*.py)."""
    names = [*rel.parts[1:-1], rel.stem]
    return any(n in OFFLINE or n.startswith("train") for n in names)


def engine_modules() -> list[Path]:
    """Every serving module of every engine (generated protobuf code under <engine>/v1 left out)."""
    out = []
    for engine in ENGINES:
        for path in sorted((ROOT / engine).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel.parts[1] != "v1" and not offline(rel):
                out.append(rel)
    return out


def lodestar_imports(path: Path) -> set[str]:
    """The `lodestar.*` modules a file imports anywhere in it (absolute imports; relative ones stay inside)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found |= {n for n in names if n == "lodestar" or n.startswith("lodestar.")}
    return found


def test_engines_import_only_what_the_dependency_rule_allows() -> None:
    modules = engine_modules()
    assert len(modules) > 60 and {m.parts[0] for m in modules} == set(ENGINES)  # nothing skipped by mistake
    assert not offline(Path("retrieve/engine.py")) and offline(Path("compress_ctx/train_abstractive.py"))
    broken = []
    for rel in modules:
        engine = rel.parts[0]
        may = {engine} | SHARED | ALLOWED.get(engine, set())
        for module in sorted(lodestar_imports(ROOT / rel)):
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else ""
            if target in ENGINES and target not in may:
                broken.append(
                    f"{rel} imports {module}: {engine} may import {', '.join(sorted(may - {engine}))} and the root lodestar modules"
                )
            elif target == "services" or not target:
                broken.append(f"{rel} imports {module}: engines never import the transport (services, the client)")
    assert not broken, "\n".join(broken)


def test_root_modules_import_no_engine() -> None:
    """The shared root modules sit below every engine: they import none (the package's lazy client aside)."""
    for path in sorted((ROOT / "lodestar").glob("*.py")):
        if path.name != "__init__.py":
            assert not {m for m in lodestar_imports(path) if m.split(".")[1] in (*ENGINES, "services")}, path.name


def test_embedding_engine_fits_the_embedder_protocols(tiny_engine) -> None:  # type: ignore[no-untyped-def]
    """What retrieval and compression are given (`Embedder`, `TextEmbedder`) the real engine provides."""
    for protocol in (Embedder, TextEmbedder):
        for name in protocol.__annotations__:
            assert hasattr(tiny_engine, name), name
        for name, member in vars(protocol).items():
            if callable(member) and not name.startswith("_"):
                wanted = list(inspect.signature(member).parameters)
                assert wanted == list(inspect.signature(getattr(type(tiny_engine), name)).parameters), name
