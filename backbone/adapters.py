"""LoRA adapters (peft) served per request: several resident, least-recently-used unloaded first."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lodestar.errors import InvalidInput

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter_config.json"


def _is_adapter(folder: Path) -> bool:
    """Whether `folder` holds a peft adapter. A name the filesystem refuses (a component over 255
    bytes, a folder the server may not read) is no adapter, not an error: the caller names the
    valid ones."""
    try:
        return (folder / ADAPTER_FILE).is_file()
    except (OSError, ValueError):
        return False


class AdapterRegistry:
    """Finds adapters by name (subfolders of `search_dirs`) or path and switches them on the model."""

    def __init__(
        self,
        model: Any,
        search_dirs: tuple[Path, ...] = (),
        max_resident: int = 4,
        max_bytes: int = 0,
        allow_paths: bool = True,
    ) -> None:
        self._model = model
        self._allow_paths = allow_paths  # False: only names of search_dirs' subfolders (no "a/b", "..", "~")
        self._search_dirs = tuple(Path(d) for d in search_dirs)
        self._max_resident = max(1, max_resident)
        self._max_bytes = max_bytes  # 0 = no memory cap; the most recent adapter always stays
        self._bytes: dict[str, int] = {}  # key -> weight bytes on disk (what loading it costs in memory)
        self._peft: Any = None  # PeftModel wrapping `model` once the first adapter loads
        self._resident: OrderedDict[str, Path] = OrderedDict()  # key -> folder, LRU order
        self._names: dict[str, str] = {}  # key -> peft adapter name
        self._lock = threading.RLock()

    def available(self) -> list[str]:
        """Adapter names offered by the search folders."""
        names: set[str] = set()
        for folder in self._search_dirs:
            if folder.is_dir():
                names.update(p.parent.name for p in folder.glob(f"*/{ADAPTER_FILE}"))
        return sorted(names)

    def resolve(self, name: str) -> tuple[str, Path]:
        """-> (key, folder). Raises InvalidInput naming the valid adapters when unknown. Without
        allow_paths only a plain name (one path component) is looked up, in the search folders."""
        plain = (
            bool(name) and name not in (".", "..") and not any(c in name for c in "/\\") and not name.startswith("~")
        )
        if plain or self._allow_paths:
            for folder in self._search_dirs:
                if _is_adapter(folder / name):
                    return name, folder / name
        offered = ", ".join(self.available()) or "none installed"
        if not self._allow_paths:
            raise InvalidInput(
                f"unknown adapter {name!r}: valid names are [{offered}] (this server takes adapter "
                "names only, not paths: LODESTAR_ADAPTER_PATHS=false)"
            )
        try:
            path = Path(name).expanduser()
        except RuntimeError:  # "~user/..." for a user this machine does not know
            path = Path(name)
        if _is_adapter(path):
            return str(path.resolve()), path
        raise InvalidInput(f"unknown adapter {name!r}: valid names are [{offered}], or a path to a peft adapter folder")

    def _load(self, key: str, path: Path) -> None:
        from peft import PeftModel

        # peft's adapter name: readable, and unique per key (a hash of it), since "my-lora" and
        # "my_lora", or two long paths with the same tail, would otherwise share one slot and
        # the second load would overwrite the first's weights.
        readable = "".join(c if c.isalnum() else "_" for c in key)[-40:] or "adapter"
        safe = f"{readable}_{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self._model, str(path), adapter_name=safe)
            else:
                self._peft.load_adapter(str(path), adapter_name=safe)
        except Exception as exc:  # peft raises many types for a mismatched or broken adapter
            raise InvalidInput(f"adapter {key!r} cannot be loaded on this model: {exc}") from exc
        self._peft.eval()
        self._resident[key] = path
        self._names[key] = safe
        self._bytes[key] = sum(f.stat().st_size for f in path.glob("adapter_model.*"))
        while len(self._resident) > 1 and (
            len(self._resident) > self._max_resident or (self._max_bytes and self.resident_bytes > self._max_bytes)
        ):
            old, _ = self._resident.popitem(last=False)
            log.info("unloading adapter %s (over %d resident or %d bytes)", old, self._max_resident, self._max_bytes)
            self._bytes.pop(old, None)
            self._peft.set_adapter(self._names[key])
            self._peft.delete_adapter(self._names.pop(old))

    def resident(self) -> list[str]:
        return list(self._resident)

    @property
    def resident_bytes(self) -> int:
        """Weight bytes of the adapters loaded now."""
        return sum(self._bytes.get(k, 0) for k in self._resident)

    @contextlib.contextmanager
    def use(self, name: str | None) -> Iterator[None]:
        """Run the block with adapter `name` active, or with every adapter disabled for None.
        Outside these blocks every adapter is disabled: the model behaves as the base model."""
        with self._lock:
            if not name:
                if self._peft is None:
                    yield
                else:
                    with self._peft.disable_adapter():
                        yield
                return
            key, path = self.resolve(name)
            if key not in self._resident:
                self._load(key, path)
            self._resident.move_to_end(key)
            self._peft.set_adapter(self._names[key])
            self._peft.base_model.enable_adapter_layers()
            try:
                yield
            finally:
                # Leave the shared model as the base model: compression and generation call it
                # directly, not through `use`, and must not inherit the last request's adapter.
                self._peft.base_model.disable_adapter_layers()
