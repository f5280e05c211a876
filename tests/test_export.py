"""`distilkit export` -> ONNX: the exported model answers like the torch one, and loads without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from conftest import CORPUS  # noqa: E402
from distilkit import pipeline  # noqa: E402
from distilkit.export import export_onnx  # noqa: E402


@pytest.mark.parametrize("family,head,task", [
    ("distilbert", "question-answering", "question-answering"),
    ("bert", "masked-lm", "fill-mask"),
    ("roberta", "sequence-classification", "text-classification"),
    ("bert", "token-classification", "token-classification"),
])
def test_exported_model_answers_like_torch(checkpoint, tmp_path, family, head, task):
    src = checkpoint(family, head, head_scale=10.0)
    out = export_onnx(src, tmp_path / "onnx", int8=True)
    for name in ("model.onnx", "model.int8.onnx"):  # weights beside the graph, mapped at start-up
        assert (out / f"{name}.data").stat().st_size > (out / name).stat().st_size
        # readable by whoever can read the graph (onnx writes it owner-only)
        assert (out / f"{name}.data").stat().st_mode & 0o777 == (out / name).stat().st_mode & 0o777
    torch_task, onnx_task = pipeline(task, model=src), pipeline(task, model=out)
    int8_task = pipeline(task, model=out, mode="int8")
    mask = torch_task.tokenizer.mask_token
    inputs = {
        "question-answering": [{"question": "Where do I live?", "context": " ".join(CORPUS[:4])},
                               {"question": "Who?", "context": CORPUS[5]}],
        "fill-mask": [f"Paris is the {mask} of France.", f"My {mask} is John and I live in {mask}."],
        "text-classification": CORPUS[:4],
        "token-classification": CORPUS[:3],
    }[task]
    a, b = torch_task.run(inputs), onnx_task.run(inputs)
    flat = lambda r: r if isinstance(r, list) else [r]  # noqa: E731
    assert _texts(a) == _texts(b)
    np.testing.assert_allclose(_scores(a), _scores(b), rtol=1e-4, atol=1e-5)
    # int8: a graph of integer matmuls whose logits stay near fp32's (its agreement on answers is
    # measured on real weights; a tiny random model's near-ties may swap)
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx"), load_external_data=False).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops
    features, _ = onnx_task.featurize(list(inputs), onnx_task.params())
    want, got = (np.concatenate([o.ravel() for o in t.forward(features)]) for t in (onnx_task, int8_task))
    assert 0 < np.abs(got - want).max() < 0.05 * np.abs(want).max()
    assert len(flat(int8_task.run(inputs))) == len(flat(a))


def calibration_file(tmp_path, task: str, labels=("LABEL_0", "LABEL_1")):
    """A few examples of `task` in a format `distilkit evaluate --data` reads."""
    if task == "question-answering":
        paragraphs = [{"context": c, "qas": [{"id": str(i), "question": "Who is there?",
                                               "answers": [{"text": c.split()[0], "answer_start": 0}]}]}
                      for i, c in enumerate(CORPUS)]
        path = tmp_path / "calib.json"
        path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    elif task == "text-classification":
        path = tmp_path / "calib.txt"
        path.write_text("".join(f"{c.replace(';', ',')};{labels[i % len(labels)]}\n" for i, c in enumerate(CORPUS)))
    else:  # CoNLL columns
        path = tmp_path / "calib.conll"
        path.write_text("\n".join("\n".join(f"{w} X X O" for w in c.split()) + "\n" for c in CORPUS))
    return path


def _texts(results):
    if isinstance(results, dict):
        return [v for k, v in sorted(results.items()) if k != "score"]
    if isinstance(results, list):
        return [_texts(r) for r in results]
    return results


def _scores(results):
    if isinstance(results, dict):
        return [results["score"]] if "score" in results else []
    return [s for r in results for s in _scores(r)] if isinstance(results, list) else []


# Run in a fresh interpreter where `import torch` fails (None in sys.modules makes it ImportError).
NO_TORCH = "import sys; sys.modules['torch'] = None; "


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], capture_output=True, text=True, timeout=120)


def test_without_torch_the_blocker_really_blocks():
    assert "ModuleNotFoundError" in run_without_torch("import torch").stderr


def test_exported_pipeline_answers_without_torch(checkpoint, tmp_path):
    src = checkpoint("distilbert", "question-answering", head_scale=20.0)
    out = export_onnx(src, tmp_path / "onnx")
    examples = [{"question": "Where do I live?", "context": " ".join(CORPUS[:3])}, {"question": "Who?", "context": CORPUS[5]}]
    code = ("import json; from distilkit import pipeline; "
            f"qa = pipeline('question-answering', model={str(out)!r}); "
            f"print(json.dumps(qa({examples!r}, top_k=2)))")
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr
    expected = pipeline("question-answering", model=src)(examples, top_k=2)
    got = json.loads(result.stdout)
    assert _texts(got) == _texts(expected)
    np.testing.assert_allclose(_scores(got), _scores(expected), rtol=1e-4, atol=1e-5)


def test_exported_model_batched_without_torch(checkpoint, tmp_path):
    src = checkpoint("bert", "token-classification", head_scale=10.0)
    out = export_onnx(src, tmp_path / "onnx")
    records = tmp_path / "in.jsonl"
    records.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(CORPUS[:6])))
    argv = ["batch", "--input", str(records), "--output", str(tmp_path / "out.jsonl"), "--task", "ner",
            "--model", str(out), "--params", '{"aggregation_strategy": "simple"}', "--progress", "none"]
    result = run_without_torch(f"from distilkit.cli import main; sys.exit(main({argv!r}))")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = pipeline("ner", model=src, aggregation_strategy="simple")(CORPUS[:6])
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(6)]
    got = [r["result"] for r in rows]
    assert _texts(got) == _texts(expected) and sum(map(len, expected)) > 3
    np.testing.assert_allclose(_scores(got), _scores(expected), rtol=1e-4, atol=1e-5)


def test_a_mode_the_export_lacks_is_a_clear_error(checkpoint, tmp_path):
    from distilkit.errors import InputError

    out = export_onnx(checkpoint("distilbert", "question-answering"), tmp_path / "onnx")
    with pytest.raises(InputError, match="from the torch checkpoint") as err:
        pipeline("question-answering", model=out, mode="int8")  # exported without --int8
    assert err.value.field == "mode"
    request = '{"input_data": {"question": "Who?", "context": "Bob is here."}}'
    cli = subprocess.run([sys.executable, "-m", "distilkit.cli", "predict", "question-answering", "--model", str(out),
                          "--mode", "bf16"], input=request, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert '"field": "mode"' in cli.stderr


@pytest.mark.parametrize("family,head", [("distilbert", "question-answering"), ("roberta", "masked-lm")])
def test_export_tells_the_user_nothing_they_cannot_act_on(checkpoint, tmp_path, caplog, family, head):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(checkpoint(family, head), tmp_path / "onnx", int8=True)
    # What Python's default filters show users: not the categories it hides (torch's DeprecationWarning
    # about its TorchScript exporter is addressed to us; a ResourceWarning from whatever the garbage
    # collector meets meanwhile is no export's), everything else, e.g. the tracer's about q, k, v.
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    shown = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, hidden)]
    assert shown == []
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []  # the quantizer's advice


def test_calibrated_int8_export_is_statically_quantized(checkpoint, tmp_path):
    """--int8 --calibrate: activation ranges measured on the task's examples, kept in the graph
    (QuantizeLinear nodes with constant scales) instead of computed on every call."""
    import onnx

    src = checkpoint("bert", "token-classification", head_scale=10.0)
    out = export_onnx(src, tmp_path / "onnx", int8=True, calibrate=calibration_file(tmp_path, "token-classification"))
    assert json.loads((out / "distilkit_export.json").read_text())["int8"] == "static"
    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx"), load_external_data=False).graph.node}
    assert "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
    fp32, int8 = pipeline("token-classification", model=out), pipeline("token-classification", model=out, mode="int8")
    a, b = fp32.run(CORPUS[:3]), int8.run(CORPUS[:3])
    assert [len(r) for r in a] == [len(r) for r in b]


@pytest.mark.parametrize("saturates", [True, False])
def test_int8_weights_keep_7_bits_where_int8_sums_saturate(checkpoint, tmp_path, monkeypatch, saturates):
    """x86 without VNNI/AMX adds u8 x s8 product pairs in int16: the export quantizes the weights
    to 7 bits there, records it, and an export made for VNNI warns when loaded on such a CPU."""
    import onnx
    from onnx import numpy_helper

    import distilkit.export as export_module
    import distilkit.runtime_onnx as runtime_onnx

    monkeypatch.setattr(export_module, "int8_sums_saturate", lambda: saturates)
    out = export_onnx(checkpoint("bert", "sequence-classification"), tmp_path / "onnx", int8=True)
    meta = json.loads((out / "distilkit_export.json").read_text())
    assert meta["int8_reduce_range"] is saturates
    graph = onnx.load(str(out / "model.int8.onnx")).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == (64 if saturates else 127)
    monkeypatch.setattr(runtime_onnx, "int8_sums_saturate", lambda: True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline("text-classification", model=out, mode="int8")
    assert any("saturate" in str(w.message) for w in caught) is not saturates
