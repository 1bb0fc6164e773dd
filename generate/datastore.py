"""Token-level datastore for retrieval drafts: suffix-array segments over a tokenized corpus.

`lookup(context)` finds the longest suffix of the context that occurs in the corpus and returns the
tokens that followed it, with counts, as draft candidates (REST-style retrieval drafting).

On disk a datastore is a folder:

    manifest.json               format version, tokenizer identity, segments, {file: bytes, sha256}
    seg-<id>.tokens.npy         (n,) int32 token ids, documents joined by SEPARATOR (-1)
    seg-<id>.sa.npy             (n,) int32/int64 suffix array of that token array

Arrays are memory-mapped on load. Every file is written atomically and the manifest last, so a
crash leaves the previous datastore intact. `add()` appends a segment (old segments untouched);
`compact()` merges all segments into one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import secrets
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.durable import fsync_dir, save_npy_atomic, sha256_file, write_atomic
from lodestar.errors import InvalidInput, NotFound, Unavailable
from lodestar.generate.suffix_array import SEPARATOR, build_suffix_array, find_range
from lodestar.generate.types import Candidates

FORMAT_VERSION = 1
KIND = "lodestar.generate.datastore"
MANIFEST = "manifest.json"


class StaleDatastore(Unavailable):
    """Another process rewrote the folder since this one loaded it: writing now would drop its
    segments (reopen the datastore and retry)."""


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Any:
    """An exclusive lock shared by every process writing `folder` (flock on a file inside it)."""
    with open(folder / ".lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class CorruptDatastore(Unavailable):
    """A datastore folder failed verification (missing file, size or SHA-256 mismatch, bad manifest)."""


@dataclass(frozen=True)
class TokenizerIdentity:
    """Which tokenizer produced the token ids; the vocabulary hash decides, the name is informative."""

    name_or_path: str
    vocab_size: int
    vocab_sha256: str

    @classmethod
    def of(cls, tokenizer: Any) -> TokenizerIdentity:
        vocab = sorted(tokenizer.get_vocab().items())
        digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
        return cls(str(getattr(tokenizer, "name_or_path", "") or "?"), len(tokenizer), digest)

    def matches(self, other: TokenizerIdentity) -> bool:
        return self.vocab_size == other.vocab_size and self.vocab_sha256 == other.vocab_sha256

    def describe(self) -> str:
        return f"{self.name_or_path!r} (vocab {self.vocab_size}, sha256 {self.vocab_sha256[:12]})"


@dataclass(frozen=True)
class Segment:
    """One immutable piece of the corpus with its own suffix array."""

    tokens: np.ndarray  # (n,) int32, SEPARATOR between documents
    sa: np.ndarray  # (n,) suffix array
    docs: int
    name: str = ""  # file stem on disk ("" while only in memory)


@dataclass(frozen=True)
class LookupConfig:
    """How a lookup searches and how many candidates it returns."""

    max_match: int = 16  # longest context suffix tried
    min_match: int = 1  # shortest suffix that still counts as a match
    max_continuation: int = 12  # tokens per candidate continuation
    max_samples: int = 64  # occurrences read when the suffix is frequent (evenly strided over the SA)


def encode_texts(tokenizer: Any, texts: Iterable[str], batch_size: int = 128) -> tuple[np.ndarray, int]:
    """Tokenize texts (no special tokens) and join them with SEPARATOR; -> ((n,) int32, documents)."""
    parts: list[np.ndarray] = []
    docs = 0
    sep = np.array([SEPARATOR], dtype=np.int32)
    batch: list[str] = []

    def flush() -> None:
        nonlocal docs
        if not batch:
            return
        enc = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        for ids in enc:
            if ids:
                parts.append(np.asarray(ids, dtype=np.int32))
                parts.append(sep)
                docs += 1
        batch.clear()

    for text in texts:
        if text and text.strip():
            batch.append(text)
            if len(batch) >= batch_size:
                flush()
    flush()
    if not parts:
        return np.zeros(0, dtype=np.int32), 0
    return np.concatenate(parts), docs


def build_segment(tokens: np.ndarray, docs: int) -> Segment:
    """Index a token array: its suffix array, stored as int32 when it fits."""
    sa = build_suffix_array(tokens)
    if tokens.shape[0] < 2**31:
        sa = sa.astype(np.int32)
    return Segment(tokens=tokens, sa=sa, docs=docs)


def _longest_match(seg: Segment, ctx: tuple[int, ...], lo_m: int, hi_m: int) -> tuple[int, int, int] | None:
    """Longest m in [lo_m, hi_m] with ctx[-m:] in the segment -> (m, row_lo, row_hi), or None.

    Binary search over m is valid: if a suffix of length m occurs, so does every shorter one.
    """
    if lo_m > hi_m:
        return None
    lo, hi = find_range(seg.tokens, seg.sa, ctx[-lo_m:])
    if lo == hi:
        return None
    best = (lo_m, lo, hi)
    a, b = lo_m + 1, hi_m
    while a <= b:
        mid = (a + b) // 2
        lo, hi = find_range(seg.tokens, seg.sa, ctx[-mid:])
        if lo < hi:
            best, a = (mid, lo, hi), mid + 1
        else:
            b = mid - 1
    return best


def _continuations(
    seg: Segment, m: int, lo: int, hi: int, cfg: LookupConfig
) -> tuple[dict[tuple[int, ...], float], int]:
    """Continuations after the m-token match at SA rows [lo, hi): sampled, cut at SEPARATOR."""
    count = hi - lo
    if count > cfg.max_samples:  # rows are sorted by continuation: a stride keeps proportions
        rows = lo + (np.arange(cfg.max_samples, dtype=np.int64) * count) // cfg.max_samples
    else:
        rows = np.arange(lo, hi, dtype=np.int64)
    starts = seg.sa[rows].astype(np.int64) + m  # (S,)
    n = seg.tokens.shape[0]
    offsets = starts[:, None] + np.arange(cfg.max_continuation, dtype=np.int64)[None, :]  # (S, L)
    inside = offsets < n
    window = np.where(inside, seg.tokens[np.minimum(offsets, n - 1)], SEPARATOR)  # (S, L)
    scale = count / len(rows)
    out: defaultdict[tuple[int, ...], float] = defaultdict(float)  # weights are rescaled counts
    for row in window.tolist():
        cut = row.index(SEPARATOR) if SEPARATOR in row else len(row)
        if cut:
            out[tuple(row[:cut])] += scale
    return out, count


def _segment_file(name: str) -> bool:
    """Whether `name` is a segment's array or the temporary file of one: those the manifest does not name
    are replaced segments, or left by a writer that crashed before its manifest (the folder lock is held)."""
    return (name.startswith("seg-") and name.endswith(".npy")) or (name.startswith(".seg-") and name.endswith(".tmp"))


class Datastore:
    """Suffix-array segments over one tokenizer's ids; lookups merge across segments."""

    def __init__(
        self,
        tokenizer: Any,
        segments: Sequence[Segment] = (),
        path: Path | None = None,
        identity: TokenizerIdentity | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.path = Path(path) if path is not None else None
        self._segments: tuple[Segment, ...] = tuple(segments)
        self._write_lock = threading.Lock()  # add/compact/save; lookups read a snapshot of the tuple
        if identity is not None:
            self.__dict__["identity"] = identity

    # --- building and persistence --------------------------------------------------------------

    @cached_property
    def identity(self) -> TokenizerIdentity:
        return TokenizerIdentity.of(self.tokenizer)

    @classmethod
    def from_texts(cls, texts: Iterable[str], tokenizer: Any) -> Datastore:
        """An in-memory datastore (e.g. per request from retrieved passages); `save()` persists it."""
        tokens, docs = encode_texts(tokenizer, texts)
        return cls(tokenizer, [build_segment(tokens, docs)] if tokens.size else [])

    @classmethod
    def build(cls, path: str | Path, texts: Iterable[str], tokenizer: Any) -> Datastore:
        """Build from texts and write the folder at `path` (created; an existing datastore is replaced)."""
        store = cls.from_texts(texts, tokenizer)
        store.save(path)
        return store

    def save(self, path: str | Path | None = None) -> None:
        """Write every segment not yet in the folder, then the manifest (atomically, last)."""
        with self._write_lock:
            target = Path(path) if path is not None else self.path
            if target is None:
                raise InvalidInput("this datastore has no folder: give a path to save it to")
            if self.path is not None and target.resolve() != self.path.resolve():
                # Saving elsewhere: every segment gets written to the new folder.
                self._segments = tuple(Segment(s.tokens, s.sa, s.docs) for s in self._segments)
            self.path = target
            self._write(list(self._segments))

    def _write(self, segments: list[Segment]) -> None:
        """Persist `segments` (writing the unnamed ones) and make them the current segments."""
        assert self.path is not None
        self.path.mkdir(parents=True, exist_ok=True)
        with _folder_lock(self.path):
            old = _read_manifest(self.path) if (self.path / MANIFEST).is_file() else None
            on_disk = [str(s["name"]) for s in old["segments"]] if old else []
            mine = [s.name for s in self._segments if s.name]
            if old is not None and mine and on_disk != mine:
                raise StaleDatastore(
                    f"datastore {str(self.path)!r} was changed by another writer since this process loaded it "
                    f"(segments on disk {on_disk}, here {mine}); reopen it and retry"
                )
            self._write_locked(segments, old)

    def _write_locked(self, segments: list[Segment], old: dict[str, Any] | None) -> None:
        assert self.path is not None
        files: dict[str, dict[str, Any]] = dict(old["files"]) if old else {}
        written: list[Segment] = []
        for seg in segments:
            if not seg.name:
                name = f"seg-{secrets.token_hex(6)}"
                for suffix, arr in (("tokens", seg.tokens), ("sa", seg.sa)):
                    fname = f"{name}.{suffix}.npy"
                    size, digest = save_npy_atomic(self.path / fname, arr)
                    files[fname] = {"bytes": size, "sha256": digest}
                seg = Segment(seg.tokens, seg.sa, seg.docs, name)
            written.append(seg)
        fsync_dir(self.path)  # data files are durable before the manifest names them
        ident = self.identity
        live = {f"{s.name}.{suffix}.npy" for s in written for suffix in ("tokens", "sa")}
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "tokenizer": {
                "name_or_path": ident.name_or_path,
                "vocab_size": ident.vocab_size,
                "vocab_sha256": ident.vocab_sha256,
            },
            "segments": [{"name": s.name, "num_tokens": int(s.tokens.shape[0]), "num_docs": s.docs} for s in written],
            "files": {k: v for k, v in sorted(files.items()) if k in live},
        }
        write_atomic(self.path / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        fsync_dir(self.path)
        self._segments = tuple(written)
        for f in self.path.iterdir():  # only after the new manifest no longer names them
            if f.name not in live and _segment_file(f.name):
                f.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path, tokenizer: Any, verify: bool = True) -> Datastore:
        """Open a datastore folder (arrays memory-mapped); refuses another tokenizer's datastore."""
        folder = Path(path)
        if not (folder / MANIFEST).is_file():
            raise NotFound(f"no datastore at {str(folder)!r} (no {MANIFEST}); build one first")
        manifest = _read_manifest(folder)
        try:
            return cls._from_manifest(folder, manifest, tokenizer, verify)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # valid JSON of the wrong shape
            raise CorruptDatastore(
                f"datastore {str(folder)!r}: {MANIFEST} is malformed ({type(exc).__name__}: {exc})"
            ) from None

    @classmethod
    def _from_manifest(cls, folder: Path, manifest: dict[str, Any], tokenizer: Any, verify: bool) -> Datastore:
        t = manifest["tokenizer"]
        stored = TokenizerIdentity(str(t["name_or_path"]), int(t["vocab_size"]), str(t["vocab_sha256"]))
        mine = TokenizerIdentity.of(tokenizer)
        if not stored.matches(mine):
            raise InvalidInput(
                f"datastore {str(folder)!r} was built with tokenizer {stored.describe()}, "
                f"but the loaded model's tokenizer is {mine.describe()}; rebuild the datastore with this model"
            )
        segments = []
        for s in manifest["segments"]:
            arrays = []
            for suffix in ("tokens", "sa"):
                fname = f"{s['name']}.{suffix}.npy"
                arrays.append(_open_array(folder, fname, manifest["files"].get(fname), verify))
            tokens, sa = arrays
            if tokens.ndim != 1 or sa.shape != tokens.shape or tokens.shape[0] != int(s["num_tokens"]):
                raise CorruptDatastore(f"datastore {str(folder)!r}: segment {s['name']} has inconsistent array shapes")
            segments.append(Segment(np.asarray(tokens), np.asarray(sa), int(s["num_docs"]), str(s["name"])))
        return cls(tokenizer, segments, folder, identity=mine)

    def add(self, texts: Iterable[str]) -> int:
        """Append the texts as a new segment (persisted when the datastore has a folder); -> tokens added."""
        tokens, docs = encode_texts(self.tokenizer, texts)
        if not tokens.size:
            return 0
        seg = build_segment(tokens, docs)
        with self._write_lock:
            segments = [*self._segments, seg]
            if self.path is not None:
                self._write(segments)
            else:
                self._segments = tuple(segments)
        return int(tokens.shape[0])

    def compact(self) -> None:
        """Merge all segments into one (one suffix array: faster lookups); old files go after the swap."""
        with self._write_lock:
            if len(self._segments) <= 1:
                return
            tokens = np.concatenate([np.asarray(s.tokens) for s in self._segments])
            seg = build_segment(tokens, sum(s.docs for s in self._segments))
            if self.path is not None:
                self._write([seg])
            else:
                self._segments = (seg,)

    # --- lookup ------------------------------------------------------------------------------------

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self._segments

    @property
    def num_tokens(self) -> int:
        return sum(int(s.tokens.shape[0]) for s in self._segments)

    @property
    def num_docs(self) -> int:
        return sum(s.docs for s in self._segments)

    def lookup(
        self, context: Sequence[int], config: LookupConfig | None = None, source: str = "datastore"
    ) -> Candidates | None:
        """Continuations after the longest suffix of `context` (up to max_match tokens) found in any segment."""
        cfg = config or LookupConfig()
        segments = self._segments
        hi_m = min(cfg.max_match, len(context))
        if not segments or hi_m < cfg.min_match:
            return None
        ctx = tuple(int(t) for t in context[-hi_m:])
        found: list[tuple[Segment, int, int, int]] = []
        best = cfg.min_match
        for seg in segments:
            # Once a segment matched m tokens, the others only matter if they reach m too.
            hit = _longest_match(seg, ctx, best, hi_m)
            if hit is None:
                continue
            m, lo, hi = hit
            if m > best:
                found = [f for f in found if f[1] >= m]
                best = m
            found.append((seg, m, lo, hi))
        if not found:
            return None
        merged: defaultdict[tuple[int, ...], float] = defaultdict(float)
        occurrences = 0
        for seg, m, lo, hi in found:
            conts, count = _continuations(seg, m, lo, hi, cfg)
            for seq, weight in conts.items():
                merged[seq] += weight
            occurrences += count
        if not merged:
            return None
        return Candidates(source, best, sorted(merged.items(), key=lambda kv: -kv[1]), occurrences)

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "in memory"
        return f"Datastore({where}, {len(self._segments)} segments, {self.num_tokens} tokens, {self.num_docs} docs)"


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptDatastore(f"datastore {str(folder)!r}: unreadable {MANIFEST} ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise CorruptDatastore(f"datastore {str(folder)!r}: {MANIFEST} is not a {KIND} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CorruptDatastore(
            f"datastore {str(folder)!r}: format_version {manifest.get('format_version')!r} is not supported "
            f"(this version reads {FORMAT_VERSION}); rebuild it"
        )
    for key in ("tokenizer", "segments", "files"):
        if key not in manifest:
            raise CorruptDatastore(f"datastore {str(folder)!r}: {MANIFEST} lacks {key!r}")
    return manifest


def _open_array(folder: Path, fname: str, meta: dict[str, Any] | None, verify: bool) -> np.ndarray:
    """Memory-map one .npy after checking it against the manifest (size always, SHA-256 if `verify`)."""
    path = folder / fname
    if meta is None:
        raise CorruptDatastore(f"datastore {str(folder)!r}: {MANIFEST} does not list {fname}")
    if not path.is_file():
        raise CorruptDatastore(f"datastore {str(folder)!r}: {fname} is missing")
    if path.stat().st_size != int(meta["bytes"]):
        raise CorruptDatastore(
            f"datastore {str(folder)!r}: {fname} has {path.stat().st_size} bytes, manifest says {meta['bytes']}"
        )
    if verify and sha256_file(path) != meta["sha256"]:
        raise CorruptDatastore(f"datastore {str(folder)!r}: {fname} fails its SHA-256 check")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CorruptDatastore(f"datastore {str(folder)!r}: {fname} is not a readable .npy ({exc})") from exc
