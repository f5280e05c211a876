"""Distillation building blocks: loss terms by hand, student initialisation, MLM masking, shards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distilkit.checkpoint import load_model
from distilkit.data.mlm import TokenShards, build_shards, length_grouped_batches, mask_tokens, smoothed_token_probs
from distilkit.tokenizer import Tokenizer
from distilkit.train.distill_losses import hidden_cosine, masked_lm, soft_target_kl, span_kl
from distilkit.train.student import default_layers, make_student


# ---------------------------------------------------------------------- losses by hand

def test_soft_target_kl_by_hand_with_temperature_squared():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    T = 2.0
    ps = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]  # softmax(s / 2)
    pt = [1 / (1 + math.e), math.e / (1 + math.e)]  # softmax(t / 2)
    kl = sum(p * math.log(p / q) for p, q in zip(pt, ps))
    assert soft_target_kl(s, t, T).item() == pytest.approx(T * T * kl, rel=1e-6)
    assert soft_target_kl(t, t, T).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_target_kl_excludes_padding_and_averages_rows():
    s = torch.tensor([[[1.0, 0.0], [5.0, -5.0]], [[0.0, 0.0], [9.0, 9.0]]])
    t = torch.tensor([[[0.0, 2.0], [-5.0, 5.0]], [[0.0, 0.0], [0.0, 9.0]]])
    mask = torch.tensor([[True, False], [True, False]])  # the second token of each row is padding
    expected = (soft_target_kl(s[0, :1], t[0, :1], 2.0) + soft_target_kl(s[1, :1], t[1, :1], 2.0)) / 2
    assert soft_target_kl(s, t, 2.0, mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_hidden_cosine_by_hand():
    s = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [7.0, 7.0]]])
    t = torch.tensor([[[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: cos 0 -> 1; token 1: cos 1 -> 0; token 2 is padding
    assert hidden_cosine(s, t, mask).item() == pytest.approx(0.5, abs=1e-6)


def test_masked_lm_on_selected_rows():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([[-100, 0, -100, 2]])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(math.exp(3) / (math.exp(3) + 2))) / 2
    assert masked_lm(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_span_kl_is_the_mean_of_start_and_end_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 2, generator=g), torch.randn(2, 5, 2, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    s_pad = s.clone()
    s_pad[1, 3:] = 100.0  # padding logits must not matter
    got = span_kl(s_pad, t, 3.0, mask)
    by_row = []
    for k in (0, 1):
        rows = [soft_target_kl(s[b, : int(mask[b].sum()), k][None], t[b, : int(mask[b].sum()), k][None], 3.0) for b in (0, 1)]
        by_row.append(sum(rows) / 2)
    assert got.item() == pytest.approx(((by_row[0] + by_row[1]) / 2).item(), rel=1e-5)


# ---------------------------------------------------------------------- students

def test_task_loss_weights_and_the_no_distillation_baseline(checkpoint):
    """a_task * CE + a_ce * T^2 KL; with a_ce = 0 (the baseline) the teacher is never called."""
    from distilkit.train.distill import DistillConfig, Teacher, task_loss
    from distilkit.train.losses import sequence_loss

    student = load_model(checkpoint("bert", "sequence-classification", head_scale=5.0))
    teacher_model = load_model(checkpoint("bert", "sequence-classification", seed=1, head_scale=5.0))
    batch = {"input_ids": torch.tensor([[2, 40, 41, 3, 0], [2, 50, 51, 52, 3]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]), "labels": torch.tensor([0, 2])}
    opts = dict(task="text-classification", teacher="unused", train_file="unused", temperature=2.0)
    with torch.no_grad():
        s = student(batch["input_ids"], batch["attention_mask"]).logits
        t = teacher_model(batch["input_ids"], batch["attention_mask"]).logits
    hard, kl = sequence_loss(s, batch["labels"]), soft_target_kl(s, t, 2.0)
    loss, logs = task_loss(Teacher(teacher_model, "fp32"), DistillConfig(alpha_task=0.3, alpha_ce=0.7, **opts))(
        student, batch)
    assert loss.item() == pytest.approx(float(0.3 * hard + 0.7 * kl), rel=1e-5) and kl > 0

    def no_teacher(*a, **k):
        raise AssertionError("the teacher ran")

    loss, logs = task_loss(no_teacher, DistillConfig(alpha_task=1.0, alpha_ce=0.0, **opts))(student, batch)
    assert loss.item() == pytest.approx(float(hard), rel=1e-6) and logs["loss_ce"] == 0


def test_default_layers():
    assert default_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert default_layers(6, 3) == [0, 2, 4]
    with pytest.raises(ValueError):
        default_layers(6, 7)


@pytest.mark.parametrize("family,head", [("bert", "masked-lm"), ("roberta", "sequence-classification"),
                                         ("distilbert", "question-answering")])
def test_student_copies_exactly_the_chosen_layers(checkpoint, family, head):
    teacher = load_model(checkpoint(family, head, n_layers=4, num_hidden_layers=4))
    layers = [0, 3]
    student = make_student(teacher, layers)
    assert student.cfg.n_layers == 2 and student.head_name == head
    for s_i, t_i in enumerate(layers):
        for (name, a), (_, b) in zip(student.encoder.layers[s_i].state_dict().items(),
                                     teacher.encoder.layers[t_i].state_dict().items()):
            assert torch.equal(a, b), name
    assert torch.equal(student.encoder.embed.word.weight, teacher.encoder.embed.word.weight)
    for k, v in teacher.head.state_dict().items():
        assert torch.equal(student.head.state_dict()[k], v)


def test_distilbert_student_of_bert_folds_token_types(checkpoint):
    """All layers kept: the DistilBERT-family student computes the BERT teacher's function."""
    teacher = load_model(checkpoint("bert", "masked-lm"))
    student = make_student(teacher, list(range(teacher.cfg.n_layers)), family="distilbert").eval()
    assert student.cfg.family == "distilbert" and student.encoder.embed.token_type is None
    ids = torch.randint(5, teacher.cfg.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, teacher(ids).logits, atol=1e-5, rtol=0)


