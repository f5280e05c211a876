"""feature-extraction and sentence-embedding against the references: the transformers 4.57
feature-extraction pipeline on tiny DistilBERT, BERT and RoBERTa checkpoints, and
sentence-transformers on tiny sentence-transformers folders (the real MiniLM: test_embeddings_real.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from distilkit import pipeline
from distilkit.errors import InputError
from distilkit.tasks.feature_extraction import normalize, pool

TEXTS = ["My name is John and I live in Seattle.", "Paris is the capital of France.", "Hi", "Today is a beautiful day!"]


@pytest.mark.parametrize("family", ["distilbert", "bert", "roberta"])
@pytest.mark.parametrize("head", [None, "question-answering"])
def test_feature_extraction_equals_transformers(checkpoint, family, head, one_thread):
    """The last hidden state per token, special tokens included, in the pipeline's nested-list shape;
    a task checkpoint runs as its bare encoder (its head weights are not loaded)."""
    from transformers import pipeline as hf_pipeline

    d = checkpoint(family, head)
    ref = hf_pipeline("feature-extraction", model=str(d), framework="pt")
    ours = pipeline("feature-extraction", model=d)
    for text in TEXTS:
        expected = torch.tensor(ref(text))
        got = torch.tensor(ours(text))
        assert got.shape == expected.shape and got.shape[0] == 1
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    batch = ours(TEXTS)
    assert len(batch) == len(TEXTS)
    torch.testing.assert_close(torch.tensor(batch[2]), torch.tensor(ref(TEXTS[2])), atol=1e-5, rtol=1e-4)


def test_load_model_head_none_is_the_bare_encoder(checkpoint):
    from distilkit.checkpoint import load_model

    model = load_model(checkpoint("distilbert", "sequence-classification"), head=None)
    assert model.head_name is None and model.head is None


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "mean_sqrt_len"])
def test_pooling_matches_token_states(checkpoint, pooling, one_thread):
    d = checkpoint("bert", None)
    ours = pipeline("feature-extraction", model=d)
    tokens = [np.asarray(ours(t)[0], dtype=np.float32) for t in TEXTS]
    pooled = ours(TEXTS, pooling=pooling, normalize=True)
    for t, v in zip(tokens, pooled):
        expected = {"mean": t.mean(0), "cls": t[0], "max": t.max(0), "mean_sqrt_len": t.sum(0) / np.sqrt(len(t))}[pooling]
        np.testing.assert_allclose(v, expected / np.linalg.norm(expected), atol=1e-6)
        assert abs(np.linalg.norm(v) - 1) < 1e-5


def test_pool_and_normalize_by_hand():
    h = np.array([[1.0, 2.0], [3.0, -4.0], [2.0, 5.0]], dtype=np.float32)
    np.testing.assert_allclose(pool(h, "mean"), [2.0, 1.0])
    np.testing.assert_allclose(pool(h, "cls"), [1.0, 2.0])
    np.testing.assert_allclose(pool(h, "max"), [3.0, 5.0])
    np.testing.assert_allclose(pool(h, "mean_sqrt_len"), [6.0 / np.sqrt(3), 3.0 / np.sqrt(3)], rtol=1e-6)
    np.testing.assert_allclose(normalize(np.array([3.0, 4.0], dtype=np.float32)), [0.6, 0.8])
    assert not np.isnan(normalize(np.zeros(2, dtype=np.float32))).any()


def st_folder(tmp_path, base, pooling="mean_tokens", normalize_module=True, max_seq_length=16, dim=32):
    """A sentence-transformers folder around a tiny checkpoint, as SentenceTransformer.save writes it."""
    d = tmp_path / f"st-{pooling}-{normalize_module}"
    shutil.copytree(base, d)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize_module:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (d / "modules.json").write_text(json.dumps(modules))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))
    (d / "1_Pooling").mkdir()
    flags = {f"pooling_mode_{m}": m == pooling for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")}
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": dim, **flags}))
    return d


@pytest.mark.parametrize("family", ["distilbert", "bert", "roberta"])
@pytest.mark.parametrize("pooling,norm", [("mean_tokens", True), ("cls_token", False), ("max_tokens", True)])
def test_sentence_embedding_equals_sentence_transformers(checkpoint, tmp_path, family, pooling, norm, one_thread):
    """Pooling, normalisation and max_seq_length read from the folder; long texts cut as ST cuts them."""
    from sentence_transformers import SentenceTransformer

    d = st_folder(tmp_path, checkpoint(family, None), pooling, norm)
    texts = TEXTS + [" ".join(TEXTS * 3)]  # the last one is past max_seq_length=16
    expected = SentenceTransformer(str(d), device="cpu").encode(texts, batch_size=2)
    p = pipeline("text-embedding", model=d)
    got = p.encode(texts, batch_size=2)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5
    np.testing.assert_allclose(p.encode(texts[0]), expected[0], atol=1e-5)
    np.testing.assert_allclose(p(texts[1]), expected[1], atol=1e-5)
    if norm:  # normalize=False at call time gives the raw pooled vector
        raw = p.encode(texts, normalize=False)
        np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), expected, atol=1e-5)


def test_sentence_embedding_folder_errors(checkpoint, tmp_path):
    base = checkpoint("bert", None)
    with pytest.raises(InputError, match="pooling=") as e:  # no pooling config: name the options
        pipeline("sentence-embedding", model=base)
    assert e.value.field == "pooling"
    p = pipeline("sentence-embedding", model=base, pooling="mean", normalize=True)
    assert abs(np.linalg.norm(p.encode("Hi")) - 1) < 1e-5
    with pytest.raises(InputError, match="word_embedding_dimension is 64"):
        pipeline("sentence-embedding", model=st_folder(tmp_path, base, dim=64))
    dense = st_folder(tmp_path / "dense", base)
    modules = json.loads((dense / "modules.json").read_text())
    (dense / "modules.json").write_text(json.dumps(modules + [{"idx": 3, "name": "3", "path": "3_Dense",
                                                               "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(InputError, match="Dense"):
        pipeline("sentence-embedding", model=dense)


@pytest.mark.parametrize("bad,field", [("", "inputs[0]"), ("   ", "inputs[0]"), (3, "inputs[0]"), ([], "inputs"),
                                       (["ok", None], "inputs[1]"), ({"a": 1}, "inputs")])
def test_bad_inputs_name_the_field(checkpoint, bad, field):
    p = pipeline("feature-extraction", model=checkpoint("distilbert", None))
    with pytest.raises(InputError) as e:
        p([bad]) if isinstance(bad, int) else p(bad)
    assert e.value.field == field


def test_bad_options_and_too_long(checkpoint):
    p = pipeline("feature-extraction", model=checkpoint("distilbert", None))
    with pytest.raises(InputError) as e:
        p("hi", pooling="median")
    assert e.value.field == "pooling"
    with pytest.raises(InputError) as e:
        p(" ".join(TEXTS * 10))
    assert e.value.field == "inputs[0]" and "truncation" in str(e.value)
    assert len(p(" ".join(TEXTS * 10), truncation=True)[0]) == 128
    s = pipeline("sentence-embedding", model=checkpoint("distilbert", None), pooling="mean")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError) as e:
            s.encode(["a"], batch_size=bad)
        assert e.value.field == "batch_size"


def test_first_run_offline_on_the_installed_minilm(minilm_dir, monkeypatch, capsys):
    """`distilkit predict sentence-embedding` without --model: the real MiniLM the setup installs."""
    import io

    from distilkit.cli import main
    from distilkit.pipelines import default_model

    assert default_model("sentence-embedding") == str(minilm_dir)
    monkeypatch.delenv("DISTILKIT_MODEL", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(
        {"input_data": ["Where is the Eiffel Tower?", "The Eiffel Tower is in Paris.", "I like bread."]})))
    assert main(["predict", "sentence-embedding"]) == 0
    v = np.asarray(json.loads(capsys.readouterr().out))
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # real weights: the answer is nearer the question than bread
