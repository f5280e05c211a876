"""Run modes of the torch runtime: what each computes, and that a caller's model is left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from distilkit.checkpoint import load_model
from distilkit.pipelines import pipeline
from distilkit.runtime import Int8Linear, PackedLinear, Runtime, _cpu_has, _quantized_engine, bucket_length, int8_engine


def batch() -> dict[str, np.ndarray]:
    ids = np.array([[2, 40, 41, 42, 3, 0, 0], [2, 50, 51, 52, 53, 54, 3]], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}


@pytest.mark.parametrize("family,head", [("distilbert", "question-answering"), ("bert", "sequence-classification"),
                                         ("roberta", "token-classification"), ("distilbert", "masked-lm")])
def test_bf16_equals_autocast_and_leaves_the_callers_model_alone(checkpoint, family, head):
    model = load_model(checkpoint(family, head))
    b = batch()
    if family == "roberta":
        b["input_ids"][b["input_ids"] == 0] = 1  # RoBERTa's padding id
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(torch.from_numpy(b["input_ids"]), torch.from_numpy(b["attention_mask"])).logits.float().numpy()
    runtime = Runtime(model, mode="bf16")
    if PackedLinear.supported(torch.bfloat16):  # on CPUs with bf16 support the weights are also prepacked for oneDNN
        assert not any(isinstance(m, torch.nn.Linear) for m in runtime.model.modules())
    got = runtime.forward(b)
    if _cpu_has("_is_amx_tile_supported"):  # measured there: the same oneDNN kernel, packed or not
        np.testing.assert_array_equal(got, want)  # the linear layers cast (and packed) once give autocast's very values
    else:  # other kernels may sum a packed weight's blocks in another order: bf16 rounding apart
        np.testing.assert_allclose(got, want, rtol=0, atol=2 ** -6 * np.abs(want).max())
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # a copy was cast, not the caller's model


@pytest.mark.skipif(not PackedLinear.supported(torch.float32), reason="no oneDNN in this torch")
def test_fp32_prepacks_a_model_it_owns_and_computes_the_same(checkpoint):
    path = checkpoint("bert", "masked-lm")
    b = batch()
    borrowed = load_model(path)
    plain = Runtime(borrowed)  # a model handed over in memory (one being trained, say): used as it is
    assert plain.model is borrowed and any(isinstance(m, torch.nn.Linear) for m in borrowed.modules())
    owned = Runtime(load_model(path), owned=True)
    assert not any(isinstance(m, torch.nn.Linear) for m in owned.model.modules())
    assert any(isinstance(m, PackedLinear) and m.dtype == torch.float32 for m in owned.model.modules())
    np.testing.assert_allclose(owned.forward(b), plain.forward(b), rtol=0, atol=1e-5)  # oneDNN's rounding, not MKL's
    positions = np.array([1, 3, 8])
    np.testing.assert_allclose(owned.forward(b, positions), plain.forward(b, positions), rtol=0, atol=1e-5)


def test_length_buckets_are_few_and_cost_little_padding():
    lengths = {n: bucket_length(n) for n in range(1, 513)}
    assert all(n <= b < n * 17 / 16 for n, b in lengths.items())
    assert len(set(lengths.values())) <= 96 and bucket_length(512) == 512 and bucket_length(384) == 384


@pytest.mark.parametrize("family,head", [("distilbert", "question-answering"), ("bert", "sequence-classification"),
                                         ("roberta", "token-classification"), ("distilbert", "masked-lm")])
@pytest.mark.parametrize("mode", ["fp32", "bf16", "int8"])
def test_length_buckets_leave_the_logits_alone(checkpoint, monkeypatch, family, head, mode):
    path = checkpoint(family, head)
    runtimes = {}
    for on in ("1", "0"):
        monkeypatch.setenv("DISTILKIT_LENGTH_BUCKETS", on)
        runtimes[on] = Runtime(load_model(path), mode=mode, owned=True)
    if not runtimes["1"].length_buckets:
        pytest.skip(f"{mode} does not run on oneDNN here")
    pad = 1 if family == "roberta" else 0
    rng = np.random.default_rng(0)
    for T in (7, 69, 126):  # 69 -> 72; 126 -> 128, past the tiny models' 128 positions less RoBERTa's offset
        ids = rng.integers(5, 90, size=(3, T))
        ids[1, T // 2:] = pad
        b = {"input_ids": ids, "attention_mask": (ids != pad).astype(np.int64)}
        got, want = runtimes["1"].forward(b), runtimes["0"].forward(b)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=0.05 if mode != "fp32" else 1e-5)
        if head == "masked-lm":
            positions = np.array([1, T + 2, 2 * T + T - 1])
            np.testing.assert_allclose(runtimes["1"].forward(b, positions), runtimes["0"].forward(b, positions),
                                       rtol=0, atol=0.05 if mode != "fp32" else 1e-5)


@pytest.mark.parametrize("family,head", [("distilbert", "question-answering"), ("bert", "token-classification")])
def test_bf16_and_int8_stay_close_to_fp32(checkpoint, family, head):
    """Token-level logits, whose spread between tokens (std ~0.5 here) dwarfs the modes' rounding: a
    sentence classifier's tiny random scores barely move between inputs, so any model would pass."""
    ckpt = str(checkpoint(family, head, head_scale=5.0))
    task = head  # the two heads' task names are theirs
    ids = np.random.default_rng(0).integers(5, 300, size=(4, 20))
    ids[:, 0] = 2
    b = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    want = pipeline(task, model=ckpt).runtime.forward(b)
    assert want.std() > 0.3
    for mode in ("bf16", "int8"):
        runtime = pipeline(task, model=ckpt, mode=mode).runtime
        assert runtime.mode == mode
        diff = np.abs(runtime.forward(b) - want).max()
        assert 0 < diff < 0.1 * want.std(), mode  # measured: bf16 0.006, int8 0.017


