"""Retrieval metrics of an embedding model, as BEIR/MTEB and sentence-transformers'
InformationRetrievalEvaluator report them: each query has one relevant document (a SQuAD
question, the paragraph it was written for); documents are ranked by cosine similarity;
recall@k is the share of queries whose document is in the top k, MRR@k the mean of 1/rank
within the top k (0 beyond). Pure numpy, apart from `evaluate_sentence_embedding`, which
embeds with a task object."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

KS = (1, 5, 10)


def own_ranks(queries: np.ndarray, documents: np.ndarray, relevant: Sequence[int], chunk: int = 1024) -> np.ndarray:
    """0-based rank of documents[relevant[i]] among all documents for queries[i], by cosine
    similarity; ties count in the query's favour (only strictly better documents rank above)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    d = documents / np.linalg.norm(documents, axis=1, keepdims=True)
    relevant = np.asarray(relevant)
    ranks = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), chunk):  # (chunk, documents) scores at a time
        scores = q[start: start + chunk] @ d.T
        own = scores[np.arange(len(scores)), relevant[start: start + chunk]]
        ranks[start: start + chunk] = (scores > own[:, None]).sum(1)
    return ranks


def retrieval_metrics(ranks: Sequence[int], ks: Sequence[int] = KS, mrr_at: int = 10) -> dict[str, float]:
    """recall@k for each k and MRR@mrr_at from 0-based ranks of each query's relevant document."""
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        raise ValueError("no queries to score")
    out = {f"recall@{k}": float((ranks < k).mean()) for k in ks}
    out[f"mrr@{mrr_at}"] = float(np.where(ranks < mrr_at, 1.0 / (ranks + 1), 0.0).mean())
    return out


def squad_retrieval_set(records: Sequence[dict]) -> tuple[list[str], list[str], list[int]]:
    """SQuAD records -> (questions, the distinct contexts in order of appearance, each question's
    context index)."""
    index: dict[str, int] = {}
    relevant = [index.setdefault(r["context"], len(index)) for r in records]
    return [r["question"] for r in records], list(index), relevant


def evaluate_sentence_embedding(task: Any, records: Sequence[dict], batch_size: int | None = None) -> dict[str, Any]:
    """Embed the questions and the distinct contexts of SQuAD records with a sentence-embedding
    task; recall@1/5/10 and MRR@10 of each question's own context."""
    questions, contexts, relevant = squad_retrieval_set(records)
    ranks = own_ranks(task.encode(questions, batch_size=batch_size), task.encode(contexts, batch_size=batch_size),
                      relevant)
    return {**retrieval_metrics(ranks), "queries": len(questions), "documents": len(contexts)}
