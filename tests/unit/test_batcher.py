"""The dynamic batcher, driven by a fake `run` function (plain Python, no model).

Each fake item carries a tag in its token ids, so a batch's rows can be traced back to the request
and position they came from. A gate lets a test hold the batcher inside a `run` call while it
queues more requests, which makes merging and dropping deterministic.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
import torch

from lodestar.embed.batcher import Batcher
from lodestar.embed.modes import Encoded, ForwardSpec, TokenPrepend
from lodestar.errors import DeadlineExceeded, Overloaded

WAIT = 10.0  # seconds: generous upper bound for anything that should happen at once
SPEC = ForwardSpec()
OTHER = ForwardSpec(bidirectional=True)


def item(tag: int, length: int) -> Encoded:
    """A fake encoded text of `length` tokens, all equal to `tag`."""
    return Encoded(ids=[tag] * length, pool_start=0, pool_end=length, placeholder=None, truncated=False)


class FakeRun:
    """Records every call; returns one row (tag, length) per item; can be held at a gate."""

    def __init__(self, fail_tag: int | None = None) -> None:
        self.calls: list[tuple[ForwardSpec, list[Encoded]]] = []
        self.fail_tag = fail_tag
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, spec: ForwardSpec, items: list[Encoded]) -> torch.Tensor:
        self.calls.append((spec, list(items)))
        self.entered.set()
        assert self.gate.wait(WAIT), "test never opened the gate"
        if self.fail_tag is not None and any(e.ids[0] == self.fail_tag for e in items):
            raise RuntimeError("boom")
        return torch.tensor([[float(e.ids[0]), float(len(e))] for e in items])  # (B, 2)

    def hold(self) -> None:
        self.gate.clear()
        self.entered.clear()

    def seen_tags(self) -> set[int]:
        return {e.ids[0] for _, items in self.calls for e in items}


@pytest.fixture
def fake() -> FakeRun:
    return FakeRun()


@pytest.fixture
def make_batcher(fake: FakeRun) -> Iterator:  # type: ignore[type-arg]
    made: list[Batcher] = []

    def make(**kwargs: int) -> Batcher:
        b = Batcher(fake, **kwargs)
        made.append(b)
        return b

    yield make
    fake.gate.set()
    for b in made:
        b.close()


def block_with_first_request(b: Batcher, fake: FakeRun, spec: ForwardSpec = SPEC) -> Future:
    """Submit a one-item request and wait until the batcher is stuck running it."""
    fake.hold()
    blocker = b.submit(spec, [item(999, 1)])
    assert fake.entered.wait(WAIT)
    return blocker


def rows(future: Future) -> list[tuple[int, int]]:
    out = future.result(timeout=WAIT)
    return [(int(t), int(n)) for t, n in out.tolist()]


def test_single_request_gets_its_rows_in_order(make_batcher, fake: FakeRun) -> None:
    b = make_batcher()
    items = [item(1, 5), item(2, 1), item(3, 9), item(4, 3)]
    assert rows(b.submit(SPEC, items)) == [(1, 5), (2, 1), (3, 9), (4, 3)]
    assert b.queued == 0


def test_requests_from_several_callers_are_merged(make_batcher, fake: FakeRun) -> None:
    b = make_batcher()
    blocker = block_with_first_request(b, fake)
    f1 = b.submit(SPEC, [item(10, 4), item(11, 2)])
    f2 = b.submit(SPEC, [item(20, 3)])
    f3 = b.submit(SPEC, [item(30, 7), item(31, 1)])
    fake.gate.set()
    assert rows(f1) == [(10, 4), (11, 2)]
    assert rows(f2) == [(20, 3)]
    assert rows(f3) == [(30, 7), (31, 1)]
    blocker.result(timeout=WAIT)
    # The blocker ran alone; the three later requests went through in one forward.
    assert len(fake.calls) == 2
    assert {e.ids[0] for e in fake.calls[1][1]} == {10, 11, 20, 30, 31}
    assert b.stats.batches == 2 and b.stats.texts == 6


def test_batches_are_length_sorted_and_within_token_budget(make_batcher, fake: FakeRun) -> None:
    budget = 24
    b = make_batcher(max_batch_tokens=budget)
    lengths = [7, 1, 12, 3, 3, 8, 2, 5, 11, 4, 6, 9]
    blocker = block_with_first_request(b, fake)
    futures = [b.submit(SPEC, [item(100 + i, n)]) for i, n in enumerate(lengths)]
    fake.gate.set()
    for i, (f, n) in enumerate(zip(futures, lengths)):
        assert rows(f) == [(100 + i, n)]
    blocker.result(timeout=WAIT)
    batches = [items for _, items in fake.calls[1:]]
    assert sum(len(x) for x in batches) == len(lengths)
    for x in batches:
        assert [len(e) for e in x] == sorted(len(e) for e in x)  # sorted within the batch
        assert len(x) * max(len(e) for e in x) <= budget  # rows x longest within the budget
    assert len(batches) > 1  # the budget really split the round


def test_text_longer_than_the_budget_runs_alone(make_batcher, fake: FakeRun) -> None:
    b = make_batcher(max_batch_tokens=8)
    assert rows(b.submit(SPEC, [item(1, 3), item(2, 20)])) == [(1, 3), (2, 20)]
    assert [len(items) for _, items in fake.calls] == [1, 1]


def test_one_request_split_over_batches_keeps_its_order(make_batcher, fake: FakeRun) -> None:
    b = make_batcher(max_batch_tokens=10)
    lengths = [9, 2, 5, 1, 7, 3]
    out = rows(b.submit(SPEC, [item(i, n) for i, n in enumerate(lengths)]))
    assert out == list(enumerate(lengths))
    assert len(fake.calls) > 1


def test_requests_with_different_forward_specs_are_never_mixed(make_batcher, fake: FakeRun) -> None:
    b = make_batcher()
    adapter = ForwardSpec(adapter="a")
    prepend = ForwardSpec(prepend=TokenPrepend(1, 2), output_layer=-1)
    specs = {1: SPEC, 2: OTHER, 3: adapter, 4: prepend}
    blocker = block_with_first_request(b, fake)
    futures = []
    for round_ in range(3):  # interleave the kinds
        for k, spec in specs.items():
            futures.append((k, b.submit(spec, [item(k, 2 + round_), item(k, 1)])))
    fake.gate.set()
    for k, f in futures:
        assert {t for t, _ in rows(f)} == {k}
    blocker.result(timeout=WAIT)
    for spec, items in fake.calls[1:]:
        tags = {e.ids[0] for e in items}
        assert len(tags) == 1, f"a batch mixed forward kinds: {tags}"
        assert spec == specs[tags.pop()]
    assert len(fake.calls) == 1 + len(specs)  # same-kind requests still merged


def test_overloaded_when_the_queue_would_exceed_its_limit(make_batcher, fake: FakeRun) -> None:
    b = make_batcher(max_queued_texts=5)
    blocker = block_with_first_request(b, fake)  # taken off the queue: it is running
    ok = b.submit(SPEC, [item(1, 1)] * 4)
    assert b.queued == 4
    with pytest.raises(Overloaded, match="limit 5"):
        b.submit(SPEC, [item(2, 1)] * 2)
    assert b.queued == 4  # the refused request left no trace
    last = b.submit(SPEC, [item(3, 1)])  # exactly at the limit is fine
    fake.gate.set()
    assert len(rows(ok)) == 4 and rows(last) == [(3, 1)]
    blocker.result(timeout=WAIT)
    assert 2 not in fake.seen_tags()
    assert b.queued == 0


def test_expired_deadline_drops_the_request_before_it_runs(make_batcher, fake: FakeRun) -> None:
    b = make_batcher()
    blocker = block_with_first_request(b, fake)
    late = b.submit(SPEC, [item(7, 3), item(8, 2)], timeout=0.0)
    in_time = b.submit(SPEC, [item(9, 2)], timeout=WAIT)
    threading.Event().wait(0.05)  # let the zero deadline pass while the batcher is busy
    fake.gate.set()
    with pytest.raises(DeadlineExceeded):
        late.result(timeout=WAIT)
    assert rows(in_time) == [(9, 2)]
    blocker.result(timeout=WAIT)
    assert not {7, 8} & fake.seen_tags()
    assert b.stats.dropped == 1
    assert b.queued == 0


def test_cancelled_request_is_never_run(make_batcher, fake: FakeRun) -> None:
    b = make_batcher()
    blocker = block_with_first_request(b, fake)
    gone = b.submit(SPEC, [item(5, 4)])
    kept = b.submit(SPEC, [item(6, 4)])
    assert gone.cancel()
    fake.gate.set()
    assert rows(kept) == [(6, 4)]
    blocker.result(timeout=WAIT)
    assert 5 not in fake.seen_tags()
    assert gone.cancelled()
    assert b.queued == 0


def test_cancelled_while_running_does_not_break_the_batcher(make_batcher, fake: FakeRun) -> None:
    b = make_batcher()
    fake.hold()
    running = b.submit(SPEC, [item(1, 2)])
    assert fake.entered.wait(WAIT)
    assert running.cancel()  # the caller went away mid-forward
    fake.gate.set()
    assert rows(b.submit(SPEC, [item(2, 2)])) == [(2, 2)]  # the batcher thread lives on


def test_exception_in_run_fails_only_that_batchs_requests() -> None:
    fake = FakeRun(fail_tag=66)
    b = Batcher(fake, max_batch_tokens=4)  # 4 tokens: every 3-token item runs in its own batch
    try:
        blocker = block_with_first_request(b, fake)
        bad = b.submit(SPEC, [item(66, 3)])
        good = b.submit(SPEC, [item(67, 3)])
        other_kind = b.submit(OTHER, [item(68, 3)])
        fake.gate.set()
        with pytest.raises(RuntimeError, match="boom"):
            bad.result(timeout=WAIT)
        assert rows(good) == [(67, 3)]
        assert rows(other_kind) == [(68, 3)]
        blocker.result(timeout=WAIT)
        assert rows(b.submit(SPEC, [item(69, 1)])) == [(69, 1)]  # and it keeps serving
    finally:
        fake.gate.set()
        b.close()


def test_failure_in_one_batch_fails_the_whole_request_spanning_it() -> None:
    fake = FakeRun(fail_tag=66)
    b = Batcher(fake, max_batch_tokens=4)
    try:
        spanning = b.submit(SPEC, [item(65, 3), item(66, 3)])  # two batches, the second fails
        with pytest.raises(RuntimeError, match="boom"):
            spanning.result(timeout=WAIT)
    finally:
        b.close()


def test_closed_batcher_refuses_work_and_cancels_queued(make_batcher, fake: FakeRun) -> None:
    b = make_batcher()
    blocker = block_with_first_request(b, fake)
    queued = b.submit(SPEC, [item(3, 1)])
    closer = threading.Thread(target=b.close)
    closer.start()
    while not b._closed:  # closed while the batcher is still inside the blocker's forward
        threading.Event().wait(0.005)
    fake.gate.set()
    closer.join(WAIT)
    blocker.result(timeout=WAIT)
    assert queued.cancelled()
    with pytest.raises(Overloaded, match="shut down"):
        b.submit(SPEC, [item(4, 1)])


def test_cancel_racing_the_result_does_not_kill_the_batcher(make_batcher, fake: FakeRun) -> None:
    """A caller may cancel between the batcher's done() check and set_result: the thread survives."""
    b = make_batcher()
    fake.hold()
    racing = b.submit(SPEC, [item(1, 2)])
    assert fake.entered.wait(WAIT)
    assert racing.cancel()
    racing.done = lambda: False  # type: ignore[method-assign]  # the batcher checks just before the cancel lands
    fake.gate.set()
    assert rows(b.submit(SPEC, [item(2, 2)])) == [(2, 2)]