@pytest.mark.parametrize("engine", [e for e in ("fbgemm", "onednn") if e in torch.backends.quantized.supported_engines])
def test_int8_on_each_quantized_engine_stays_close_to_fp32(checkpoint, monkeypatch, engine):
    model = load_model(checkpoint("distilbert", "question-answering"))
    want = Runtime(model).forward(batch())
    before = torch.backends.quantized.engine
    monkeypatch.setenv("DISTILKIT_INT8_ENGINE", engine)
    assert int8_engine() == engine
    got = Runtime(model, mode="int8").forward(batch())
    assert torch.backends.quantized.engine == before  # chosen for packing the weights only, not process-wide
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())
    monkeypatch.setenv("DISTILKIT_INT8_ENGINE", "fp4")
    with pytest.raises(ValueError, match="DISTILKIT_INT8_ENGINE"):
        Runtime(model, mode="int8")


def test_int8_says_nothing_of_torchs_own_deprecations(checkpoint):
    import warnings

    model = load_model(checkpoint("distilbert", "question-answering"))

    def deprecations(run) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
        return [str(w.message) for w in caught if "deprecated" in str(w.message)]

    assert deprecations(lambda: Runtime(model, mode="int8").forward(batch())) == []
    # torch itself still warns (else this test proves nothing)
    assert deprecations(lambda: torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(8, 8))))


@pytest.mark.parametrize("engine", [e for e in ("onednn", "fbgemm") if e in torch.backends.quantized.supported_engines])
def test_int8_quantizes_activations_to_all_256_levels_where_the_cpu_adds_in_int32(checkpoint, monkeypatch, engine):
    monkeypatch.setenv("DISTILKIT_INT8_ENGINE", engine)
    runtime = Runtime(load_model(checkpoint("distilbert", "question-answering")), mode="int8")
    int32_sums = torch.cpu._is_amx_tile_supported() or torch.cpu._is_vnni_supported()
    assert any(isinstance(m, Int8Linear) for m in runtime.model.modules()) == int32_sums
    if not int32_sums:
        pytest.skip("this CPU's int8 kernels add products in int16: torch's 128 levels stay")
    torch.manual_seed(0)
    with _quantized_engine(engine):
        layer = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(256, 64)), dtype=torch.qint8)[0]
    x = torch.randn(32, 256)
    exact = torch.nn.functional.linear(x, layer.weight().dequantize(), layer.bias())  # the weights' rounding aside
    ours, theirs = ((f(x) - exact).abs().mean() for f in (Int8Linear(layer), layer))
    assert ours < 0.6 * theirs, (ours, theirs)  # half torch's step for the activations: about half the error
    # No saturation: activations near the top of the range against all-positive weights, where pairs of
    # u8 x s8 products (255 x 127 x 2) would overflow an int16 sum.
    with torch.no_grad():
        layer_w = torch.nn.Linear(256, 64)
        layer_w.weight.uniform_(0.04, 0.05)
    with _quantized_engine(engine):
        layer = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(layer_w), dtype=torch.qint8)[0]
    x = 8 + 2 * torch.rand(32, 256)
    exact = torch.nn.functional.linear(x, layer.weight().dequantize(), layer.bias())
    assert ((Int8Linear(layer)(x) - exact).abs().max() / exact.abs().max()) < 0.01


