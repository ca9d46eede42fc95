"""Retrieval quality of the RAG route, measured without Serve: recall@k on a question set.

The same pieces as the route (collection, chunking, WordLlama, FAISS), so the number describes
what `/v1/rag` retrieves. The bundled set: 40 questions, each written for one of the 30 bundled
CPython documentation topics.
"""

from __future__ import annotations

import json

from components.apps.config import BUNDLED, RagConfig
from components.core import retrieval
from components.core.embedding import wordllama_embed


def recall_report(cfg: RagConfig, questions: list[dict], ks: tuple[int, ...] = (1, 3, 5)) -> dict[str, float]:
    """recall@k of the route's retrieval (same collection, chunking, embedder and index) on `questions`
    ([{question, source}]), computed here without Serve: {"recall@1": ..., "chunks": n}."""
    index = retrieval.build_index(retrieval.collect_documents(cfg.collection, cfg.patterns), wordllama_embed, cfg.index,
                                  cfg.chunk_chars, cfg.chunk_overlap)
    got = [[h.chunk.source for h in retrieval.search(index, wordllama_embed, q["question"], max(ks))] for q in questions]
    report = {f"recall@{k}": retrieval.recall_at_k(got, [q["source"] for q in questions], k) for k in ks}
    return {**report, "chunks": len(index.chunks), "questions": len(questions)}


def bundled_questions() -> list[dict]:
    """The bundled retrieval question set: [{question, source}] over the bundled collection."""
    return [json.loads(line) for line in (BUNDLED / "questions.jsonl").read_text().splitlines() if line.strip()]
