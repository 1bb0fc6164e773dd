"""Speculative sampling keeps the target distribution: recursive rejection over draft children checked
against exact probabilities, the tree walk on synthetic logits, and end to end on a micro Llama
whose exact next-token marginals are computed by brute force."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from tinymodel import CACHE_DIR  # noqa: E402

from lodestar.backbone import Backbone, BackboneConfig
from lodestar.generate.datastore import Datastore, build_segment
from lodestar.generate.decoder import SpeculativeDecoder
from lodestar.generate.sampling import target_probs, verify_children
from lodestar.generate.suffix_array import SEPARATOR
from lodestar.generate.tree import flatten
from lodestar.generate.types import GenerationParams

MIN_P = 1e-3  # fixed seeds make these tests deterministic; the threshold only guards against a wrong sampler


def gof(samples: list[int], probs: np.ndarray) -> float:
    """Chi-square goodness-of-fit p-value, merging outcomes expected fewer than 5 times."""
    n = len(samples)
    counts = Counter(samples)
    order = np.argsort(-probs)
    obs, exp = [], []
    rest_o = rest_e = 0.0
    for tok in order:
        if probs[tok] * n >= 5:
            obs.append(counts.get(int(tok), 0))
            exp.append(probs[tok] * n)
        else:
            rest_o += counts.get(int(tok), 0)
            rest_e += probs[tok] * n
    if rest_e > 0:
        obs.append(rest_o)
        exp.append(rest_e)
    else:
        assert rest_o == 0, "sampled an outcome of probability 0"
    return float(chisquare(obs, exp).pvalue)


def test_top_p_keeps_smallest_nucleus() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    p = target_probs(logits, 1.0, 0.7)
    assert p.tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0])
    assert target_probs(logits, 1.0, 0.4).tolist() == pytest.approx([1.0, 0, 0, 0])
    assert target_probs(logits, 1.0, 1.0).sum().item() == pytest.approx(1.0)


def test_recursive_rejection_over_children_is_exact() -> None:
    probs = torch.tensor([0.1, 0.25, 0.05, 0.4, 0.2, 0.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(6000):
        i, tok = verify_children(probs, [3, 1, 5], gen)  # 5 has zero mass: never accepted
        assert i is None or [3, 1, 5][i] == tok
        out.append(tok)
    assert gof(out, probs.numpy()) > MIN_P
    assert 5 not in out


def test_tree_walk_sampling_matches_target_per_node(tiny_backbone: Backbone) -> None:
    """Two levels of a synthetic tree: the first emitted token ~ p_root, the second given the first
    accepted child ~ that child's row."""
    dec = SpeculativeDecoder(tiny_backbone)
    tree = flatten([9, 0, 1, 2], [-1, 0, 0, 1])  # root -> {0 -> 2, 1}
    logits = torch.log(
        torch.tensor(
            [
                [0.30, 0.20, 0.10, 0.35, 0.05],  # root: children 0 and 1 carry half the mass
                [0.10, 0.15, 0.40, 0.30, 0.05],  # after 0: its child 2 is likely
                [0.20, 0.20, 0.20, 0.20, 0.20],
                [0.50, 0.10, 0.10, 0.10, 0.20],
            ]
        )
    )
    params = GenerationParams(temperature=0.8, top_p=0.95)
    rng = torch.Generator().manual_seed(2)
    firsts, seconds = [], []
    for _ in range(5000):
        path, nxt = dec._walk(tree, logits, params, rng)
        emitted = [int(tree.tokens[i]) for i in path[1:]] + [nxt]
        firsts.append(emitted[0])
        if emitted[0] == 0:
            seconds.append(emitted[1])
    assert gof(firsts, target_probs(logits[0], 0.8, 0.95).numpy()) > MIN_P
    assert gof(seconds, target_probs(logits[1], 0.8, 0.95).numpy()) > MIN_P