def test_int8_takes_onednn_where_the_cpu_has_amx(monkeypatch):
    monkeypatch.delenv("DISTILKIT_INT8_ENGINE", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert int8_engine() == ("onednn" if "onednn" in torch.backends.quantized.supported_engines
                             else torch.backends.quantized.engine)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert int8_engine() == torch.backends.quantized.engine


def test_bf16_warns_on_a_cpu_that_would_emulate_it(checkpoint, monkeypatch):
    import warnings

    model = load_model(checkpoint("distilbert", "question-answering"))
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    with pytest.warns(UserWarning, match="emulated"):
        Runtime(model, mode="bf16")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        Runtime(model, mode="bf16")
        Runtime(model, mode="fp32")


def test_unknown_mode_and_int8_off_cpu_are_refused(checkpoint):
    model = load_model(checkpoint("distilbert", "question-answering"))
    with pytest.raises(ValueError, match="unknown mode"):
        Runtime(model, mode="fp8")
    with pytest.raises(ValueError, match="CPU only"):
        Runtime(model, device="cuda", mode="int8")


@pytest.mark.parametrize("head", ["masked-lm", "question-answering"])
def test_big_cpu_batches_run_in_slices_with_the_same_logits(checkpoint, head):
    model = load_model(checkpoint("distilbert", head))
    ids = np.random.default_rng(0).integers(5, 300, size=(5, 12))
    ids[:, 0], ids[:, -1], ids[3, 8:] = 2, 3, 0
    b = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}
    whole, sliced = Runtime(model, max_tokens=0), Runtime(model, max_tokens=24)  # slices of 2 rows
    positions = [None] if head != "masked-lm" else [None, np.array([50, 3, 13, 59, 14])]  # unsorted; none in rows 2-3
    for pos in positions:
        want = whole.forward(b, pos)
        got = sliced.forward(b, pos)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_cpu_token_budget_doubles_in_bf16_and_an_explicit_one_wins(checkpoint):
    ckpt = str(checkpoint("distilbert", "question-answering"))
    budgets = {mode: pipeline("question-answering", model=ckpt, mode=mode, device="cpu") for mode in ("fp32", "bf16", "int8")}
    assert {m: (t.max_tokens, t.runtime.max_tokens) for m, t in budgets.items()} == {
        "fp32": (1024, 1024), "bf16": (2048, 2048), "int8": (1024, 1024)}
    task = pipeline("question-answering", model=ckpt, mode="bf16", device="cpu", max_tokens=512)
    assert (task.max_tokens, task.runtime.max_tokens) == (512, 512)


REFAULTS = """
import resource, statistics, numpy as np, torch
from distilkit.config import ModelConfig
from distilkit.heads import Model
from distilkit.runtime import Runtime
torch.manual_seed(0)
cfg = ModelConfig(family="distilbert", vocab_size=1000, dim=256, n_layers=2, n_heads=4, ffn_dim=2048, max_positions=512)
runtime = Runtime(Model(cfg, head="question-answering"), max_tokens=0)
ids = np.random.default_rng(0).integers(5, 1000, size=(4, 512))
batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
faults = []
for _ in range(14):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    runtime.forward(batch)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults[2:]))  # warm passes (the heap still grows now and then: a median)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="minor page faults are counted on Linux")
def test_a_warm_cpu_forward_does_not_fault_its_activations_in_again():
    def warm_faults(retain: str) -> float:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1", DISTILKIT_RETAIN_MEMORY=retain)
        return float(subprocess.run([sys.executable, "-c", REFAULTS], env=env, capture_output=True, text=True,
                                    check=True).stdout)

    pages = 2048 * 2048 * 4 // 4096  # one (2048 tokens, ffn_dim) fp32 activation
    default = warm_faults("0")
    if default < pages // 2:  # measured here: 6,000-14,000 with glibc's defaults
        pytest.skip(f"this C library's malloc keeps freed activations already ({default} faults)")
    # Fewer than one activation's pages, where malloc's defaults fault several activations in on every
    # pass. (A bound of a tenth of one failed once: the heap grew in half the warm passes of that run.)
    assert warm_faults("1") < pages, f"{default} faults with malloc's defaults"
