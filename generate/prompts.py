"""Prompts of retrieval-augmented answers: the RAG benchmark and the Answer RPC ask the same way."""

from __future__ import annotations

RAG_INSTRUCTION = (
    "Answer the question using the passage below. Reply with one complete sentence that reuses the passage's wording."
)
CLOSED_BOOK_INSTRUCTION = "Answer the question in one complete sentence."


def rag_prompt(question: str, passage: str) -> str:
    """The user turn: instruction, passage, question; closed-book (instruction, question) without a passage."""
    if not passage.strip():
        return f"{CLOSED_BOOK_INSTRUCTION}\n\nQuestion: {question}"
    return f"{RAG_INSTRUCTION}\n\nPassage: {passage}\n\nQuestion: {question}"
