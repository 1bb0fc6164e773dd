"""The pieces that keep a loaded or abused server answering: cancellation tokens, work budgets,
bounded messages (lodestar/cancel.py, services/admission.py, lodestar/errors.py, services/interceptor.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lodestar.cancel import Token, checkpoint, current, running
from lodestar.errors import Cancelled, DeadlineExceeded, InvalidInput, Overloaded, shown
from lodestar.retrieve.filters import compile_filters
from lodestar.retrieve.types import Filter
from lodestar.services.admission import Backlog, Budget, estimate_tokens
from lodestar.services.interceptor import MAX_MESSAGE_CHARS, _abort, _RefusalLog, cut, status_for
from lodestar.services.observability.rpc import ended
from lodestar.services.server import join_threads
from lodestar.services.work import work_pool


def test_token_is_an_event_set_by_cancel_or_its_deadline() -> None:
    token = Token()
    assert not token.is_set() and token.remaining() is None
    seen: list[str] = []
    token.on_cancel(lambda: seen.append("first"))
    token.cancel("going away")
    token.cancel("twice")  # idempotent: callbacks run once, the first reason stays
    assert token.is_set() and seen == ["first"]
    token.on_cancel(lambda: seen.append("late"))  # already cancelled: runs at once
    assert seen == ["first", "late"]
    with pytest.raises(Cancelled, match="going away"):
        token.check()
    expired = Token(time.monotonic() - 1)
    assert expired.is_set()
    with pytest.raises(DeadlineExceeded):
        expired.check()


def test_checkpoint_follows_the_current_token_of_this_context() -> None:
    checkpoint()  # outside a call: never cancelled
    token = Token()
    with running(token):
        assert current() is token
        checkpoint()
        token.cancel()
        with pytest.raises(Cancelled):
            checkpoint()
    assert current() is None
    checkpoint()


def test_budget_refuses_past_its_limit_with_a_retry_hint_and_frees_on_exit() -> None:
    budget = Budget("texts", 10, "max_queued_texts")
    with budget.admit(8, None):
        with pytest.raises(Overloaded, match="max_queued_texts=10") as err:
            with budget.admit(3, None):
                pass
        assert err.value.retry_after_ms is not None and err.value.retry_after_ms > 0
        with budget.admit(2, None):
            assert budget.in_flight == 10
    assert budget.in_flight == 0 and budget.refused == 1
    with pytest.raises(InvalidInput, match="at most max_queued_texts=10: split the request"):
        with budget.admit(11, None):
            pass


def test_budget_refuses_a_request_whose_deadline_the_queue_would_outlast() -> None:
    budget = Budget("texts", 100, "max_queued_texts")
    budget.per_unit = 0.5  # as measured: half a second per text
    with budget.admit(10, None):  # about 5 s of work ahead
        with pytest.raises(Overloaded, match="would outlast its deadline"):
            with budget.admit(1, 1.0):
                pass
        with budget.admit(1, 60.0):  # a deadline the queue fits in is admitted
            pass
        with budget.admit(1, None):
            pass
    with budget.admit(50, 1.0):  # nothing ahead: admitted whatever the estimate, which it then corrects
        pass


def test_a_deadline_waits_for_every_kind_of_work_queued_for_the_same_backbone() -> None:
    backbone = Backlog()
    tokens = Budget("tokens", 10_000, "max_queued_tokens", backbone)
    documents = Budget("documents", 1_000, "max_inflight_documents", backbone)
    alone = Budget("texts", 1_000, "max_queued_texts")  # outside the backlog: waits for its own kind only
    tokens.per_unit, documents.per_unit, alone.per_unit = 0.001, 0.1, 0.01
    with documents.admit(50, None):  # about 5 s of indexing ahead
        assert tokens.wait_s() == pytest.approx(5.0)
        with pytest.raises(Overloaded, match=r"about 5.0 s; 0 tokens of it this request's kind"):
            with tokens.admit(100, 2.0):
                pass
        with tokens.admit(100, 10.0):
            pass
        with alone.admit(10, 2.0):
            pass


def test_a_finished_request_scales_its_kind_by_how_far_the_estimate_was() -> None:
    backbone = Backlog()
    slow = Budget("documents", 100, "max_inflight_documents", backbone)
    slow.per_unit = 0.001  # estimated 10 ms for 10 documents; they take about 40 ms
    with slow.admit(10, None):
        time.sleep(0.04)
    # one sample moves the estimate by SMOOTHING towards about four times the old one
    assert 0.0015 < slow.per_unit < 0.003


def test_budget_measures_seconds_per_unit_from_finished_requests() -> None:
    budget = Budget("documents", 100, "max_inflight_documents")
    with budget.admit(4, None):
        time.sleep(0.04)
    assert budget.per_unit is not None and budget.per_unit > 0
    failed = budget.per_unit
    with pytest.raises(RuntimeError):
        with budget.admit(4, None):
            raise RuntimeError("failed work is not a measurement")
    assert budget.per_unit == failed and budget.in_flight == 0


def test_budget_is_safe_under_threads() -> None:
    budget = Budget("texts", 50, "max_queued_texts")
    refused = []

    def worker() -> None:
        for _ in range(200):
            try:
                with budget.admit(5, None):
                    assert budget.in_flight <= 50
            except Overloaded:
                refused.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.in_flight == 0


def test_token_estimate_is_cheap_bounded_and_not_below_the_tokenizer_for_english(tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert estimate_tokens([], 512) == 0
    assert estimate_tokens(["", "abcd"], 512) == 1 + 2  # one per text, plus bytes / 4
    assert estimate_tokens(["x" * 100_000], 512) == 512  # a text is truncated to max_tokens (or refused)
    assert estimate_tokens(["\u00e9" * 8], 512) == 5  # UTF-8 bytes, not characters: 16 bytes
    english = "The quick brown fox jumps over the lazy dog near the riverbank, twice a day. " * 3
    exact = len(tokenizer(english, add_special_tokens=False)["input_ids"])
    assert exact <= estimate_tokens([english], 512) <= 2 * exact


def test_shown_and_cut_bound_what_a_message_repeats() -> None:
    assert shown("abc") == "'abc'"
    long = shown("x" * 20_000)
    assert len(long) < 260 and "20000 characters" in long
    assert "length 5000" in shown(list(range(5000)))
    message = cut("y" * 50_000)
    assert len(message.encode()) <= MAX_MESSAGE_CHARS and "50000 characters" in message
    assert len(cut("é" * 5000).encode()) <= MAX_MESSAGE_CHARS
    code, text = status_for(InvalidInput("z" * 30_000))
    assert code.name == "INVALID_ARGUMENT" and len(text) <= MAX_MESSAGE_CHARS
    assert status_for(Cancelled("gone"))[0].name == "CANCELLED"


def test_filters_per_search_have_a_limit_naming_the_setting() -> None:
    many = [Filter(field=f"f{i}", op="eq", value=i) for i in range(995)]
    with pytest.raises(InvalidInput, match="995 filters in one search; the limit is max_filters_per_search=64"):
        compile_filters(many)
    assert compile_filters(many[:64]) is not None
    wide = [Filter(field=f"f{i}", op="in", value=list(range(1000))) for i in range(10)]
    with pytest.raises(InvalidInput, match="10000 filter values"):
        compile_filters(wide)
    with pytest.raises(InvalidInput) as err:
        compile_filters([Filter(field="x" * 10_000, op="eq", value=1)])
    assert len(str(err.value)) < 600


def test_a_seed_is_only_a_first_estimate() -> None:
    budget = Budget("tokens", 100, "max_queued_tokens")
    budget.seed(0.25)
    assert budget.per_unit == 0.25
    budget.seed(9.0)  # a second seed does not replace the first
    assert budget.per_unit == 0.25
    with budget.admit(4, None):
        pass
    assert budget.per_unit != 0.25  # finished requests move it


class _Call:
    """A servicer context as the handlers' wrappers see it: done or live, with time left or not."""

    def __init__(self, done: bool, remaining: float | None) -> None:
        self._done, self._remaining, self.aborted = done, remaining, False

    def done(self) -> bool:
        return self._done

    def time_remaining(self) -> float | None:
        return self._remaining

    async def abort(self, *args: object, **kwargs: object) -> None:
        self.aborted = True
        raise RuntimeError("aborted")  # gRPC's abort raises AbortError


