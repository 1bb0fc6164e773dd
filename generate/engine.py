"""The generation engine a server holds: one speculative decoder, named datastores, a concurrency cap.

Datastores are folders (see datastore.py) found by name: every subfolder holding a manifest under
the writable folder (`<data_dir>/datastores`, where AddToDatastore creates them) and under each
read-only folder in `datastore_dirs`. They open on first use (memory-mapped, verified) and stay
open. Plain Python: the servicer converts protobuf to these calls.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lodestar.backbone import Backbone
from lodestar.backbone.devices import resolve_dtype
from lodestar.errors import InvalidInput, NotFound, Overloaded
from lodestar.generate.datastore import MANIFEST, Datastore, StaleDatastore
from lodestar.generate.decoder import Cancel, DecoderConfig, SpeculativeDecoder
from lodestar.generate.types import GenerationChunk, GenerationParams
from lodestar.telemetry import NOOP, Telemetry

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class GenerateConfig:
    writable_dir: Path  # datastores created by AddToDatastore live here
    datastore_dirs: tuple[Path, ...] = ()  # more folders whose subfolders are datastores (read-only)
    default_datastore: str = ""  # a name, or a path to a datastore folder; "" = none
    max_concurrent: int = 4  # generations in flight before RESOURCE_EXHAUSTED
    max_add_texts: int = 100_000  # texts in one AddToDatastore call
    max_add_chars: int = 64 * 1024 * 1024  # characters in one call: the server holds them all while it tokenises
    # Verification is lossless only when the tree forward and a one-token forward agree on the
    # argmax. In bf16 exact logit ties are common and the two paths round differently (measured on
    # SmolLM2: a copy prompt diverged at token 43, logits 27.25 vs 27.25); fp32 keeps greedy
    # speculative output identical to plain greedy. "auto" = the backbone's own dtype.
    dtype: str = "float32"
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


@dataclass(frozen=True)
class DatastoreInfo:
    name: str
    tokens: int
    documents: int
    segments: int
    path: str
    is_default: bool


class GenerationEngine:
    def __init__(self, backbone: Backbone, config: GenerateConfig) -> None:
        dtype = backbone.dtype if config.dtype == "auto" else resolve_dtype(config.dtype, backbone.device)
        self.backbone = backbone.with_dtype(dtype)
        self.config = config
        self.decoder = SpeculativeDecoder(self.backbone, None, config.decoder)
        self._open: dict[str, Datastore] = {}
        self._lock = threading.Lock()  # the open-datastore table and the in-flight count
        # One writer per datastore name: two calls creating the same name would each build a store
        # into the same folder, the second manifest dropping (and unlinking) the first's segment.
        self._write_locks: dict[str, threading.Lock] = {}
        self._in_flight = 0
        self.telemetry: Telemetry = NOOP  # the server sets its metrics here
        self._default_name = ""
        if config.default_datastore:
            self._default_name = self._open_default(config.default_datastore)

    # --- datastores ----------------------------------------------------------------------------

    def _open_default(self, value: str) -> str:
        """Open the default datastore now (a bad one should stop start-up, not the first request)."""
        path = Path(value).expanduser()
        if (path / MANIFEST).is_file():
            name = path.name
            with self._lock:
                self._open[name] = Datastore.load(path, self.backbone.tokenizer)
            return name
        self.datastore(value)
        return value

    def _folders(self) -> dict[str, Path]:
        """name -> folder of every datastore on disk (the writable folder wins a name clash)."""
        found: dict[str, Path] = {}
        for root in (*reversed(self.config.datastore_dirs), self.config.writable_dir):
            if root.is_dir():
                for sub in sorted(root.iterdir()):
                    if (sub / MANIFEST).is_file():
                        found[sub.name] = sub
        return found

    def datastore(self, name: str) -> Datastore | None:
        """The named datastore, opened on first use; "" -> the default one (None when there is none)."""
        name = name or self._default_name
        if not name:
            return None
        with self._lock:
            if name in self._open:
                return self._open[name]
        folders = self._folders()
        if name not in folders:
            known = sorted({*folders, *self._open})
            raise NotFound(
                f"no datastore named {name!r}; available: {', '.join(known) or 'none'} "
                "(create one with AddToDatastore / `lodestar datastore build --name`)"
            )
        store = Datastore.load(folders[name], self.backbone.tokenizer)
        with self._lock:
            return self._open.setdefault(name, store)

    def list_datastores(self) -> list[DatastoreInfo]:
        names = sorted({*self._folders(), *self._open})
        out = []
        for name in names:
            store = self.datastore(name)
            assert store is not None
            out.append(self._info(name, store))
        return out

    def _info(self, name: str, store: Datastore) -> DatastoreInfo:
        return DatastoreInfo(
            name,
            store.num_tokens,
            store.num_docs,
            len(store.segments),
            str(store.path or ""),
            name == self._default_name,
        )

    def add_texts(self, name: str, texts: Iterable[str], compact: bool = False) -> DatastoreInfo:
        """Create datastore `name` under the writable folder, or append `texts` to it as one segment."""
        if not NAME_RE.fullmatch(name or ""):
            raise InvalidInput(f"datastore name {name!r} must match {NAME_RE.pattern} (letters, digits, _ . -)")
        batch = list(texts)
        if len(batch) > self.config.max_add_texts:
            raise InvalidInput(
                f"{len(batch)} texts in one call; the limit is max_add_texts={self.config.max_add_texts}"
            )
        chars = sum(len(t) for t in batch if isinstance(t, str))
        if chars > self.config.max_add_chars:
            raise InvalidInput(
                f"{chars} characters in one call; the limit is max_add_chars={self.config.max_add_chars}: split the upload"
            )
        for i, t in enumerate(batch):
            if not isinstance(t, str) or not t.strip():
                raise InvalidInput(f"text {i} is empty")
        with self._lock:
            write_lock = self._write_locks.setdefault(name, threading.Lock())
        with write_lock:
            folders = self._folders()
            writable = self.config.writable_dir / name
            if name in folders and folders[name] != writable:
                raise InvalidInput(
                    f"datastore {name!r} lives in a read-only folder ({folders[name].parent}); pick another name"
                )
            store = self.datastore(name) if name in folders else None
            if store is None:
                self.config.writable_dir.mkdir(parents=True, exist_ok=True)
                store = Datastore.build(writable, batch, self.backbone.tokenizer)
                with self._lock:
                    store = self._open.setdefault(name, store)
            else:
                try:
                    store.add(batch)
                except StaleDatastore:  # another process (the CLI on this folder) rewrote it: reopen, then add
                    with self._lock:
                        self._open.pop(name, None)
                    store = self.datastore(name)
                    assert store is not None
                    store.add(batch)
            if compact:
                store.compact()
            return self._info(name, store)

    # --- generation ----------------------------------------------------------------------------

    def stream(
        self,
        prompt: str | Sequence[int],
        params: GenerationParams,
        passages: Sequence[str] | None = None,
        datastore: str = "",
        cancel: Cancel = None,
        slot: Callable[[], None] | None = None,
    ) -> Iterator[GenerationChunk]:
        """Validate (prompt, limits, datastore name) now, then yield one chunk per decode step.
        slot: the release of a slot `admit` gave (Answer takes it before retrieving); the stream
        owns it from here. Without one, a slot is taken now."""
        try:
            store = self.datastore(datastore) if params.speculative else None
        except BaseException:
            if slot is not None:
                slot()
            raise
        release = slot or self.admit()
        try:
            chunks = self.decoder.stream(prompt, params, passages, cancel, store)
        except BaseException:
            release()
            raise
        return _Counted(chunks, release, self.telemetry)

    def admit(self) -> Callable[[], None]:
        """Take one of the max_concurrent generation slots now (Overloaded when none is free);
        -> its release, which frees it once however often it is called."""
        with self._lock:
            if self._in_flight >= self.config.max_concurrent:
                raise Overloaded(
                    f"{self._in_flight} generations in flight; the limit is "
                    f"max_concurrent_generations={self.config.max_concurrent}; retry later"
                )
            self._in_flight += 1
        done = threading.Event()

        def release() -> None:
            with self._lock:
                if not done.is_set():
                    done.set()
                    self._in_flight -= 1

        return release

    @property
    def in_flight(self) -> int:
        return self._in_flight


class _Counted:
    """Iterates a generation and releases its in-flight slot exactly once: when it ends, fails, is
    closed, or is dropped unstarted (a generator's `finally` would not run in that last case).
    Reports each step's tokens, and at the end the tokens per verification forward, to `telemetry`."""

    def __init__(
        self, chunks: Iterator[GenerationChunk], release: Callable[[], None], telemetry: Telemetry = NOOP
    ) -> None:
        self._chunks = chunks
        self._release: Callable[[], None] | None = release
        self._telemetry = telemetry

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> GenerationChunk:
        try:
            chunk = next(self._chunks)
        except BaseException:
            self.close()
            raise
        self._telemetry.generated(len(chunk.token_ids))
        if chunk.finish_reason and chunk.stats is not None:
            self._telemetry.verified(chunk.stats.tokens_per_step)
        return chunk

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
            release()

    def __del__(self) -> None:
        self.close()
