"""The collections of an engine: one folder each under `root`, created, dropped, listed, snapshotted,
restored and rebuilt here.

A create writes the new collection in a hidden folder and renames it into place (it appears whole
or not at all); a drop renames it aside before deleting it. Both leftovers of a crash are removed
at the next start. The registry lock guards the set of collections; each collection's own lock
guards its contents (`collection.py`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.embedding import SPARSE_CAP, Embedder
from lodestar.errors import AlreadyExists, InvalidInput, NotFound, Unavailable, shown
from lodestar.retrieve.collection import Collection, disk_space
from lodestar.retrieve.dense import DenseIndex
from lodestar.retrieve.persistence import Persistence
from lodestar.retrieve.prepare import embed_options, embed_sparse
from lodestar.retrieve.shards import check_shards
from lodestar.retrieve.snapshot import CorruptSnapshot, fsync_dir, read_snapshot, snapshot_bytes, write_snapshot
from lodestar.retrieve.store import Store
from lodestar.retrieve.types import DENSE_KINDS, METRICS, SPARSE_KINDS, CollectionConfig, CollectionStats

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
MAX_PATH_CHARS = 4096
NAME_RULE = "use 1 to 64 characters from A-Z a-z 0-9 _ . - , not starting with '.' or '-'"
MAX_CHUNK_TOKENS = 8192


class Catalog:
    """The named collections under `root`, opened at start; thread-safe (a registry lock, a lock per collection)."""

    def __init__(
        self, root: Path, embedder: Embedder, persistence: Persistence, restore_dirs: tuple[Path, ...] = ()
    ) -> None:
        self.root = root
        self.embedder = embedder
        self.persistence = persistence
        self.restore_dirs = restore_dirs  # resolved; () = any folder the server can read
        self.lock = threading.Lock()  # the registry: create, drop, list, close
        self.closed = False
        self.collections: dict[str, Collection] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.root.iterdir()):
            if not path.is_dir():
                continue
            if path.name.startswith((".create-", ".drop-")):  # an interrupted create or drop
                shutil.rmtree(path, ignore_errors=True)
                continue
            if NAME_RE.fullmatch(path.name):
                self.collections[path.name] = self.persistence.open(path)
                c = self.collections[path.name]
                if c.status != "ok":
                    log.error("collection %r is not serving: %s", c.name, c.status)

    def get(self, name: str) -> Collection:
        """The open collection `name`. NotFound names only the one asked for (never the others: a
        caller may not be allowed to know them); a name no collection could have says why."""
        if self.closed:
            raise Unavailable("the retrieval engine is closed")
        if not isinstance(name, str) or not name:
            raise InvalidInput("collection name is empty")
        if not NAME_RE.fullmatch(name):
            raise NotFound(
                f"collection {shown(name)} does not exist: collection names {NAME_RULE.removeprefix('use ')}"
            )
        c = self.collections.get(name)
        if c is None:
            raise NotFound(f"collection {name!r} does not exist (ListCollections lists the ones there are)")
        return c

    def _validate_config(self, config: CollectionConfig) -> int:
        """Check every field of a new collection's config; returns its vector dimension."""
        name = config.name
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InvalidInput(f"bad collection name {shown(name)}: {NAME_RULE}")
        self.embedder.check_mode(config.mode)
        for field_name in ("query_prompt", "doc_prompt"):
            try:
                self.embedder.check_mode(config.mode, getattr(config, field_name))
            except InvalidInput as e:
                raise InvalidInput(f"{field_name}: {e}") from None
        if config.metric not in METRICS:
            raise InvalidInput(f"unknown metric {config.metric!r}: valid metrics are {', '.join(METRICS)}")
        if config.sparse not in SPARSE_KINDS:
            raise InvalidInput(f"unknown sparse kind {config.sparse!r}: valid kinds are {', '.join(SPARSE_KINDS)}")
        if config.dense not in DENSE_KINDS:
            raise InvalidInput(f"unknown dense kind {config.dense!r}: valid kinds are {', '.join(DENSE_KINDS)}")
        if config.dense == "none" and config.sparse == "none":
            raise InvalidInput("dense='none' and sparse='none' leave nothing to search: keep at least one side")
        if config.sparse == "learned":
            self.embedder.check_mode(config.sparse_mode)
            for key in ("sparse_top_k", "query_top_k"):
                value = getattr(config, key)
                if not isinstance(value, int) or not 1 <= value <= SPARSE_CAP:
                    raise InvalidInput(f"{key}={value} is out of range: use 1..{SPARSE_CAP}")
        hidden = self.persistence.hidden_size
        if not isinstance(config.dimensions, int) or not 0 <= config.dimensions <= hidden:
            raise InvalidInput(
                f"dimensions={config.dimensions} is out of range: use 1..{hidden} (or 0 for all {hidden})"
            )
        if not isinstance(config.chunk_tokens, int) or not 0 <= config.chunk_tokens <= MAX_CHUNK_TOKENS:
            raise InvalidInput(
                f"chunk_tokens={config.chunk_tokens} is out of range: use 0 (no chunking) to {MAX_CHUNK_TOKENS}"
            )
        max_tokens = getattr(self.embedder, "max_tokens", None)
        if isinstance(max_tokens, int) and config.chunk_tokens > max_tokens:
            raise InvalidInput(
                f"chunk_tokens={config.chunk_tokens} is above the embedding model's max_tokens={max_tokens}: chunks would be truncated"
            )
        if config.chunk_tokens and (
            not isinstance(config.chunk_overlap, int) or not 0 <= config.chunk_overlap < config.chunk_tokens
        ):
            raise InvalidInput(
                f"chunk_overlap={config.chunk_overlap} must be at least 0 and less than chunk_tokens={config.chunk_tokens}"
            )
        check_shards(config.shards)
        dim = self.persistence.width(config)
        if dim:
            DenseIndex.validate(dim, config.index, config.metric)
        return dim

    def validate_new(self, config: CollectionConfig) -> int:
        """Check a new collection's config (every backend's), then probe the embedder with it (what only
        it knows: adapter, prompts, the width); returns the collection's vector dimension."""
        dim = self._validate_config(config)
        for query in (False, True):  # the embedder checks what only it knows (adapter, prompts) and the width
            if config.dense == "none" and config.sparse != "learned":
                break  # a BM25-only collection runs no model forward
            vectors = self.embedder.embed(["probe"], embed_options(config, query)).vectors if dim else np.empty((1, 0))
            if np.asarray(vectors).shape != (1, dim):
                raise InvalidInput(
                    f"the embedder returned shape {np.asarray(vectors).shape} for dimensions={config.dimensions}; expected (1, {dim})"
                )
            if config.sparse == "learned":
                try:
                    embed_sparse(self.embedder, config, ["probe"], query)
                except InvalidInput as e:
                    raise InvalidInput(
                        f"sparse encoder (sparse_mode={config.sparse_mode!r}, sparse_adapter={config.sparse_adapter!r}): {e}"
                    ) from None
        return dim

    # --- collections -------------------------------------------------------------------------

    def create(self, config: CollectionConfig) -> CollectionStats:
        """Create an empty collection; its config is fixed from now on."""
        if self.closed:
            raise Unavailable("the retrieval engine is closed")
        dim = self.validate_new(config)
        if config.name in self.collections:
            raise AlreadyExists(f"collection {config.name!r} already exists")
        with self.lock:
            if self.closed:
                raise Unavailable("the retrieval engine is closed")
            final = self.root / config.name
            if config.name in self.collections or final.exists():
                raise AlreadyExists(f"collection {config.name!r} already exists")
            tmp = self.root / f".create-{config.name}-{secrets.token_hex(4)}"
            tmp.mkdir()
            try:
                meta = {"dim": str(dim), "model": self.persistence.model_id(), "collection": config.name}
                Store.initialise(tmp, asdict(config), meta)
                fsync_dir(tmp)
                os.rename(tmp, final)  # the collection appears whole or not at all
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_dir(self.root)
            c = self.persistence.open(final)
            self.collections[config.name] = c
        return self.stats(config.name)

    def drop(self, name: str) -> None:
        """Delete a collection and its files."""
        with self.lock:
            c = self.get(name)
            del self.collections[name]
        with c.lock.write():
            c.closed = "dropped"
            if c.store is not None:
                c.store.close()
            trash = self.root / f".drop-{name}-{secrets.token_hex(4)}"
            try:
                os.rename(c.directory, trash)  # gone at once; a crash before rmtree is cleaned on start
            except (
                OSError
            ) as e:  # the folder is still there: serve it again rather than have it reappear at the next start
                with self.lock:
                    if not self.closed and name not in self.collections:
                        self.collections[name] = self.persistence.open(c.directory)
                raise Unavailable(
                    f"collection {name!r} was not dropped: moving its folder {c.directory} aside failed ({e}); "
                    f"it is still served; fix the cause and drop it again"
                ) from e
            fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def list(self) -> list[CollectionStats]:
        """Stats of every collection, by name."""
        if self.closed:
            raise Unavailable("the retrieval engine is closed")
        out = []
        for name in sorted(self.collections):
            try:
                out.append(self.stats(name))
            except NotFound:  # dropped meanwhile
                pass
        return out

    def config(self, name: str) -> CollectionConfig:
        """The collection's config as created."""
        c = self.get(name)
        if c.config is None:
            raise Unavailable(f"collection {name!r} is not serving: {c.status}")
        return c.config

    def status(self) -> dict[str, str]:
        """collection -> "ok" or why it is not serving."""
        return {name: c.status for name, c in sorted(self.collections.items())}

    # --- maintenance -------------------------------------------------------------------------

    def snapshot(self, name: str) -> dict[str, Any]:
        """Write the collection's indexes as a verified snapshot now; returns the manifest."""
        c = self.get(name)
        with c.lock.write():
            c.check_serving()
            with disk_space(
                f"the snapshot of collection {name!r}", "the previous snapshot is kept and the collection keeps serving"
            ):
                return self.persistence.snapshot_locked(c)

    def restore(self, name: str, snapshot_dir: Path) -> CollectionStats:
        """Load a verified snapshot of this collection (e.g. a backup copy), then replay the store's
        log (or rebuild from the store if the log no longer reaches back to the snapshot)."""
        c = self.get(name)
        text = str(snapshot_dir)
        if not text or "\x00" in text or len(text) > MAX_PATH_CHARS:
            raise InvalidInput(
                f"cannot restore {name!r} from {shown(text)}: give a folder path of 1 to {MAX_PATH_CHARS} characters without NUL"
            )
        snapshot_dir = Path(snapshot_dir)
        if self.restore_dirs and not any(snapshot_dir.resolve().is_relative_to(d) for d in self.restore_dirs):
            # said before the path is touched: the answer tells nothing of what exists outside them
            raise InvalidInput(
                f"cannot restore {name!r} from {shown(text)}: snapshots are read only from "
                f"{', '.join(map(str, self.restore_dirs))} (LODESTAR_RESTORE_DIRS)"
            )
        try:
            files, manifest = read_snapshot(snapshot_dir)
        except CorruptSnapshot as e:
            raise InvalidInput(f"cannot restore {name!r}: {e}") from None
        with c.lock.write():
            c.check_open()
            if c.store is None or c.config is None:
                raise Unavailable(f"collection {name!r} is not serving: {c.status}")
            self.persistence.check_width(c, "restored")  # else a restore would mark an incompatible collection "ok"
            try:
                loaded = self.persistence.read_indexes(c, (files, manifest))
            except CorruptSnapshot as e:
                raise InvalidInput(f"cannot restore {name!r} from {snapshot_dir}: {e}") from None
            if snapshot_dir.resolve() != c.snapshot_dir.resolve():
                meta = {k: v for k, v in manifest.items() if k not in ("format_version", "files")}
                with disk_space(
                    f"the snapshot of collection {name!r}",
                    f"nothing was restored; the collection is as it was ({c.status})",
                ):
                    write_snapshot(c.snapshot_dir, files, meta)
            self.persistence.load(c, use_snapshot=True, loaded=loaded)
            if c.status == "ok" and c.applied_seq != c.snapshot_seq:
                with disk_space(
                    f"the snapshot of collection {name!r}",
                    "the collection was restored and serves; its snapshot on disk is the restored one",
                ):
                    self.persistence.snapshot_locked(c)
        return self.stats(name)

    def rebuild(self, name: str) -> CollectionStats:
        """Rebuild the indexes from the store (vectors and texts), dropping tombstones; clears a
        corrupt status and writes a fresh snapshot."""
        c = self.get(name)
        with c.lock.write():
            c.check_open()
            if c.store is None or c.config is None:
                reopened = self.persistence.open(c.directory)  # the folder may have been restored by hand
                if reopened.store is None:
                    raise Unavailable(f"collection {name!r} cannot be rebuilt: {c.status}")
                c.store, c.config, c.dim = reopened.store, reopened.config, reopened.dim
            self.persistence.check_width(c, "rebuilt")
            self.persistence.load(c, use_snapshot=False)
            if c.status != "ok":
                raise Unavailable(f"collection {name!r} could not be rebuilt: {c.status}")
            with disk_space(
                f"the snapshot of collection {name!r}",
                "the indexes were rebuilt and serve; the snapshot on disk was not updated",
            ):
                self.persistence.snapshot_locked(c)
        return self.stats(name)

    def stats(self, name: str) -> CollectionStats:
        """Counts, index state and bytes on disk."""
        c = self.get(name)
        with c.lock.read():
            c.check_open()
            documents, chunks = c.store.counts() if c.store is not None else (0, 0)
            size = (c.store.disk_bytes() if c.store is not None else 0) + snapshot_bytes(c.snapshot_dir)
            cfg = c.config
            dense = c.dense if c.status == "ok" else None
            return CollectionStats(
                name=c.name,
                documents=documents,
                chunks=chunks,
                index=cfg.index if cfg else "",
                trained=bool(dense.trained) if dense is not None else False,
                index_vectors=int(dense.count) if dense is not None else 0,
                bytes=size,
                dimensions=c.dim,
                sparse=cfg.sparse if cfg else "",
                status=c.status,
                note=str(dense.note or "") if dense is not None else "",
                dense=cfg.dense if cfg else "",
                calibration=c.calibration,
            )

    def close(self) -> None:
        """Snapshot collections with unsnapshotted changes, then close every store."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            collections = list(self.collections.values())
        for c in collections:
            with c.lock.write():
                if c.closed:
                    continue
                if c.status == "ok" and c.store is not None and c.applied_seq > c.snapshot_seq:
                    try:
                        self.persistence.snapshot_locked(c)
                    except Exception:
                        log.exception("collection %r: snapshot on close failed (the store has every write)", c.name)
                c.closed = "closed"
                if c.store is not None:
                    c.store.close()