def test_cancel_racing_the_deadline_drop_does_not_kill_the_batcher(make_batcher, fake: FakeRun) -> None:
    b = make_batcher()
    blocker = block_with_first_request(b, fake)
    late = b.submit(SPEC, [item(3, 2)], timeout=0.0)
    assert late.cancel()
    late.cancelled = lambda: False  # type: ignore[method-assign]  # seen as alive, then set_exception races
    threading.Event().wait(0.02)
    fake.gate.set()
    blocker.result(timeout=WAIT)
    assert rows(b.submit(SPEC, [item(4, 2)])) == [(4, 2)]
    assert 3 not in fake.seen_tags()


def test_padding_and_row_caps_split_batches() -> None:
    """Sorted items: a long text does not pad sixteen short ones; rows stop at max_batch_rows."""
    b = Batcher(
        lambda spec, items: torch.zeros(len(items), 2), max_batch_tokens=10**6, max_batch_rows=20, min_batch_rows=16
    )
    try:
        short = [(type("Q", (), {"items": [item(i, 10) for i in range(16)] + [item(99, 100)]})(), i) for i in range(17)]
        chunks = b._chunks(short)
        assert [len(c) for c in chunks] == [16, 1]
        many = [(type("Q", (), {"items": [item(i, 10) for i in range(45)]})(), i) for i in range(45)]
        assert [len(c) for c in b._chunks(many)] == [20, 20, 5]
    finally:
        b.close()


