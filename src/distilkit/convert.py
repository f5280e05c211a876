"""Hugging Face <-> distilkit state dicts, as pure functions driven by one key template per family.

Hugging Face key names appear only in this module. q/k/v projections are fused into one `qkv`
matrix on the way in and split on the way out; the masked-LM decoder is tied to the word
embeddings and never stored twice. A key no template knows raises, naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .config import ModelConfig

# (HF name without the family prefix, our name). "{i}" is a layer index; "#qkv:N" marks part N of
# the fused projection.
_DISTILBERT_ENCODER = [
    ("embeddings.word_embeddings.weight", "encoder.embed.word.weight"),
    ("embeddings.position_embeddings.weight", "encoder.embed.pos.weight"),
    ("embeddings.LayerNorm.{p}", "encoder.embed.norm.{p}"),
    ("transformer.layer.{i}.attention.q_lin.{p}", "encoder.layers.{i}.attn.qkv.{p}#qkv:0"),
    ("transformer.layer.{i}.attention.k_lin.{p}", "encoder.layers.{i}.attn.qkv.{p}#qkv:1"),
    ("transformer.layer.{i}.attention.v_lin.{p}", "encoder.layers.{i}.attn.qkv.{p}#qkv:2"),
    ("transformer.layer.{i}.attention.out_lin.{p}", "encoder.layers.{i}.attn.out.{p}"),
    ("transformer.layer.{i}.sa_layer_norm.{p}", "encoder.layers.{i}.norm1.{p}"),
    ("transformer.layer.{i}.ffn.lin1.{p}", "encoder.layers.{i}.ffn.up.{p}"),
    ("transformer.layer.{i}.ffn.lin2.{p}", "encoder.layers.{i}.ffn.down.{p}"),
    ("transformer.layer.{i}.output_layer_norm.{p}", "encoder.layers.{i}.norm2.{p}"),
]
_BERT_ENCODER = [
    ("embeddings.word_embeddings.weight", "encoder.embed.word.weight"),
    ("embeddings.position_embeddings.weight", "encoder.embed.pos.weight"),
    ("embeddings.token_type_embeddings.weight", "encoder.embed.token_type.weight"),
    ("embeddings.LayerNorm.{p}", "encoder.embed.norm.{p}"),
    ("encoder.layer.{i}.attention.self.query.{p}", "encoder.layers.{i}.attn.qkv.{p}#qkv:0"),
    ("encoder.layer.{i}.attention.self.key.{p}", "encoder.layers.{i}.attn.qkv.{p}#qkv:1"),
    ("encoder.layer.{i}.attention.self.value.{p}", "encoder.layers.{i}.attn.qkv.{p}#qkv:2"),
    ("encoder.layer.{i}.attention.output.dense.{p}", "encoder.layers.{i}.attn.out.{p}"),
    ("encoder.layer.{i}.attention.output.LayerNorm.{p}", "encoder.layers.{i}.norm1.{p}"),
    ("encoder.layer.{i}.intermediate.dense.{p}", "encoder.layers.{i}.ffn.up.{p}"),
    ("encoder.layer.{i}.output.dense.{p}", "encoder.layers.{i}.ffn.down.{p}"),
    ("encoder.layer.{i}.output.LayerNorm.{p}", "encoder.layers.{i}.norm2.{p}"),
    ("pooler.dense.{p}", "encoder.pooler.{p}"),
]
# Head keys carry no family prefix. "=tied" marks a copy of another tensor that is not stored.
_HEADS = {
    "distilbert": {
        "masked-lm": [
            ("vocab_transform.{p}", "head.dense.{p}"),
            ("vocab_layer_norm.{p}", "head.norm.{p}"),
            ("vocab_projector.bias", "head.bias"),
            ("vocab_projector.weight", "=tied:encoder.embed.word.weight"),
        ],
        "question-answering": [("qa_outputs.{p}", "head.out.{p}")],
        "sequence-classification": [("pre_classifier.{p}", "head.dense.{p}"), ("classifier.{p}", "head.out.{p}")],
        "token-classification": [("classifier.{p}", "head.out.{p}")],
    },
    "bert": {
        "masked-lm": [
            ("cls.predictions.transform.dense.{p}", "head.dense.{p}"),
            ("cls.predictions.transform.LayerNorm.{p}", "head.norm.{p}"),
            ("cls.predictions.bias", "head.bias"),
            ("cls.predictions.decoder.bias", "=tied:head.bias"),
            ("cls.predictions.decoder.weight", "=tied:encoder.embed.word.weight"),
        ],
        "question-answering": [("qa_outputs.{p}", "head.out.{p}")],
        "sequence-classification": [("classifier.{p}", "head.out.{p}")],
        "token-classification": [("classifier.{p}", "head.out.{p}")],
    },
    "roberta": {
        "masked-lm": [
            ("lm_head.dense.{p}", "head.dense.{p}"),
            ("lm_head.layer_norm.{p}", "head.norm.{p}"),
            ("lm_head.bias", "head.bias"),
            ("lm_head.decoder.bias", "=tied:head.bias"),
            ("lm_head.decoder.weight", "=tied:encoder.embed.word.weight"),
        ],
        "question-answering": [("qa_outputs.{p}", "head.out.{p}")],
        "sequence-classification": [("classifier.dense.{p}", "head.dense.{p}"), ("classifier.out_proj.{p}", "head.out.{p}")],
        "token-classification": [("classifier.{p}", "head.out.{p}")],
    },
}
_ENCODERS = {"distilbert": _DISTILBERT_ENCODER, "bert": _BERT_ENCODER, "roberta": _BERT_ENCODER}
# Buffers and pre-training leftovers that checkpoints carry and no model of ours needs.
_IGNORED = [
    r"(.*\.)?embeddings\.position_ids",
    r"(.*\.)?embeddings\.token_type_ids",
    r"cls\.seq_relationship\..*",  # BERT's next-sentence head
]
PREFIX = {"distilbert": "distilbert.", "bert": "bert.", "roberta": "roberta."}


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(pattern + "$")


@dataclass
class Converted:
    state_dict: dict[str, Tensor]
    heads_found: set[str] = field(default_factory=set)  # heads whose keys the checkpoint carries
    unused: list[str] = field(default_factory=list)  # keys of heads other than the one asked for
    tied: dict[str, Tensor] = field(default_factory=dict)  # stored copies of tied tensors, by our name


def _legacy_name(key: str) -> str:
    # Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
    return re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))


def from_hf_state_dict(sd: dict[str, Tensor], cfg: ModelConfig, head: str | None) -> Converted:
    """Map a transformers state dict to ours for `head` (None: encoder only).

    Keys of other heads are returned in `unused` (loading a QA checkpoint as a bare encoder is
    fine); keys no template knows raise ValueError naming them.
    """
    family = cfg.family
    prefix = PREFIX[family]
    encoder_rules = [(_compile(hf), ours) for hf, ours in _ENCODERS[family]]
    # The requested head first: `classifier.*` is both DistilBERT's token head and half its sequence head.
    order = sorted(_HEADS[family], key=lambda h: h != head)
    head_rules = [(h, _compile(hf), ours) for h in order for hf, ours in _HEADS[family][h]]
    ignored = [re.compile(p + "$") for p in _IGNORED]

    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[int, Tensor]] = {}
    result = Converted(out)
    unknown = []
    for key, tensor in sd.items():
        name = _legacy_name(key)
        if any(p.match(name) for p in ignored):
            continue
        stripped = name[len(prefix):] if name.startswith(prefix) else name
        target = None
        for rx, ours in encoder_rules:
            m = rx.match(stripped)
            if m:
                target = ours.format(**m.groupdict())
                break
        if target is None:
            for h, rx, ours in head_rules:
                m = rx.match(name)
                if m:
                    result.heads_found.add(h)
                    if h != head:
                        result.unused.append(key)
                        target = ""
                    else:
                        target = ours.format(**m.groupdict())
                    break
        if target is None:
            unknown.append(key)
        elif target == "":
            continue
        elif target.startswith("=tied:"):
            result.tied[target[len("=tied:"):]] = tensor
        elif "#qkv:" in target:
            fused, part = target.split("#qkv:")
            qkv.setdefault(fused, {})[int(part)] = tensor
        else:
            out[target] = tensor
    if unknown:
        raise ValueError(
            f"{len(unknown)} weight(s) in the checkpoint match no {family} parameter: {', '.join(sorted(unknown)[:20])}"
        )
    for fused, parts in qkv.items():
        if sorted(parts) != [0, 1, 2]:
            missing = [("query", "key", "value")[j] for j in range(3) if j not in parts]
            raise ValueError(f"checkpoint lacks the {'/'.join(missing)} projection for {fused}")
        out[fused] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return result


def to_hf_state_dict(sd: dict[str, Tensor], cfg: ModelConfig, head: str | None) -> dict[str, Tensor]:
    """Our state dict -> the key names transformers saves for `cfg.architecture(head)`."""
    family = cfg.family
    prefix = PREFIX[family] if head is not None else ""  # bare models are saved without the prefix
    rules = [(_compile(ours.split("#")[0]), hf, ours) for hf, ours in _ENCODERS[family]]
    head_rules = [] if head is None else [(_compile(ours), hf) for hf, ours in _HEADS[family][head] if not ours.startswith("=")]
    out: dict[str, Tensor] = {}
    for key, tensor in sd.items():
        # The fused qkv matches three rules (one per part); every other key matches one.
        matched = [(m, hf, ours) for rx, hf, ours in rules if (m := rx.match(key))]
        matched += [(m, hf, ours) for rx, hf in head_rules if (m := rx.match(key)) for ours in [""]]
        if not matched:
            raise ValueError(f"no {family} checkpoint name for parameter {key!r}")
        for m, hf, ours in matched:
            name = hf.format(**m.groupdict())
            if "#qkv:" in ours:
                out[prefix + name] = tensor.chunk(3, dim=0)[int(ours.split("#qkv:")[1])].contiguous()
            else:
                out[name if ours == "" else prefix + name] = tensor
    return out
