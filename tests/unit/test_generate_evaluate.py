"""Evaluation and workloads: eval_specdec's report on the tiny model, the code workload's held-out
prompts (never verbatim in the corpus), the SQuAD RAG workload, and the learned cost model."""

from __future__ import annotations

from pathlib import Path

import pytest

from lodestar.backbone import Backbone
from lodestar.generate.costmodel import CostModel, OnlineCost
from lodestar.generate.datastore import Datastore
from lodestar.generate.drafter import DraftConfig, Drafter
from lodestar.generate.eval.specdec import eval_specdec
from lodestar.generate.eval.workloads import code_workload, rag_corpus, rag_workload

SQUAD = Path(__file__).parents[1] / "fixtures" / "generate" / "squad_head.jsonl"

SOURCE = '''
import os


def join_all(parts):
    """Join path parts."""
    out = ""
    for p in parts:
        out = os.path.join(out, p)
    return out


def count_lines(path):
    """Count the lines of a file."""
    n = 0
    with open(path) as f:
        for _ in f:
            n += 1
    return n


def short(x):
    """Too short to be a prompt."""
    return x
'''


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_eval_specdec_reports_identical_greedy(tiny_backbone: Backbone) -> None:
    prompts = ["one two three one two three one two", "def f(x):\n    return x\n"]
    store = Datastore.from_texts(["one two three four"], tiny_backbone.tokenizer)
    res = eval_specdec(tiny_backbone, prompts, store, passages=[["one two three"], None], max_new_tokens=12)
    assert res["n"] == 2 and res["identical"] is True and res["identical_prompts"] == 2
    assert res["speedup"] > 0 and res["mean_accepted_tokens"] >= 1.0
    assert {"plain_tokens_per_s", "spec_tokens_per_s", "decode_speedup", "per_prompt"} <= set(res)
    with pytest.raises(ValueError, match="one entry per prompt"):
        eval_specdec(tiny_backbone, prompts, None, passages=[None])


def test_code_workload_prompts_are_function_openings_not_in_corpus(tmp_path: Path) -> None:
    (tmp_path / "lib.py").write_text(SOURCE)
    work = code_workload([tmp_path], n=5, context_lines=2, min_body_lines=3)
    assert len(work.prompts) == 2 and not work.chat and work.passages is None
    assert all(p.rstrip().endswith('"""') for p in work.prompts)
    assert any("def count_lines(path):" in p for p in work.prompts)
    corpus = SOURCE.split("def count_lines")[0] + "# other code"  # holds join_all verbatim
    work = code_workload([tmp_path], n=5, context_lines=2, min_body_lines=3, corpus_text=corpus)
    assert work.info["dropped_verbatim_in_corpus"] == 1 and len(work.prompts) == 1
    assert all(p.strip() not in corpus for p in work.prompts)


def test_rag_workload_from_squad() -> None:
    work = rag_workload(SQUAD, n=10)
    assert work.chat and len(work.prompts) == 1  # three questions, one paragraph: one prompt per paragraph
    assert work.passages is not None and work.passages[0][0] in work.prompts[0]
    assert "Question:" in work.prompts[0]
    assert len(rag_corpus(SQUAD)) == 1


def test_online_cost_learns_from_timings() -> None:
    prior = CostModel((1.0, 1.1, 1.2, 3.0))
    cost = OnlineCost(prior, window=8, min_samples=2)
    assert cost.padded_length(2) == 2
    for _ in range(3):
        cost.observe(1, 0.10)
        cost.observe(2, 0.30)  # much slower here than the prior says
    assert cost.cost(2) == pytest.approx(3.0)
    assert cost.padded_length(2) == 3  # now padding to 3 is cheaper
    assert cost.cost(4) == 3.0  # unobserved lengths keep the prior


def test_drafter_learns_to_distrust_a_misleading_source(tokenizer) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    store = Datastore.from_texts(["alpha beta gamma delta epsilon"], tokenizer)
    drafter = Drafter(DraftConfig(learn_cost=False), store)
    ctx = np.asarray(tokenizer("alpha beta gamma", add_special_tokens=False)["input_ids"], dtype=np.int64)
    state = drafter.start()
    first = drafter.draft(ctx, state)
    assert first.size > 1
    for _ in range(30):  # the model never produces the datastore's next token
        tree = drafter.draft(ctx, state)
        drafter.observe(state, next_token=0, tree=tree, accepted=0)
    assert state.trust.ratio("datastore") < 0.2
    assert drafter.draft(ctx, state).expected_tokens < first.expected_tokens