def test_packed_forwards_are_cut_by_real_tokens_and_rows_only() -> None:
    """A kind of forward that packs short texts into shared rows pays no padding for them: a 60-token
    text joins sixteen of 10, and batches end at max_batch_tokens real tokens or max_batch_rows
    texts; a text past PACK_MAX_TOKENS starts a batch of its own kind (one text a row, the padding
    rule). Padding counts the packed grid (2 rows of 120 for 16 x 10 + 60 tokens), not N x longest."""
    b = Batcher(
        lambda spec, items: torch.zeros(len(items), 2),
        max_batch_tokens=300,
        max_batch_rows=20,
        min_batch_rows=16,
        packs=lambda spec: spec == SPEC,
    )

    def queued(lengths: list[int]) -> list:  # type: ignore[type-arg]
        req = type("Q", (), {"items": [item(i, n) for i, n in enumerate(lengths)]})()
        return [(req, i) for i in range(len(lengths))]

    try:
        assert [len(c) for c in b._chunks(queued([10] * 16 + [60]), packed=True)] == [17]
        assert [len(c) for c in b._chunks(queued([10] * 16 + [60]), packed=False)] == [16, 1]  # padding rule
        assert [len(c) for c in b._chunks(queued([10] * 16 + [100]), packed=True)] == [16, 1]  # a long text
        assert [len(c) for c in b._chunks(queued([10] * 45), packed=True)] == [20, 20, 5]  # rows cap
        assert [len(c) for c in b._chunks(queued([40] * 10), packed=True)] == [7, 3]  # 7 x 40 <= 300 real tokens
        b.submit(SPEC, [item(i, 10) for i in range(16)] + [item(99, 60)]).result(timeout=WAIT)
        assert b.stats.batches == 1 == b.stats.packed and b.stats.tokens == 220
        assert b.stats.padded_tokens == 2 * 120  # pack_rows into rows of 128: 60 + 6 x 10, then 10 x 10
    finally:
        b.close()


