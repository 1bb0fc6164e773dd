"""The compression evaluation end to end on the fixture slice, with the tiny random model (plumbing,
report shape and the selective arithmetic; quality is measured by bench/compress/run.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lodestar.compress_ctx.eval.qa import eval_compress, read_qa, split_questions
from lodestar.errors import InvalidInput

FIXTURES = Path(__file__).parents[1] / "fixtures" / "compress"


def test_eval_compress_reports_every_condition(tiny_backbone, tiny_engine) -> None:  # type: ignore[no-untyped-def]
    out = eval_compress(
        tiny_backbone,
        tiny_engine,
        FIXTURES / "qa.jsonl",
        FIXTURES / "beir",
        k=2,
        n=4,
        calibration=3,
        budget_ratio=0.2,
        cold_questions=1,
        progress=False,
    )
    assert out["questions"] == 4 and out["method"] == "extractive"
    assert 0 < out["compression_rate"] <= 0.2
    for cond in ("no_context", "full", "compressed", "selective"):
        assert {"em", "f1", "answer_in_context"} <= set(out[cond])
    assert out["no_context"]["answer_in_context"] == 0.0
    assert out["full"]["answer_in_context"] == 1.0  # k=2 over 6 passages finds the source
    assert out["calibration"]["questions"] == 3
    assert out["selective"]["skipped"] <= 4
    t = out["timing"]
    assert t["compress_s_per_question"] > 0 and t["reader_full_s_per_question"] > 0
    assert t["compress_cold_s_per_question"] is not None


def test_read_qa_and_split(tmp_path: Path) -> None:
    items = read_qa(FIXTURES / "qa.jsonl")
    assert len(items) == 12 and all(q.answers for q in items)
    a, b = split_questions(items, 5, 4, seed=0)
    assert len(a) == 5 and len(b) == 4 and not {q.id for q in a} & {q.id for q in b}
    with pytest.raises(InvalidInput, match="cannot give"):
        split_questions(items, 10, 4, seed=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "x"}\n')
    with pytest.raises(InvalidInput, match="needs 'question' and 'answers'"):
        read_qa(bad)
    with pytest.raises(InvalidInput, match="does not exist"):
        read_qa(tmp_path / "missing.jsonl")