def test_student_saves_in_hf_format(checkpoint, tmp_path):
    import transformers as T

    from distilkit.checkpoint import save_pretrained

    student = make_student(load_model(checkpoint("bert", "masked-lm")), 1, family="distilbert").eval()
    save_pretrained(student, tmp_path)
    ref = T.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(5, student.cfg.vocab_size, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, student(ids).logits, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- masking and shards

def test_masking_proportions_on_a_large_sample():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 1000, size=(400, 128))
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
    attn = np.ones_like(ids)
    attn[200:, 100:] = 0
    masked, labels = mask_tokens(ids, attn, special_ids=[1, 2], mask_id=3, vocab_size=1000, rng=rng)
    chosen = labels != -100
    real = attn.astype(bool) & ~np.isin(ids, [1, 2])
    assert not (chosen & ~real).any()  # specials and padding are never masked
    assert chosen.sum() / real.sum() == pytest.approx(0.15, abs=0.005)
    assert (labels[chosen] == ids[chosen]).all()
    as_mask = (masked[chosen] == 3).mean()
    unchanged = (masked[chosen] == ids[chosen]).mean()
    assert as_mask == pytest.approx(0.8, abs=0.01)
    assert unchanged == pytest.approx(0.1, abs=0.01)  # 10% kept as they are (a random swap rarely hits itself)
    assert (masked[~chosen] == ids[~chosen]).all()


def test_frequency_smoothed_masking_picks_exactly_15_percent_and_favours_rare_tokens():
    rng = np.random.default_rng(1)
    ids = np.where(rng.random((200, 50)) < 0.9, 10, rng.integers(11, 500, size=(200, 50)))  # token 10 is frequent
    attn = np.ones_like(ids)
    counts = np.bincount(ids.ravel(), minlength=500)
    probs = smoothed_token_probs(counts, special_ids=[0, 1, 2])
    _, labels = mask_tokens(ids, attn, [0, 1, 2], 3, 500, rng, token_probs=probs)
    chosen = labels != -100
    assert chosen.sum() == math.ceil(0.15 * ids.size)
    assert (ids[chosen] != 10).mean() > (ids != 10).mean()  # rare tokens are over-represented


def test_shards_round_trip_and_length_grouping(wordpiece_dir, tmp_path):
    tok = Tokenizer.from_pretrained(wordpiece_dir)
    texts = ["My name is John.", "", "Paris is the capital of France. " * 20, "Bob is next to her."]
    shards = TokenShards(build_shards(iter(texts), tok, tmp_path / "shards", max_length=32, batch_size=2))
    expected = []
    for t in texts:
        if t:
            ids = tok.encode([t], add_special_tokens=False)[0].ids
            for start in range(0, len(ids), 30):
                expected.append([tok.cls_token_id] + ids[start:start + 30] + [tok.sep_token_id])
    assert len(shards) == len(expected)
    assert [shards[i].tolist() for i in range(len(shards))] == expected
    assert shards.token_counts(tok.vocab_size).sum() == sum(len(e) for e in expected)
    batches = list(length_grouped_batches(shards.lengths(), 2, np.random.default_rng(0)))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(shards)))