def test_a_request_arriving_during_a_forward_joins_the_next_batch(make_batcher, fake: FakeRun) -> None:
    """Continuous batching: the leftover of an earlier request and a new arrival share the next forward
    (a fixed round would run the leftover alone first)."""
    b = make_batcher(max_batch_rows=2)
    fake.hold()
    first = b.submit(SPEC, [item(1, 2), item(2, 2), item(3, 2)])  # two batches: [1, 2] then [3]
    assert fake.entered.wait(WAIT)
    late = b.submit(SPEC, [item(4, 2)])  # arrives while [1, 2] runs
    fake.gate.set()
    assert rows(first) == [(1, 2), (2, 2), (3, 2)]
    assert rows(late) == [(4, 2)]
    assert [sorted(e.ids[0] for e in items) for _, items in fake.calls] == [[1, 2], [3, 4]]
    assert b.stats.batch_sizes == {2: 2}


def test_batch_size_histogram_counts_every_forward(make_batcher, fake: FakeRun) -> None:
    b = make_batcher(max_batch_tokens=6)
    rows(b.submit(SPEC, [item(1, 3), item(2, 3), item(3, 6)]))  # [1, 2] (6 tokens), then [3] alone
    rows(b.submit(SPEC, [item(4, 1)]))
    assert b.stats.batch_sizes == {2: 1, 1: 2}
    assert sum(n * k for n, k in b.stats.batch_sizes.items()) == b.stats.texts == 4


