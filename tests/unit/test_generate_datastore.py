"""Token datastore: suffix arrays against brute force, lookups, the on-disk round trip (memory-mapped,
manifest with SHA-256), refusal of another tokenizer's datastore, corruption, incremental segments,
compaction, ephemeral per-request stores and corpus reading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lodestar.errors import InvalidInput, NotFound
from lodestar.generate.corpus import iter_texts
from lodestar.generate.datastore import (
    MANIFEST,
    CorruptDatastore,
    Datastore,
    LookupConfig,
    TokenizerIdentity,
)
from lodestar.generate.suffix_array import SEPARATOR, build_suffix_array, find_range


class WordTokenizer:
    """A tiny deterministic tokenizer: one id per whitespace-separated word, from a fixed vocabulary."""

    def __init__(self, words: list[str], name: str = "word-tok") -> None:
        self.vocab = {w: i for i, w in enumerate(words)}
        self.name_or_path = name

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def __call__(self, texts: list[str], **_: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [[self.vocab[w] for w in t.split()] for t in texts]}


WORDS = "the cat sat on mat dog ran to a park and then home fast slow".split()
TOK = WordTokenizer(WORDS)
TEXTS = ["the cat sat on the mat", "the dog ran to the park", "the cat sat on a dog"]


def ids(text: str) -> list[int]:
    return [TOK.vocab[w] for w in text.split()]


def words(seq: tuple[int, ...]) -> str:
    return " ".join(WORDS[i] for i in seq)


def test_suffix_array_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 7, 300):
        tokens = rng.integers(-1, 5, n).astype(np.int32)  # SEPARATOR included
        sa = build_suffix_array(tokens)
        assert sa.tolist() == sorted(range(n), key=lambda i: tuple(tokens[i:].tolist()))
    tokens = np.tile(np.arange(50, dtype=np.int32), 40)  # long repeats: many doubling rounds
    sa = build_suffix_array(tokens)
    assert sa.tolist() == sorted(range(len(tokens)), key=lambda i: tuple(tokens[i:].tolist()))
    lo, hi = find_range(tokens, sa, (3, 4, 5))
    assert hi - lo == 40 and all(tokens[sa[r] : sa[r] + 3].tolist() == [3, 4, 5] for r in range(lo, hi))
    lo, hi = find_range(tokens, sa, (4, 3))
    assert lo == hi  # absent: an empty range


def test_lookup_longest_suffix_and_counts() -> None:
    store = Datastore.from_texts(TEXTS, TOK)
    found = store.lookup(ids("dog and the cat sat"), LookupConfig(max_continuation=3))
    assert found is not None and found.match_len == 3 and found.occurrences == 2
    conts = {words(seq): count for seq, count in found.seqs}
    assert conts == {"on the mat": 1.0, "on a dog": 1.0}
    found = store.lookup(ids("dog ran"), LookupConfig(max_continuation=10))
    assert found is not None and [words(s) for s, _ in found.seqs] == ["to the park"]  # cut at document end
    assert store.lookup(ids("fast slow"), LookupConfig(min_match=1)) is None
    found = store.lookup(ids("home the"), LookupConfig(min_match=1, max_continuation=1))
    assert found is not None and found.match_len == 1 and found.occurrences == 5  # "the" x5


def test_frequent_suffix_is_sampled_with_proportional_counts() -> None:
    texts = ["a cat"] * 60 + ["a dog"] * 20
    store = Datastore.from_texts(texts, TOK)
    found = store.lookup(ids("a"), LookupConfig(min_match=1, max_samples=8, max_continuation=1))
    assert found is not None and found.occurrences == 80
    counts = dict(found.seqs)
    assert sum(counts.values()) == pytest.approx(80)
    assert counts[(TOK.vocab["cat"],)] == pytest.approx(60) and counts[(TOK.vocab["dog"],)] == pytest.approx(20)


def test_round_trip_is_memory_mapped_and_verified(tmp_path: Path) -> None:
    built = Datastore.build(tmp_path / "ds", TEXTS, TOK)
    manifest = json.loads((tmp_path / "ds" / MANIFEST).read_text())
    assert manifest["format_version"] == 1 and manifest["tokenizer"]["vocab_size"] == len(WORDS)
    assert all(len(meta["sha256"]) == 64 for meta in manifest["files"].values())
    assert not [p for p in (tmp_path / "ds").iterdir() if p.name.endswith(".tmp")]
    loaded = Datastore.load(tmp_path / "ds", TOK)
    assert isinstance(loaded.segments[0].tokens.base, np.memmap) or isinstance(loaded.segments[0].tokens, np.memmap)
    assert loaded.num_tokens == built.num_tokens and loaded.num_docs == 3
    q = ids("the cat sat")
    assert loaded.lookup(q) == built.lookup(q)


def test_other_tokenizer_is_refused_naming_both(tmp_path: Path) -> None:
    Datastore.build(tmp_path, TEXTS, TOK)
    other = WordTokenizer(WORDS[::-1], name="other-tok")
    with pytest.raises(InvalidInput) as e:
        Datastore.load(tmp_path, other)
    msg = str(e.value)
    assert "word-tok" in msg and "other-tok" in msg and "rebuild" in msg
    assert TokenizerIdentity.of(TOK).describe() in msg and TokenizerIdentity.of(other).describe() in msg


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        Datastore.load(tmp_path / "nothing", TOK)
    Datastore.build(tmp_path, TEXTS, TOK)
    sa_file = next(tmp_path.glob("*.sa.npy"))
    raw = bytearray(sa_file.read_bytes())
    raw[-1] ^= 0x01
    sa_file.write_bytes(bytes(raw))
    with pytest.raises(CorruptDatastore, match="SHA-256"):
        Datastore.load(tmp_path, TOK)
    sa_file.write_bytes(bytes(raw[:-4]))
    with pytest.raises(CorruptDatastore, match="bytes"):
        Datastore.load(tmp_path, TOK)
    sa_file.unlink()
    with pytest.raises(CorruptDatastore, match="missing"):
        Datastore.load(tmp_path, TOK)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(CorruptDatastore, match="unreadable"):
        Datastore.load(tmp_path, TOK)
    # valid JSON of the wrong shape (a segment without its name): KeyError used to escape (INTERNAL)
    good = Datastore.build(tmp_path / "again", TEXTS, TOK)
    manifest = json.loads((good.path / MANIFEST).read_text())
    del manifest["segments"][0]["name"]
    (good.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CorruptDatastore, match="is malformed .KeyError"):
        Datastore.load(good.path, TOK)


def test_incremental_add_compact_and_reload(tmp_path: Path) -> None:
    store = Datastore.build(tmp_path, TEXTS[:1], TOK)
    assert store.lookup(ids("dog ran")) is None
    assert store.add(TEXTS[1:]) > 0
    assert len(store.segments) == 2
    found = store.lookup(ids("dog ran"))
    assert found is not None and words(found.seqs[0][0]).startswith("to the park")
    both = store.lookup(ids("the cat sat"), LookupConfig(max_continuation=2))  # merged across segments
    assert both is not None and both.occurrences == 2
    reloaded = Datastore.load(tmp_path, TOK)
    assert len(reloaded.segments) == 2 and reloaded.lookup(ids("the cat sat")) == store.lookup(ids("the cat sat"))
    files_before = {p.name for p in tmp_path.glob("*.npy")}
    store.compact()
    assert len(store.segments) == 1
    assert store.lookup(ids("the cat sat"), LookupConfig(max_continuation=2)) == both
    files_after = {p.name for p in tmp_path.glob("*.npy")}
    assert len(files_after) == 2 and not files_after & files_before  # old segment files removed
    assert Datastore.load(tmp_path, TOK).num_tokens == store.num_tokens


def test_files_left_by_a_crashed_writer_go_at_the_next_write(tmp_path: Path) -> None:
    """A writer killed between its segment files and its manifest leaves files no manifest names (and
    perhaps a temporary one); the next write removes them and keeps everything the manifest holds."""
    store = Datastore.build(tmp_path, TEXTS[:1], TOK)
    kept = {p.name for p in tmp_path.iterdir()}
    orphans = ["seg-0123456789ab.tokens.npy", "seg-0123456789ab.sa.npy", ".seg-0123456789cd.sa.npy.1a2b3c4d.tmp"]
    for name in orphans:
        (tmp_path / name).write_bytes(b"left by a crash")
    (tmp_path / "notes.txt").write_text("the user's own file")
    assert Datastore.load(tmp_path, TOK).num_tokens == store.num_tokens  # the manifest ignores them
    store.add(TEXTS[1:])
    names = {p.name for p in tmp_path.iterdir()}
    assert not names & set(orphans) and kept <= names and "notes.txt" in names
    reloaded = Datastore.load(tmp_path, TOK)
    assert len(reloaded.segments) == 2 and reloaded.lookup(ids("dog ran")) is not None


def test_ephemeral_store_from_passages_with_real_tokenizer(tokenizer) -> None:  # type: ignore[no-untyped-def]
    store = Datastore.from_texts(["The Eiffel Tower was completed in 1889 for the World's Fair."], tokenizer)
    assert store.path is None and len(store.segments) == 1
    ctx = tokenizer("It says the Eiffel Tower was", add_special_tokens=False)["input_ids"]
    found = store.lookup(ctx, LookupConfig(max_continuation=4), source="passages")
    assert found is not None and found.source == "passages" and found.match_len >= 3
    assert tokenizer.decode(list(found.seqs[0][0])).startswith(" completed in")
    assert Datastore.from_texts([], tokenizer).lookup(ctx) is None
    assert SEPARATOR not in found.seqs[0][0]


def test_iter_texts_reads_files_folders_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.py").write_text("print(1)\n")
    (tmp_path / "a" / "test").mkdir()
    (tmp_path / "a" / "test" / "t.py").write_text("skipped\n")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert list(iter_texts([tmp_path / "a", tmp_path / "b.jsonl"], pattern="**/*.py", exclude=("test",))) == [
        "print(1)\n",
        "one",
        "two",
    ]
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(InvalidInput, match="'text'"):
        list(iter_texts([tmp_path / "bad.jsonl"]))
    with pytest.raises(NotFound):
        list(iter_texts([tmp_path / "missing"]))


def test_concurrent_adds_to_a_new_datastore_keep_both(tiny_backbone, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Two AddToDatastore calls creating the same name at once: both are acknowledged, so both
    survive. Each used to build its own store into the same folder: the second manifest named only
    its own segment and unlinked the first's files, and the first store (the one kept open) wrote
    a manifest naming deleted files on its next add."""
    import threading

    from lodestar.generate.decoder import DecoderConfig
    from lodestar.generate.engine import GenerateConfig, GenerationEngine

    config = GenerateConfig(writable_dir=tmp_path / "stores", decoder=DecoderConfig(calibrate_cost=False))
    eng = GenerationEngine(tiny_backbone, config)
    meet = threading.Barrier(2, timeout=1.0)
    original = Datastore.from_texts.__func__  # type: ignore[attr-defined]

    def slow_from_texts(cls, texts, tokenizer):  # type: ignore[no-untyped-def]
        store = original(cls, texts, tokenizer)
        try:  # let a concurrent call catch up (serialised calls simply time out here)
            meet.wait()
        except threading.BrokenBarrierError:
            pass
        return store

    monkeypatch.setattr(Datastore, "from_texts", classmethod(slow_from_texts))
    errors: list[BaseException] = []

    def add(text: str) -> None:
        try:
            eng.add_texts("shared", [text])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(t,)) for t in ("the first upload", "the second upload")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    monkeypatch.undo()
    eng.add_texts("shared", ["a third upload"])
    reopened = Datastore.load(tmp_path / "stores" / "shared", tiny_backbone.tokenizer)  # verifies every file
    assert reopened.num_docs == 3
    assert eng.datastore("shared").num_docs == 3


def test_a_second_writer_on_the_folder_is_refused_not_overwritten(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Two Datastore objects on one folder (the server's and a CLI's): the one that loaded before the
    other compacted used to write a manifest naming deleted files and unlink the compacted segment,
    losing every text. It is now refused (StaleDatastore), and a reopened one adds normally."""
    from lodestar.generate.datastore import StaleDatastore

    folder = tmp_path / "ds"
    Datastore.build(folder, ["alpha beta gamma", "delta epsilon"], tokenizer)
    first = Datastore.load(folder, tokenizer)
    first.add(["zeta eta theta"])  # two segments
    other = Datastore.load(folder, tokenizer)
    other.compact()  # one new segment; the two old files are gone
    with pytest.raises(StaleDatastore, match="changed by another writer"):
        first.add(["iota kappa"])
    again = Datastore.load(folder, tokenizer)  # nothing was lost
    assert again.num_docs == 3 and len(again.segments) == 1
    again.add(["iota kappa"])
    assert Datastore.load(folder, tokenizer).num_docs == 4
