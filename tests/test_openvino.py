"""`distilkit export --format openvino`: the OpenVINO model answers like the torch one in fp32, runs
bf16 and calibrated int8, loads without torch, and refuses what it cannot do with a clear error."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("onnx")

from conftest import CORPUS  # noqa: E402
from distilkit import pipeline  # noqa: E402
from distilkit.errors import InputError  # noqa: E402
from distilkit.export import export_openvino  # noqa: E402
from test_export import _scores, _texts, calibration_file  # noqa: E402

INPUTS = {
    "question-answering": [{"question": "Where do I live?", "context": " ".join(CORPUS[:4])},
                           {"question": "Who?", "context": CORPUS[5]}],
    "text-classification": CORPUS[:4],
    "token-classification": CORPUS[:3],
}


@pytest.mark.parametrize("family,head,task", [
    ("distilbert", "question-answering", "question-answering"),
    ("roberta", "sequence-classification", "text-classification"),
    ("bert", "token-classification", "token-classification"),
])
def test_openvino_export_answers_like_torch(checkpoint, tmp_path, family, head, task):
    src = checkpoint(family, head, head_scale=10.0)
    out = export_openvino(src, tmp_path / "ov", int8=True, calibrate=calibration_file(tmp_path, task))
    meta = json.loads((out / "distilkit_export.json").read_text())
    assert meta["format"] == "openvino" and meta["int8"] == "static"
    torch_task, ov_task = pipeline(task, model=src), pipeline(task, model=out)
    assert type(ov_task.runtime).__name__ == "OpenVINORuntime"
    a, b = torch_task.run(INPUTS[task]), ov_task.run(INPUTS[task])
    assert _texts(a) == _texts(b)
    np.testing.assert_allclose(_scores(a), _scores(b), rtol=1e-4, atol=1e-5)
    for mode in ("bf16", "int8"):  # they run; their agreement is measured on real weights
        assert len(pipeline(task, model=out, mode=mode).run(INPUTS[task])) == len(a)


def test_fill_mask_positions(checkpoint, tmp_path):
    src = checkpoint("bert", "masked-lm")
    out = export_openvino(src, tmp_path / "ov")
    torch_task, ov_task = pipeline("fill-mask", model=src), pipeline("fill-mask", model=out)
    mask = torch_task.tokenizer.mask_token
    texts = [f"Paris is the {mask} of France.", f"My {mask} is John and I live in {mask}."]
    a, b = torch_task.run(texts), ov_task.run(texts)
    assert _texts(a) == _texts(b)
    np.testing.assert_allclose(_scores(a), _scores(b), rtol=1e-4, atol=1e-5)


def test_streams_split_a_batch_and_give_the_same_logits(checkpoint, tmp_path):
    from distilkit.runtime_openvino import OpenVINORuntime

    out = export_openvino(checkpoint("bert", "token-classification"), tmp_path / "ov")
    one, three = OpenVINORuntime(out), OpenVINORuntime(out, streams=3)
    ids = np.random.default_rng(0).integers(5, 300, size=(7, 11))
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    batch["attention_mask"][2, 6:] = 0
    np.testing.assert_allclose(three.forward(batch), one.forward(batch), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError) as err:
        OpenVINORuntime(out, streams=0)
    assert err.value.field == "streams"


def test_openvino_pipeline_imports_no_torch(checkpoint, tmp_path):
    out = export_openvino(checkpoint("distilbert", "question-answering"), tmp_path / "ov")
    code = ("import sys; from distilkit import pipeline; "
            f"qa = pipeline('question-answering', model={str(out)!r}); "
            "print(qa(question='Who?', context='Bob is here.')['answer'] is not None, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True", "False"], result.stderr


def test_what_an_openvino_export_cannot_do_is_a_clear_error(checkpoint, tmp_path):
    src = checkpoint("distilbert", "question-answering")
    with pytest.raises(InputError) as err:
        export_openvino(src, tmp_path / "ov", int8=True)  # static int8 needs calibration data
    assert err.value.field == "calibrate"
    out = export_openvino(src, tmp_path / "ov")
    with pytest.raises(InputError, match="--calibrate") as err:
        pipeline("question-answering", model=out, mode="int8")
    assert err.value.field == "mode"
    cli = subprocess.run([sys.executable, "-m", "distilkit.cli", "export", "--model", str(src), "--out",
                          str(tmp_path / "cli"), "--format", "openvino", "--int8"], capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr and "--calibrate" in cli.stderr, cli.stderr


def test_calibration_batches_are_what_the_task_feeds_the_model(checkpoint, tmp_path):
    from distilkit.quantize import calibration_batches

    src = checkpoint("bert", "sequence-classification")
    batches = calibration_batches(src, "sequence-classification", calibration_file(tmp_path, "text-classification"),
                                  limit=5)
    assert sum(len(b["input_ids"]) for b in batches) == 5  # one row per text, the first five
    assert {"input_ids", "attention_mask", "token_type_ids"} == set(batches[0])
    texts = pipeline("text-classification", model=src).tokenizer.encode([c.replace(";", ",") for c in CORPUS[:5]])
    rows = sorted(tuple(r[m.astype(bool)]) for b in batches for r, m in zip(b["input_ids"], b["attention_mask"]))
    assert rows == sorted(tuple(e.ids) for e in texts)


def test_auto_mode_is_the_policys_choice_on_every_backend(checkpoint, tmp_path):
    """mode="auto" (config.AUTO_POLICY): on a torch checkpoint bf16 where the CPU computes it natively,
    else fp32; an export runs fp32 (OpenVINO's bf16 and every int8 kept fewer of fp32's answers). The
    runtime reports the mode it runs, and the tasks size their batches for it."""
    from distilkit.export import export_onnx
    from distilkit.runtime import cpu_has_bf16

    src = checkpoint("distilbert", "question-answering")
    assert pipeline("qa", model=src, mode="auto").runtime.mode == ("bf16" if cpu_has_bf16() else "fp32")
    assert pipeline("qa", model=export_openvino(src, tmp_path / "ov"), mode="auto").runtime.mode == "fp32"
    assert pipeline("qa", model=export_onnx(src, tmp_path / "onnx"), mode="auto").runtime.mode == "fp32"
    request = '{"input_data": {"question": "Who?", "context": "Bob is here."}}'
    cli = subprocess.run([sys.executable, "-m", "distilkit.cli", "predict", "question-answering", "--model", str(src),
                          "--mode", "auto"], input=request, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr


def test_the_runtime_imports_openvino_without_its_converter():
    """A cold start skips openvino.tools.ovc (the converter and its telemetry); whoever asks for
    openvino.convert_model later still gets it."""
    code = ("import sys; from distilkit.runtime_openvino import import_openvino; ov = import_openvino(); "
            "assert 'openvino.tools.ovc' not in sys.modules and 'torch' not in sys.modules; "
            "from openvino import convert_model; assert convert_model is ov.convert_model; "
            "assert 'openvino.tools.ovc' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
