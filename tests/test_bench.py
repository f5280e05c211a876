"""`distilkit bench`: every mode measured on the same inputs, against the first."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distilkit import bench


def test_modes_are_timed_against_the_first_on_the_same_inputs(checkpoint, monkeypatch):
    """Speeds from a clock that the forward passes move by a set time per mode (fp32 0.5 s, int8
    0.2 s, int8's first round 3 s: the median ignores it); the logit difference against transformers'
    fp32 logits and our int8 ones, on the bench's inputs."""
    import types

    import transformers as T

    from distilkit.checkpoint import load_model
    from distilkit.runtime import Runtime

    clock, seen = [0.0], []
    forward = Runtime.forward

    def timed(self, batch, positions=None):
        cost = {"fp32": 0.5, "int8": 3.0 if self.mode == "int8" and len(seen) == 3 else 0.2}[self.mode]
        clock[0] += cost
        seen.append((self.mode, batch["input_ids"].copy()))
        return forward(self, batch, positions)

    monkeypatch.setattr(Runtime, "forward", timed)
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: clock[0], sleep=lambda s: None))
    path = checkpoint("distilbert", "question-answering")
    rows = bench.run(path, ["fp32", "int8"], batch=2, tokens=16, rounds=3, pause=0)
    assert [r["mode"] for r in rows] == ["fp32", "int8"]
    assert [r["tokens_per_s"] for r in rows] == pytest.approx([2 * 16 / 0.5, 2 * 16 / 0.2])
    assert [r["speedup"] for r in rows] == pytest.approx([1.0, 2.5])
    ids = seen[0][1]
    assert ids.shape == (2, 16) and all(np.array_equal(b, ids) for _, b in seen)  # one input for all

    monkeypatch.setattr(Runtime, "forward", forward)
    with torch.no_grad():
        out = T.AutoModelForQuestionAnswering.from_pretrained(path).eval()(input_ids=torch.from_numpy(ids))
    want = torch.stack([out.start_logits, out.end_logits], -1).numpy()
    int8 = Runtime(load_model(path), mode="int8").forward({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert rows[0]["max_logit_diff"] == 0.0
    assert rows[1]["max_logit_diff"] == pytest.approx(float(np.abs(int8 - want).max()), abs=2e-5)
    assert rows[1]["max_logit_diff"] > 1e-4  # int8 computes something else


def test_a_masked_lm_projects_one_position_per_row(checkpoint, monkeypatch):
    from distilkit.runtime import Runtime

    seen = []
    forward = Runtime.forward
    monkeypatch.setattr(Runtime, "forward", lambda self, b, p=None: seen.append(p) or forward(self, b, p))
    bench.run(checkpoint("bert", "masked-lm"), ["fp32"], batch=3, tokens=8, rounds=1, pause=0)
    np.testing.assert_array_equal(seen[0], [1, 9, 17])


def test_default_modes_follow_the_machine_and_the_export(checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from distilkit.export import export_onnx

    path = checkpoint("distilbert", "question-answering")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for bf16 in (True, False):
        monkeypatch.setattr("distilkit.runtime.cpu_has_bf16", lambda: bf16)
        assert bench.default_modes(path) == (["fp32", "bf16", "int8"] if bf16 else ["fp32", "int8"])
    assert bench.default_modes(path, device="cuda") == ["fp32", "bf16"]
    assert bench.default_modes(export_onnx(path, tmp_path / "fp32")) == ["fp32"]
    exported = export_onnx(path, tmp_path / "both", int8=True)
    assert bench.default_modes(exported) == ["fp32", "int8"]
    assert [r["mode"] for r in bench.run(exported, batch=1, tokens=8, rounds=1, pause=0)] == ["fp32", "int8"]


def test_the_command_prints_a_table_or_json_and_refuses_bad_input_clearly(checkpoint, capsys):
    path = str(checkpoint("distilbert", "question-answering"))
    small = ["--model", path, "--batch", "1", "--tokens", "8", "--rounds", "1", "--modes", "fp32"]
    assert bench.main(small) == 0
    assert "fp32" in capsys.readouterr().out.splitlines()[-1]
    assert bench.main(small + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["mode"] == "fp32"
    for bad, says in ((["--modes", "fp8"], "unknown mode 'fp8'"), (["--tokens", "4096"], "tokens must be between 1 and"),
                      (["--rounds", "0"], "rounds must be at least 1")):
        with pytest.raises(SystemExit) as err:
            bench.main(small + bad)
        assert err.value.code == 2 and says in capsys.readouterr().err


def test_an_export_is_measured_without_importing_torch(checkpoint, tmp_path):
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    from distilkit.export import export_onnx

    out = export_onnx(checkpoint("distilbert", "question-answering"), tmp_path / "onnx", int8=True)
    code = ("import sys; from distilkit import bench; "
            f"rows = bench.run({str(out)!r}, batch=1, tokens=8, rounds=1, pause=0); "
            "print(*[r['mode'] for r in rows], 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["fp32", "int8", "False"], result.stderr
