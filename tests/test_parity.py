"""Our loader and encoder against transformers on the same checkpoints: logits and every hidden
state, padding included, plus save/load round trips both ways and the real MiniLM BERT."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T

from conftest import HEAD_CLASSES
from distilkit.checkpoint import CheckpointError, load_model, save_pretrained

FAMILIES = [("distilbert", {}), ("distilbert", {"sinusoidal_pos_embds": True}), ("bert", {}), ("roberta", {})]
HEADS = list(HEAD_CLASSES)


def _batch(vocab: int, pad: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (3, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    return ids.masked_fill(mask == 0, pad), mask


def _ref_logits(out, head):
    if head == "question-answering":
        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return None if head is None else out.logits


def _compare(ref, ours, head, ids, mask):
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        o = ours(ids, mask, output_hidden_states=True)
    real = mask.bool()
    assert len(r.hidden_states) == len(o.hidden_states)
    for a, b in zip(r.hidden_states, o.hidden_states):
        torch.testing.assert_close(b[real], a[real], atol=1e-5, rtol=0)
    rl = _ref_logits(r, head)
    if rl is not None:
        if rl.dim() == 3:
            rl, ol = rl[real], o.logits[real]
        else:
            ol = o.logits
        torch.testing.assert_close(ol, rl, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family,overrides", FAMILIES, ids=["distilbert", "distilbert-sinusoidal", "bert", "roberta"])
@pytest.mark.parametrize("head", HEADS, ids=[str(h) for h in HEADS])
def test_parity_and_round_trips(checkpoint, tmp_path, family, overrides, head):
    path = checkpoint(family, head, **overrides)
    ref = getattr(T, HEAD_CLASSES[head]).from_pretrained(path).eval()
    ids, mask = _batch(ref.config.vocab_size, ref.config.pad_token_id)
    ours = load_model(path)
    assert ours.head_name == head
    _compare(ref, ours, head, ids, mask)

    # ours -> transformers: the directory we write loads with no missing or unexpected keys
    save_pretrained(ours, tmp_path / "ours")
    reloaded, info = getattr(T, HEAD_CLASSES[head]).from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    _compare(reloaded.eval(), ours, head, ids, mask)
    # and back: ours -> ours
    _compare(ref, load_model(tmp_path / "ours"), head, ids, mask)


def test_output_attentions_match(checkpoint):
    path = checkpoint("bert", None)
    ref = T.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    ours = load_model(path)
    ids, mask = _batch(ref.config.vocab_size, 0)
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, output_attentions=True)
        o = ours(ids, mask, output_attentions=True)
    for a, b in zip(r.attentions, o.attentions):
        keep = mask.bool()[:, None, :, None].expand_as(a)  # rows of real query tokens
        torch.testing.assert_close(b[keep], a[keep], atol=1e-5, rtol=0)


def test_masked_lm_projects_only_requested_positions(checkpoint):
    ours = load_model(checkpoint("distilbert", "masked-lm"))
    ids, mask = _batch(ours.cfg.vocab_size, 0)
    with torch.no_grad():
        full = ours(ids, mask).logits  # (B, T, V)
        pos = torch.tensor([3, 15, 27])
        part = ours(ids, mask, positions=pos).logits  # (3, V)
    torch.testing.assert_close(part, full.reshape(-1, full.size(-1))[pos])


def test_base_checkpoint_gets_a_fresh_head_for_fine_tuning(checkpoint):
    base = checkpoint("bert", None)
    model = load_model(base, head="sequence-classification", fresh_head=True)
    assert model.head_name == "sequence-classification"
    assert torch.isfinite(model.head.out.weight).all() and model.head.out.weight.abs().sum() > 0
    ref = T.AutoModel.from_pretrained(base)
    torch.testing.assert_close(model.encoder.pooler.weight, ref.pooler.dense.weight)  # the pretrained pooler is kept


@pytest.mark.parametrize("head", ["masked-lm", "question-answering", "sequence-classification",
                                  "token-classification"])
def test_every_fresh_head_is_initialised(checkpoint, head):
    """A fresh head's parameters are initialised, none left as uninitialised memory (the masked-LM
    bias is a bare parameter, not a module)."""
    model = load_model(checkpoint("bert", None), head=head, fresh_head=True)
    for name, p in model.head.named_parameters():
        assert torch.isfinite(p).all(), name
    if head == "masked-lm":
        assert torch.equal(model.head.bias, torch.zeros_like(model.head.bias))


def test_unknown_key_is_named(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    src = checkpoint("distilbert", "question-answering")
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd["distilbert.transformer.layer.0.attention.rotary.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="rotary"):
        load_model(tmp_path)


def test_missing_key_is_named(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    src = checkpoint("bert", "token-classification")
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    sd = load_file(str(tmp_path / "model.safetensors"))
    del sd["bert.encoder.layer.1.output.dense.weight"]
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.1\.ffn\.down\.weight"):
        load_model(tmp_path)


def test_pytorch_bin_checkpoint(checkpoint, tmp_path):
    src = checkpoint("roberta", "masked-lm")
    ref = T.AutoModelForMaskedLM.from_pretrained(src).eval()
    ref.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").exists()
    ids, mask = _batch(ref.config.vocab_size, 1)
    _compare(ref, load_model(tmp_path), "masked-lm", ids, mask)


def test_corrupt_and_incomplete_directories(checkpoint, tmp_path):
    src = checkpoint("distilbert", "question-answering")
    (tmp_path / "config.json").write_bytes((src / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match="no weights"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="gpt2"):
        load_model(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)


def test_unreachable_hub_id_says_how_to_use_a_local_directory(monkeypatch, tmp_path):
    from distilkit.checkpoint import ModelNotFoundError, resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="local directory"):
        resolve("distilbert/distilbert-base-cased-distilled-squad")


def test_real_minilm_hidden_states_match(minilm_dir):
    """The real pretrained BERT (MiniLM-L6-H384) on real sentences, within 1e-4."""
    ref = T.AutoModel.from_pretrained(minilm_dir).eval()
    tok = T.AutoTokenizer.from_pretrained(minilm_dir)
    ours = load_model(minilm_dir)
    assert ours.cfg.has_pooler and ours.cfg.n_layers == 6 and ours.cfg.dim == 384
    sentences = ["Paris is the capital of France.", "My name is John and I live in Seattle, a rainy city.",
                 "DistilBERT is a small, fast, cheap and light Transformer model trained by distilling BERT base."]
    enc = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        r = ref(**enc, output_hidden_states=True)
        o = ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], output_hidden_states=True)
        pooled = ours.encoder.pool(o.last_hidden_state)
    real = enc["attention_mask"].bool()
    for a, b in zip(r.hidden_states, o.hidden_states):
        torch.testing.assert_close(b[real], a[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(pooled, r.pooler_output, atol=1e-4, rtol=0)


def test_positions_leave_the_hidden_states_whole(checkpoint):
    ours = load_model(checkpoint("distilbert", "masked-lm"))
    ids, mask = _batch(ours.cfg.vocab_size, 0)
    with torch.no_grad():
        out = ours(ids, mask, positions=torch.tensor([0, 5]))
    assert out.logits.shape[0] == 2 and out.last_hidden_state.shape[:2] == ids.shape
