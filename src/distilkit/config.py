"""Family-independent model configuration.

`ModelConfig` holds what the encoder and heads need to be built; `from_hf` / `to_hf` translate
the `config.json` of the three families we read (distilbert, bert, roberta). Differences between
families (token types, position offsets, layer-norm eps, classifier activation) are fields here,
never name checks elsewhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

FAMILIES = ("distilbert", "bert", "roberta")

# Run modes (runtime.Runtime; an exported model runs the modes its files offer): one list for the
# Python API, the CLI, the server and the batch job, here because this module imports neither torch
# nor numpy. "auto": the fastest mode whose answers match fp32's (see AUTO_POLICY).
Mode = Literal["fp32", "bf16", "int8", "auto"]
MODES: tuple[str, ...] = get_args(Mode)
# What mode="auto" runs: the fastest mode that kept >= 99% of fp32's answers on the real fine-tuned
# models (benchmarks/agreement.py, docs/performance.md). torch: bf16 where the hardware computes it
# natively (AMX/AVX512-BF16 CPUs, GPUs; 99.33% of QA spans), else fp32. Exports (ONNX Runtime,
# OpenVINO): fp32, since OpenVINO's bf16 (97.33% of QA spans: it rounds norms and softmax to bf16
# too) and every int8 (dynamic or calibrated, 45-82%) kept fewer.
AUTO_POLICY = "torch: bf16 where native, else fp32; exports: fp32"

# HF architecture suffix -> our head name. The prefix (DistilBert/Bert/Roberta) is the family.
ARCH_HEADS = {
    "Model": None,
    "ForMaskedLM": "masked-lm",
    "ForQuestionAnswering": "question-answering",
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
}
ARCH_PREFIX = {"distilbert": "DistilBert", "bert": "Bert", "roberta": "Roberta"}


@dataclass
class ModelConfig:
    family: str  # distilbert | bert | roberta: selects the checkpoint key template
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    max_positions: int = 512
    type_vocab_size: int = 0  # 0: no token-type embedding (DistilBERT)
    norm_eps: float = 1e-12
    activation: str = "gelu"
    pad_token_id: int = 0
    # RoBERTa numbers positions from pad_token_id + 1 and gives padding the position pad_token_id.
    position_offset: int = 0
    sinusoidal_positions: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: float = 0.1
    initializer_range: float = 0.02
    # Heads
    classifier_activation: str = "tanh"  # DistilBERT's pre_classifier uses relu
    id2label: dict[int, str] = field(default_factory=dict)
    problem_type: str | None = None  # single_label_classification | multi_label_classification | regression
    has_pooler: bool = False  # BERT/RoBERTa base checkpoints carry a pooler
    # Everything else from config.json, written back unchanged by to_hf().
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unsupported model family {self.family!r}; expected one of {FAMILIES}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        self.id2label = {int(k): v for k, v in self.id2label.items()}

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def max_length(self) -> int:
        """Longest sequence the position table holds (RoBERTa's starts past the padding id)."""
        return self.max_positions - self.position_offset

    @property
    def num_labels(self) -> int:
        return len(self.id2label) or 2

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        hf = dict(hf)
        family = hf.get("model_type")
        if family not in FAMILIES:
            raise ValueError(
                f"config.json has model_type={family!r}; distilkit reads {', '.join(FAMILIES)} checkpoints"
            )
        id2label = hf.get("id2label") or {}
        if "num_labels" in hf and not id2label:
            id2label = {i: f"LABEL_{i}" for i in range(int(hf["num_labels"]))}
        common = dict(
            family=family,
            vocab_size=hf["vocab_size"],
            max_positions=hf.get("max_position_embeddings", 512),
            pad_token_id=hf.get("pad_token_id") if hf.get("pad_token_id") is not None else (1 if family == "roberta" else 0),
            initializer_range=hf.get("initializer_range", 0.02),
            id2label=id2label,
            problem_type=hf.get("problem_type"),
        )
        if family == "distilbert":
            cfg = cls(
                dim=hf["dim"], n_layers=hf["n_layers"], n_heads=hf["n_heads"], ffn_dim=hf["hidden_dim"],
                type_vocab_size=0, norm_eps=1e-12, activation=hf.get("activation", "gelu"),
                sinusoidal_positions=bool(hf.get("sinusoidal_pos_embds", False)),
                dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.1),
                classifier_dropout=hf.get("seq_classif_dropout", 0.2), classifier_activation="relu",
                **common,
            )
        else:
            if hf.get("position_embedding_type", "absolute") != "absolute":
                raise ValueError(
                    f"position_embedding_type={hf['position_embedding_type']!r} is not supported (only 'absolute')"
                )
            pad = common["pad_token_id"]
            cfg = cls(
                dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
                ffn_dim=hf["intermediate_size"], type_vocab_size=hf.get("type_vocab_size", 2),
                norm_eps=hf.get("layer_norm_eps", 1e-12), activation=hf.get("hidden_act", "gelu"),
                position_offset=pad + 1 if family == "roberta" else 0,
                dropout=hf.get("hidden_dropout_prob", 0.1),
                attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
                classifier_dropout=(
                    hf["classifier_dropout"] if hf.get("classifier_dropout") is not None else hf.get("hidden_dropout_prob", 0.1)
                ),
                classifier_activation="tanh",
                **common,
            )
        known = _HF_KEYS[family] | _HF_COMMON_KEYS
        cfg.extra = {k: v for k, v in hf.items() if k not in known}
        return cfg

    def to_hf(self, architecture: str | None = None) -> dict[str, Any]:
        """The config.json transformers expects; `architecture` e.g. 'DistilBertForQuestionAnswering'."""
        hf: dict[str, Any] = dict(self.extra)
        hf["model_type"] = self.family
        if architecture:
            hf["architectures"] = [architecture]
        hf.update(
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_positions,
            pad_token_id=self.pad_token_id,
            initializer_range=self.initializer_range,
        )
        if self.id2label:
            hf["id2label"] = {str(k): v for k, v in sorted(self.id2label.items())}
            hf["label2id"] = {v: k for k, v in sorted(self.id2label.items())}
        if self.problem_type:
            hf["problem_type"] = self.problem_type
        if self.family == "distilbert":
            hf.update(
                dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads, hidden_dim=self.ffn_dim,
                activation=self.activation, sinusoidal_pos_embds=self.sinusoidal_positions,
                dropout=self.dropout, attention_dropout=self.attention_dropout,
                seq_classif_dropout=self.classifier_dropout,
            )
            hf.setdefault("qa_dropout", self.dropout)
        else:
            hf.update(
                hidden_size=self.dim, num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads,
                intermediate_size=self.ffn_dim, type_vocab_size=self.type_vocab_size,
                layer_norm_eps=self.norm_eps, hidden_act=self.activation,
                hidden_dropout_prob=self.dropout, attention_probs_dropout_prob=self.attention_dropout,
                position_embedding_type="absolute",
            )
        return hf

    def architecture(self, head: str | None) -> str:
        suffix = {v: k for k, v in ARCH_HEADS.items()}[head]
        return ARCH_PREFIX[self.family] + suffix


_HF_COMMON_KEYS = {
    "model_type", "architectures", "vocab_size", "max_position_embeddings", "pad_token_id",
    "initializer_range", "id2label", "label2id", "num_labels", "problem_type", "transformers_version",
    "_name_or_path", "torch_dtype", "dtype",
}
_HF_KEYS = {
    "distilbert": {
        "dim", "n_layers", "n_heads", "hidden_dim", "activation", "sinusoidal_pos_embds", "dropout",
        "attention_dropout", "seq_classif_dropout", "qa_dropout",
    },
    "bert": {
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "type_vocab_size",
        "layer_norm_eps", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
        "position_embedding_type", "classifier_dropout",
    },
}
_HF_KEYS["roberta"] = _HF_KEYS["bert"]


def head_from_architectures(architectures: list[str] | None) -> str | None:
    """The head a checkpoint was saved with, from config.json's `architectures`."""
    for arch in architectures or []:
        for suffix, head in ARCH_HEADS.items():
            if suffix != "Model" and arch.endswith(suffix):
                return head
    return None
