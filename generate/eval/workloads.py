"""The two speculative-decoding benchmark workloads, built from data on this disk.

(a) Code completion: the datastore is the Python standard library's source (tests excluded); prompts
    are the opening of functions (preceding lines + signature + docstring) from third-party packages,
    which are not in the datastore. Prompts found verbatim in the corpus are dropped and counted.
(b) RAG: SQuAD questions with their paragraph, asked through the chat template to answer from the
    passage; the passage is also the request's draft passage, and all SQuAD paragraphs form the datastore.
"""

from __future__ import annotations

import ast
import json
import random
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lodestar.errors import InvalidInput, NotFound
from lodestar.generate.corpus import iter_texts
from lodestar.generate.prompts import rag_prompt

CODE_EXCLUDE = ("test", "tests", "idle_test", "site-packages", "__pycache__")
HELD_OUT_PACKAGES = ("requests", "flask", "werkzeug", "click", "jinja2")


@dataclass
class Workload:
    name: str
    prompts: list[str]
    passages: list[list[str]] | None  # per prompt, the request's draft passages
    chat: bool  # prompts are user messages to wrap with the chat template
    max_new_tokens: int
    info: dict[str, Any] = field(default_factory=dict)


def stdlib_dir() -> Path:
    """The running interpreter's standard library folder (e.g. .../lib/python3.11)."""
    return Path(sysconfig.get_paths()["stdlib"])


def code_corpus(stdlib: str | Path | None = None) -> Iterator[str]:
    """Every .py file of the standard library, without test suites and site-packages."""
    root = Path(stdlib) if stdlib else stdlib_dir()
    return iter_texts([root], pattern="**/*.py", exclude=CODE_EXCLUDE)


def held_out_sources(site_packages: str | Path | None = None) -> list[Path]:
    """Folders of third-party packages used for prompts (present ones among HELD_OUT_PACKAGES)."""
    base = Path(site_packages) if site_packages else stdlib_dir() / "site-packages"
    return [base / p for p in HELD_OUT_PACKAGES if (base / p).is_dir()]


def _function_openings(path: Path, context_lines: int, min_body_lines: int) -> list[str]:
    """Preceding lines + def + docstring of each documented function with a real body."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (UnicodeDecodeError, SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = node.body
        first = body[0] if body else None
        if not (
            isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
        ):
            continue
        doc_end = body[0].end_lineno or body[0].lineno
        if (node.end_lineno or 0) - doc_end < min_body_lines:
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        out.append("\n".join(lines[max(0, start - context_lines) : doc_end]) + "\n")
    return out


def code_workload(
    sources: Sequence[str | Path] | None = None,
    n: int = 16,
    seed: int = 0,
    context_lines: int = 24,
    min_body_lines: int = 6,
    max_new_tokens: int = 128,
    corpus_text: str | None = None,
) -> Workload:
    """Function-completion prompts from `sources` (default: held-out third-party packages).

    `corpus_text` (the datastore's text) lets the builder drop prompts that occur verbatim in it.
    """
    folders = [Path(s) for s in sources] if sources else held_out_sources()
    if not folders:
        raise NotFound(f"no prompt sources: none of {HELD_OUT_PACKAGES} is installed; pass folders of Python code")
    candidates: list[tuple[str, str]] = []
    for folder in folders:
        files = [folder] if folder.is_file() else sorted(folder.rglob("*.py"))
        for f in files:
            for opening in _function_openings(f, context_lines, min_body_lines):
                candidates.append((str(f), opening))
    rng = random.Random(seed)
    rng.shuffle(candidates)
    prompts: list[str] = []
    origins: list[str] = []
    verbatim = 0
    for origin, text in candidates:
        if corpus_text is not None and text.strip() in corpus_text:
            verbatim += 1
            continue
        prompts.append(text)
        origins.append(origin)
        if len(prompts) >= n:
            break
    if not prompts:
        raise InvalidInput(f"no usable function openings found under {[str(f) for f in folders]}")
    return Workload(
        "code",
        prompts,
        None,
        False,
        max_new_tokens,
        {
            "sources": [str(f) for f in folders],
            "origins": origins,
            "dropped_verbatim_in_corpus": verbatim,
            "context_lines": context_lines,
            "seed": seed,
        },
    )


def read_squad(path: str | Path) -> list[dict[str, Any]]:
    """Rows of qa.jsonl (id, title, question, answers, context)."""
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"no SQuAD file at {str(p)!r} (expected qa.jsonl with id,title,question,answers,context)")
    with open(p, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def rag_corpus(path: str | Path) -> list[str]:
    """The distinct SQuAD paragraphs: the corpus a retriever would serve these questions from."""
    return list(dict.fromkeys(r["context"] for r in read_squad(path)))


def rag_workload(path: str | Path, n: int = 16, seed: int = 0, max_new_tokens: int = 64) -> Workload:
    """SQuAD questions (one per paragraph, sampled with `seed`) with their paragraph as the passage."""
    rows = read_squad(path)
    by_context: dict[str, dict[str, Any]] = {}
    for r in rows:
        by_context.setdefault(r["context"], r)
    picked = random.Random(seed).sample(list(by_context.values()), min(n, len(by_context)))
    return Workload(
        "rag",
        [rag_prompt(r["question"], r["context"]) for r in picked],
        [[r["context"]] for r in picked],
        True,
        max_new_tokens,
        {"source": str(path), "ids": [r["id"] for r in picked], "seed": seed},
    )
