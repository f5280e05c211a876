"""`distilkit bench`: every mode measured on the same inputs, against the first."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distilkit import bench


def test_modes_are_timed_against_the_first_on_the_same_inputs(checkpoint):
    path = checkpoint("distilbert", "question-answering")
    rows = bench.run(path, ["fp32", "int8"], batch=2, tokens=16, rounds=2, pause=0)
    assert [r["mode"] for r in rows] == ["fp32", "int8"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["max_logit_diff"] == 0.0
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert 0 < rows[1]["max_logit_diff"] < 1  # int8 computes something else, but close


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