def test_the_oldest_request_is_not_starved_by_fuller_batches(make_batcher, fake: FakeRun) -> None:
    """The fullest batch goes first, but a request passed over max_passes forwards goes next, though
    short texts keep arriving (each forward here queues three more)."""
    b = make_batcher(max_batch_tokens=20, max_passes=2)
    arrivals: list[Future] = []
    run = fake.__call__

    def run_and_feed(spec: ForwardSpec, items: list[Encoded]) -> torch.Tensor:
        if len(arrivals) < 30:
            arrivals.extend(b.submit(SPEC, [item(60, 2)]) for _ in range(3))
        return run(spec, items)

    b._run = run_and_feed
    blocker = block_with_first_request(b, fake)
    long = b.submit(SPEC, [item(50, 20)])  # alone in its batch: every other batch is fuller
    fake.gate.set()
    assert rows(long) == [(50, 20)]
    blocker.result(timeout=WAIT)
    assert all(rows(f) == [(60, 2)] for f in arrivals)
    firsts = [items[0].ids[0] for _, items in fake.calls]
    assert firsts.index(50) <= 1 + 2  # after the blocker, passed over at most max_passes times
    assert firsts[1] == 60  # but passed over first, for the fuller batch


def test_tuple_outputs_are_packed_per_request_in_order() -> None:
    """A forward returning several parts (dense, sparse ids, weights): each request gets its own rows
    of every part, in its own order, across batches."""

    def run(spec: ForwardSpec, items: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        tags = torch.tensor([float(e.ids[0]) for e in items])
        return tags[:, None].repeat(1, 3), torch.tensor([[e.ids[0], len(e)] for e in items])

    b = Batcher(run, max_batch_tokens=6)  # splits the request over several batches
    try:
        lengths = [5, 1, 3, 6, 2]
        dense, ids = b.submit(SPEC, [item(10 + k, n) for k, n in enumerate(lengths)]).result(timeout=WAIT)
        assert dense.shape == (5, 3) and dense[:, 0].tolist() == [10.0, 11.0, 12.0, 13.0, 14.0]
        assert ids.tolist() == [[10 + k, n] for k, n in enumerate(lengths)]
        assert b.stats.batches > 1
    finally:
        b.close()


def test_long_texts_split_on_padding_before_min_batch_rows() -> None:
    """Past min_batch_tokens real tokens, padding cuts a batch of a few long texts too (on CPU
    a padded token costs what a real one does; the forward's fixed cost is small beside them)."""
    b = Batcher(lambda spec, items: torch.zeros(len(items), 2), min_batch_rows=16, min_batch_tokens=1024)
    try:
        lengths = [200, 210, 220, 230, 240, 400, 410, 420]
        taken = [(type("Q", (), {"items": [item(i, n) for i, n in enumerate(lengths)]})(), i) for i in range(8)]
        assert [len(c) for c in b._chunks(taken)] == [5, 3]  # one batch of 8 would be 36% padding
        short = [(type("Q", (), {"items": [item(i, 2 + i % 3) for i in range(8)]})(), i) for i in range(8)]
        assert [len(c) for c in b._chunks(short)] == [8]  # few tokens: one forward, padding or not
    finally:
        b.close()
