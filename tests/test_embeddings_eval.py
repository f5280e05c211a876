"""`distilkit evaluate --task sentence-embedding`: retrieval metrics by hand, and equal to
sentence-transformers' InformationRetrievalEvaluator on a tiny SQuAD file (the real MiniLM on the
real SQuAD half: test_embeddings_real.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distilkit.evaluate import main
from distilkit.metrics.retrieval import own_ranks, retrieval_metrics, squad_retrieval_set

from conftest import CORPUS
from test_embeddings import st_folder


def st_retrieval(folder, records) -> dict[str, float]:
    """sentence-transformers' own figures for the same ranking: its IR evaluator on its own embeddings."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    questions, contexts, relevant = squad_retrieval_set(records)
    evaluator = InformationRetrievalEvaluator(
        {str(i): q for i, q in enumerate(questions)}, {str(j): c for j, c in enumerate(contexts)},
        {str(i): {str(j)} for i, j in enumerate(relevant)}, accuracy_at_k=[1, 5, 10], precision_recall_at_k=[1, 5, 10],
        mrr_at_k=[10], ndcg_at_k=[10], map_at_k=[10], write_csv=False, batch_size=64)
    scores = evaluator(SentenceTransformer(str(folder), device="cpu"))
    return {k: scores[f"cosine_{k}"] for k in ("recall@1", "recall@5", "recall@10", "mrr@10")}


def test_metrics_by_hand():
    # Query 0's document is best, query 1's second, query 2's fourth of four.
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d = np.array([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [-1.0, -1.0]])
    ranks = own_ranks(q, d, [0, 0, 3])
    assert ranks.tolist() == [0, 2, 3]
    got = retrieval_metrics(ranks, ks=(1, 3), mrr_at=3)
    assert got == pytest.approx({"recall@1": 1 / 3, "recall@3": 2 / 3, "mrr@3": (1 + 1 / 3 + 0) / 3})
    assert own_ranks(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0], [1.0, 0.0]]), [1]).tolist() == [0]  # ties: favourable
    with pytest.raises(ValueError):
        retrieval_metrics([])


def test_squad_retrieval_set():
    records = [{"question": "a?", "context": "X"}, {"question": "b?", "context": "Y"}, {"question": "c?", "context": "X"}]
    assert squad_retrieval_set(records) == (["a?", "b?", "c?"], ["X", "Y"], [0, 1, 0])


def tiny_squad(path):
    paragraphs = [{"context": c, "qas": [{"id": f"{i}-{j}", "question": q, "answers": [], "is_impossible": True}
                                         for j, q in enumerate(CORPUS[(i + 1) % len(CORPUS)].split(" ")[:3])]}
                  for i, c in enumerate(CORPUS)]
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def test_cli_equals_sentence_transformers(checkpoint, tmp_path, capsys, one_thread):
    from distilkit.data.readers import read_records

    folder = st_folder(tmp_path, checkpoint("bert", None), pooling="mean_tokens", max_seq_length=16)
    data = tiny_squad(tmp_path / "squad.json")
    assert main(["--model", str(folder), "--task", "text-embedding", "--data", str(data),
                 "--output", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["task"] == "sentence-embedding" and report["metrics"]["documents"] == len(CORPUS)
    expected = st_retrieval(folder, read_records("question-answering", data))
    assert {k: report["metrics"][k] for k in expected} == pytest.approx(expected, abs=1e-9)
    assert "recall@10" in capsys.readouterr().err  # the table