@pytest.fixture(scope="module")
def micro(tokenizer) -> Backbone:  # type: ignore[no-untyped-def]
    """A 24-token-vocabulary Llama: its next-token distributions are spread and exactly computable."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=24,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(6.0)  # sharper distributions: likely drafts get accepted
    return Backbone.from_model(model, tokenizer, "micro-llama", BackboneConfig(model="micro", cache_dir=CACHE_DIR))


def exact_marginals(bb: Backbone, prompt: list[int], temperature: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(x1), P(x2), P(x3) after `prompt` by brute force over all continuations (batched forwards)."""
    V = int(bb.model.config.vocab_size)
    with torch.inference_mode():

        def probs(seqs: torch.Tensor) -> torch.Tensor:
            return torch.softmax(bb.model(input_ids=seqs).logits[:, -1].double() / temperature, -1)  # (B, V)

        base = torch.tensor(prompt)
        p1 = probs(base[None])[0]  # (V,)
        ones = torch.arange(V)[:, None]
        p2 = probs(torch.cat([base.expand(V, -1), ones], 1))  # (V, V): [x1, x2]
        pairs = torch.cartesian_prod(torch.arange(V), torch.arange(V))  # (V*V, 2)
        p3 = probs(torch.cat([base.expand(V * V, -1), pairs], 1)).view(V, V, V)  # [x1, x2, x3]
    m2 = p1 @ p2
    m3 = torch.einsum("a,ab,abc->c", p1, p2, p3)
    return p1.numpy(), m2.numpy(), m3.numpy()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def likely_drafts(bb: Backbone, prompt: list[int], length: int = 6) -> Datastore:
    """A datastore of id sequences: the prompt followed by the greedy path and by a path through
    the runner-up first token, so the draft tree has two children at the root and a chain below."""
    docs = []
    with torch.inference_mode():
        for rank in (0, 1):
            seq = list(prompt)
            for step in range(length):
                logits = bb.model(input_ids=torch.tensor([seq])).logits[0, -1]
                seq.append(int(torch.topk(logits, 2).indices[rank if step == 0 else 0]))
            docs.extend(seq + [SEPARATOR])
    return Datastore(bb.tokenizer, [build_segment(np.asarray(docs, dtype=np.int32), 2)])


def test_speculative_sampling_keeps_the_distribution(micro: Backbone) -> None:
    prompt = [5, 6, 7, 5, 6, 7, 5, 6, 7, 5, 6]
    temperature = 1.0
    m1, m2, m3 = exact_marginals(micro, prompt, temperature)
    dec = SpeculativeDecoder(micro, likely_drafts(micro, prompt))
    dec.eos_ids = set()  # ids < 24 include the tokenizer's EOS; sample through it
    runs = 250
    samples: dict[bool, list[list[int]]] = {False: [], True: []}
    accepted = multi = 0
    for spec in (False, True):
        for seed in range(runs):
            r = dec.generate(
                prompt, GenerationParams(max_new_tokens=3, temperature=temperature, seed=seed, speculative=spec)
            )
            assert len(r.token_ids) == 3
            samples[spec].append(r.token_ids)
            if spec:
                accepted += r.stats.accepted_draft_tokens
                multi += r.stats.steps < 2  # both verified tokens came from one forward
    assert accepted > 40 and multi > 10  # the verification path really ran, accepting drafts
    for spec in (False, True):
        cols = list(zip(*samples[spec]))
        for col, exact in zip(cols, (m1, m2, m3)):
            assert gof(list(col), exact) > MIN_P, (spec, exact)


def test_sampling_is_reproducible_with_a_seed(micro: Backbone) -> None:
    dec = SpeculativeDecoder(micro)
    p = GenerationParams(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=11)
    assert dec.generate([5, 6, 7, 5, 6, 7], p).token_ids == dec.generate([5, 6, 7, 5, 6, 7], p).token_ids


def test_seeded_sampling_does_not_depend_on_the_measured_costs(micro: Backbone, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each server start calibrates its own cost curve; a seeded request must not see it (the tree
    shapes it sizes decide which random numbers are drawn), or a restart changes the output."""
    import lodestar.generate.decoder as decoder_module
    from lodestar.generate.costmodel import CostModel

    prompt = [5, 6, 7, 5, 6, 7, 5, 6, 7, 5, 6]
    store = likely_drafts(micro, prompt)
    outputs = []
    for table in ((1.0,) * 32, tuple(float(i) for i in range(1, 33))):  # drafting free vs never worth it
        monkeypatch.setattr(decoder_module, "measure", lambda *a, _t=table, **k: CostModel(_t))
        dec = SpeculativeDecoder(micro, store)
        dec.eos_ids = set()
        outputs.append(
            [
                dec.generate(prompt, GenerationParams(max_new_tokens=12, temperature=0.8, seed=seed)).token_ids
                for seed in range(8)
            ]
        )
    assert outputs[0] == outputs[1]
