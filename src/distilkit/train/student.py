"""Student construction: a narrower-in-depth copy of a teacher, initialised from its layers.

As in DistilBERT: same width, fewer layers, each student layer a copy of a chosen teacher layer
(every other one by default). A BERT teacher gives a DistilBERT student with no token-type
embedding: the teacher's type-0 embedding, which BERT adds to every single-segment token, is folded
into the position table so the student starts from the same function of the input.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..errors import InputError
from ..heads import Model, init_weights


def default_layers(n_teacher: int, n_student: int) -> list[int]:
    """Every other layer from the bottom: 12 -> 6 gives [0, 2, 4, 6, 8, 10]; 6 -> 3 gives [0, 2, 4]."""
    if not 0 < n_student <= n_teacher:
        raise InputError(f"student_n_layers: a student of this {n_teacher}-layer teacher has 1..{n_teacher} "
                         f"layers, got {n_student}", "student_n_layers")
    step = n_teacher / n_student
    return [int(i * step) for i in range(n_student)]


def student_config(teacher: ModelConfig, n_layers: int, family: str | None = None) -> ModelConfig:
    """The student's config: the teacher's width with `n_layers`; family "distilbert" drops token
    types (for BERT teachers), None keeps the teacher's family (RoBERTa -> DistilRoBERTa)."""
    family = family or teacher.family
    if family == teacher.family:
        return teacher.replace(n_layers=n_layers)
    if family != "distilbert" or teacher.family != "bert":
        raise ValueError(f"a {family} student can't be made from a {teacher.family} teacher; "
                         f"keep the teacher's family or use a bert teacher for a distilbert student")
    return ModelConfig(
        family="distilbert", vocab_size=teacher.vocab_size, dim=teacher.dim, n_layers=n_layers,
        n_heads=teacher.n_heads, ffn_dim=teacher.ffn_dim, max_positions=teacher.max_positions,
        type_vocab_size=0, norm_eps=1e-12, activation=teacher.activation, pad_token_id=teacher.pad_token_id,
        dropout=teacher.dropout, attention_dropout=teacher.attention_dropout, classifier_dropout=0.2,
        initializer_range=teacher.initializer_range, classifier_activation="relu", id2label=dict(teacher.id2label),
        problem_type=teacher.problem_type,
    )


def make_student(teacher: Model, layers: list[int] | int | None = None, family: str | None = None) -> Model:
    """A student initialised from `teacher`.

    layers: the teacher layers to copy, in order (e.g. [0, 2, 4, 7, 9, 11]), or a count (every other
    layer), or None for half the teacher's depth. The head is copied when the student's head has the
    teacher's shape and semantics, else freshly initialised.
    """
    n_teacher = teacher.cfg.n_layers
    if layers is None:
        layers = max(1, n_teacher // 2)
    if isinstance(layers, int):
        layers = default_layers(n_teacher, layers)
    outside = [i for i in layers if not 0 <= i < n_teacher]
    if not layers or outside:
        raise InputError(f"student_layers {layers}: the teacher has {n_teacher} layers, numbered 0..{n_teacher - 1}"
                         + (f" ({', '.join(map(str, outside))} out of range)" if outside else ""), "student_layers")
    cfg = student_config(teacher.cfg, len(layers), family)
    student = Model(cfg, teacher.head_name)
    init_weights(student, cfg.initializer_range)
    t_sd = teacher.state_dict()
    with torch.no_grad():
        # Embeddings: words and positions always; token types only where the student keeps them.
        student.encoder.embed.word.weight.copy_(t_sd["encoder.embed.word.weight"])
        pos = t_sd["encoder.embed.pos.weight"].clone()
        if cfg.type_vocab_size:
            student.encoder.embed.token_type.weight.copy_(t_sd["encoder.embed.token_type.weight"])
        elif teacher.cfg.type_vocab_size:
            pos += t_sd["encoder.embed.token_type.weight"][0]  # fold type 0 into every position
        student.encoder.embed.pos.weight.copy_(pos)
        student.encoder.embed.norm.load_state_dict(teacher.encoder.embed.norm.state_dict())
        for s_i, t_i in enumerate(layers):
            student.encoder.layers[s_i].load_state_dict(teacher.encoder.layers[t_i].state_dict())
        if student.encoder.pooler is not None and teacher.encoder.pooler is not None:
            student.encoder.pooler.load_state_dict(teacher.encoder.pooler.state_dict())
        if teacher.head is not None and _same_head(student, teacher):
            student.head.load_state_dict(teacher.head.state_dict())
    return student


def _same_head(student: Model, teacher: Model) -> bool:
    s, t = student.head.state_dict(), teacher.head.state_dict()
    same_shapes = s.keys() == t.keys() and all(s[k].shape == t[k].shape for k in s)
    # A classification head is only the same function with the same activation and pooling.
    same_kind = (student.cfg.classifier_activation == teacher.cfg.classifier_activation
                 and student.cfg.has_pooler == teacher.cfg.has_pooler)
    return same_shapes and (student.head_name != "sequence-classification" or same_kind)
