"""Retrieval: collections of documents searched densely (FAISS), sparsely (BM25) or both (fusion)."""
