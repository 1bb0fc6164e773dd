"""The reader LM used to judge a compressor: the backbone answers a question from a context.

Short answers, greedy, through the chat template, with three worked examples that show the expected
form (a few words lifted from the context). Also scores the log-likelihood of a given answer, which
the trainer uses to label the sentence that helps the reader most (RECOMP's extractive objective).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lodestar.backbone import Backbone
from lodestar.backbone.chat import Generated, Message, chat_ids, generate

# Worked examples (made up, not from any evaluation set) showing the answer form: a short span.
# Measured on SQuAD dev with SmolLM2-135M: three shots and a "Short answer:" cue turn rambling
# sentences (EM 0 with a system instruction alone) into spans.
SHOTS: tuple[tuple[str, str, str], ...] = (
    (
        "The Eiffel Tower was completed in 1889 for the World's Fair. It was designed by the "
        "engineering firm of Gustave Eiffel.",
        "When was the Eiffel Tower completed?",
        "1889",
    ),
    (
        "Marie Curie won the Nobel Prize in Physics in 1903 together with Pierre Curie and Henri Becquerel.",
        "Who shared the 1903 physics prize with the Curies?",
        "Henri Becquerel",
    ),
    ("", "Into which ocean does the Amazon river flow?", "the Atlantic Ocean"),
)


def user_turn(question: str, context: str) -> str:
    q = " ".join(question.split())
    if context.strip():
        return f"Context: {context.strip()}\nQuestion: {q}\nShort answer:"
    return f"Question: {q}\nShort answer:"


@dataclass
class Reader:
    backbone: Backbone
    max_new_tokens: int = 16
    batch_size: int = 8

    def messages(self, question: str, context: str) -> list[Message]:
        msgs: list[Message] = []
        for ctx, q, a in SHOTS:
            msgs += [{"role": "user", "content": user_turn(q, ctx)}, {"role": "assistant", "content": a}]
        msgs.append({"role": "user", "content": user_turn(question, context)})
        return msgs

    def prompt_ids(self, question: str, context: str) -> list[int]:
        return chat_ids(self.backbone, self.messages(question, context))

    def answer(self, questions: list[str], contexts: list[str]) -> list[Generated]:
        """One short greedy answer per (question, context); an empty context means closed-book."""
        prompts = [self.prompt_ids(q, c) for q, c in zip(questions, contexts)]
        return generate(self.backbone, prompts, self.max_new_tokens, newline_stops=True, batch_size=self.batch_size)

    @torch.inference_mode()
    def answer_logprob(self, question: str, contexts: list[str], answer: str) -> list[float]:
        """Mean log-probability per token of `answer` as the reply, for each context (batched)."""
        tok = self.backbone.tokenizer
        ans = list(tok(answer.strip(), add_special_tokens=False)["input_ids"])
        rows = [self.prompt_ids(question, c) + ans for c in contexts]
        T = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(rows), T), pad, dtype=torch.long)  # (B, T) right-padded
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        ids, mask = ids.to(self.backbone.device), mask.to(self.backbone.device)
        model = self.backbone.model
        with self.backbone.lock, self.backbone.adapters.use(None):
            hidden = model.get_decoder()(
                input_ids=ids, attention_mask=mask, use_cache=False
            ).last_hidden_state  # (B, T, H)
            # The LM head only where an answer token is predicted: full-vocabulary logits for every
            # prompt position would cost more than the decoder itself.
            starts = [len(r) - len(ans) for r in rows]
            picked = torch.stack([hidden[i, s - 1 : s - 1 + len(ans)] for i, s in enumerate(starts)])  # (B, A, H)
            logits = model.get_output_embeddings()(picked).float()  # (B, A, V)
        targets = torch.stack([ids[i, s : s + len(ans)] for i, s in enumerate(starts)])  # (B, A)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]  # (B, A)
        return [float(x) for x in logp.mean(-1)]
