"""Export and the fast modes for the new tasks: an ONNX export of a sentence-transformers folder
keeps its pooling, and fp32 ONNX equals torch; bf16 and int8 stay close to fp32."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from distilkit import pipeline

from test_embeddings import TEXTS, st_folder

pytest.importorskip("onnxruntime")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def folder(checkpoint, tmp_path_factory):
    return st_folder(tmp_path_factory.mktemp("st"), checkpoint("bert", None), pooling="mean_tokens", max_seq_length=16)


def test_export_keeps_pooling(folder, tmp_path, one_thread):
    from distilkit.export import main

    assert main(["--model", str(folder), "--out", str(tmp_path / "onnx"), "--int8"]) == 0
    assert (tmp_path / "onnx" / "1_Pooling" / "config.json").is_file()
    texts = TEXTS + [" ".join(TEXTS * 4)]  # past max_seq_length: cut in the export too
    reference = pipeline("sentence-embedding", model=folder).encode(texts)
    exported = pipeline("sentence-embedding", model=tmp_path / "onnx")
    assert type(exported.runtime).__name__ == "OnnxRuntime"
    np.testing.assert_allclose(exported.encode(texts), reference, atol=1e-5)
    int8 = pipeline("sentence-embedding", model=tmp_path / "onnx", mode="int8").encode(texts)
    assert cosines(int8, reference).min() > 0.99
    tokens = pipeline("feature-extraction", model=tmp_path / "onnx")(TEXTS[0])
    np.testing.assert_allclose(tokens, pipeline("feature-extraction", model=folder)(TEXTS[0]), atol=1e-5)


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_torch_modes(folder, mode, one_thread):
    reference = pipeline("sentence-embedding", model=folder).encode(TEXTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on a CPU without native bf16 says so
        fast = pipeline("sentence-embedding", model=folder, mode=mode).encode(TEXTS)
    assert fast.dtype == np.float32 and cosines(fast, reference).min() > 0.99


def test_export_of_pair_tasks(classifier, tmp_path, one_thread):
    from distilkit.export import export_onnx

    nli = classifier("distilbert", {0: "contradiction", 1: "neutral", 2: "entailment"})
    export_onnx(nli, tmp_path / "nli")
    labels = ["travel", "food", "politics"]
    expected = pipeline("zero-shot-classification", model=nli)(TEXTS, labels)
    got = pipeline("zero-shot-classification", model=tmp_path / "nli")(TEXTS, labels)
    for e, g in zip(expected, got):
        assert e["labels"] == g["labels"]
        np.testing.assert_allclose(e["scores"], g["scores"], atol=1e-5)
    ce = classifier("bert", {0: "LABEL_0"}, seed=2, head_scale=30.0)
    export_onnx(ce, tmp_path / "ce")
    expected = pipeline("text-ranking", model=ce)("Where?", TEXTS)
    got = pipeline("text-ranking", model=tmp_path / "ce")("Where?", TEXTS)
    assert [r["index"] for r in got] == [r["index"] for r in expected]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in expected], atol=1e-5)