def test_an_error_after_the_call_ended_is_not_sent_and_is_logged_as_the_client_saw_it() -> None:
    """The work's own deadline check can beat gRPC's cancel of the handler: the status can no longer
    be sent (abort would fail inside gRPC and the access log said UNKNOWN), so the handler ends as
    cancelled and the access log names what the client saw."""
    late = _Call(done=True, remaining=0.0)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(_abort(late, DeadlineExceeded("deadline passed"), "/lodestar.v1.Retrieval/Upsert"))  # type: ignore[arg-type]
    assert not late.aborted
    assert ended(late) == "DEADLINE_EXCEEDED"  # type: ignore[arg-type]
    assert ended(_Call(done=True, remaining=12.0)) == "CANCELLED"  # type: ignore[arg-type]
    assert ended(_Call(done=False, remaining=None)) is None  # type: ignore[arg-type]
    live = _Call(done=False, remaining=3.0)
    with pytest.raises(RuntimeError, match="aborted"):
        asyncio.run(_abort(live, DeadlineExceeded("deadline passed"), "/x"))  # type: ignore[arg-type]
    assert live.aborted


def test_refusals_are_logged_at_most_once_a_second_with_the_count_between(caplog: pytest.LogCaptureFixture) -> None:
    """Under overload a log line per refused call would be one more write per refusal: one line a
    second, saying how many were refused meanwhile."""
    refusals = _RefusalLog(every=0.2)
    with caplog.at_level("INFO", logger="lodestar.services.interceptor"):
        for _ in range(50):
            refusals.note("/lodestar.embed.v1.EmbedService/Embed", "server over capacity")
        time.sleep(0.25)
        refusals.note("/lodestar.embed.v1.EmbedService/Embed", "server over capacity")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "RESOURCE_EXHAUSTED: server over capacity" in lines[0] and "more refused" not in lines[0]
    assert lines[1].endswith("(49 more refused since the last such line)")


def test_join_threads_waits_for_the_work_pool_and_names_what_outlives_the_budget() -> None:
    """Shutdown's last step: the pool is stopped (queued work cancelled) and its threads joined until
    the deadline; a thread still busy then is named, not waited for."""
    pool = work_pool(0, workers=1, name="lodestar-work-test")
    release = threading.Event()
    pool.submit(release.wait, 5)
    queued = [pool.submit(time.sleep, 0) for _ in range(4)]  # behind the busy thread: cancelled by the stop
    left = asyncio.run(join_threads(pool, time.monotonic() + 0.1))
    assert "lodestar-work-test_0" in left  # (other tests' threads may be listed too)
    assert all(f.cancelled() for f in queued)
    release.set()
    pool.shutdown(wait=True)
    assert "lodestar-work-test_0" not in asyncio.run(join_threads(None, time.monotonic()))
