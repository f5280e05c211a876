"""Task heads and `Model = Encoder + head`.

The heads keep the semantics of the checkpoints they load: the masked-LM head is tied to the word
embeddings and projects only the positions asked for; classification uses BERT's pooler where the
config says so, else a dense + activation on the first token (DistilBERT relu, RoBERTa tanh).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .model import Encoder, activation

HEADS = ("masked-lm", "question-answering", "sequence-classification", "token-classification")


class MaskedLMHead(nn.Module):
    """dense -> act -> LN -> x @ word_embeddings.T + bias. The projection weight is the encoder's."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim)
        self.act = activation(cfg.activation)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        # A cast copy of the tied word embeddings, set by a runtime that runs the head in bf16 so that
        # the 23M-value table is not cast again on every call; not a parameter, never saved.
        self.projection: Tensor | None = None

    def forward(self, x: Tensor, word_weight: Tensor) -> Tensor:
        weight = self.projection if self.projection is not None else word_weight
        return F.linear(self.norm(self.act(self.dense(x))), weight, self.bias)


class SpanHead(nn.Module):
    """QA: per-token start and end logits. (B, T, 2)"""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.dim, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.drop(x))


class SequenceClassificationHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # With a pooler (BERT) the encoder's pooled output feeds `out`; otherwise our own dense.
        self.dense = None if cfg.has_pooler else nn.Linear(cfg.dim, cfg.dim)
        self.act = activation(cfg.classifier_activation)
        self.drop = nn.Dropout(cfg.classifier_dropout)
        self.out = nn.Linear(cfg.dim, cfg.num_labels)

    def forward(self, first: Tensor) -> Tensor:  # (B, dim) first-token state, or pooled output
        if self.dense is not None:
            first = self.act(self.dense(first))
        return self.out(self.drop(first))


class TokenClassificationHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.dim, cfg.num_labels)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.drop(x))


@dataclass
class ModelOutput:
    # masked-lm: (N, V) at the requested positions, or (B, T, V); question-answering: (B, T, 2);
    # sequence-classification: (B, C); token-classification: (B, T, C); no head: None.
    logits: Tensor | None
    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


class Model(nn.Module):
    def __init__(self, cfg: ModelConfig, head: str | None = None):
        super().__init__()
        if head is not None and head not in HEADS:
            raise ValueError(f"unknown head {head!r}; expected one of {HEADS} or None")
        if head == "sequence-classification" and cfg.family == "bert" and not cfg.has_pooler:
            cfg = cfg.replace(has_pooler=True)  # BERT classifies from its pooler
        if head == "sequence-classification" and cfg.family != "bert" and cfg.has_pooler:
            cfg = cfg.replace(has_pooler=False)  # the head has its own dense; a pooler would be unused
        self.cfg = cfg
        self.head_name = head
        self.encoder = Encoder(cfg)
        self.head = {
            None: lambda c: None,
            "masked-lm": MaskedLMHead,
            "question-answering": SpanHead,
            "sequence-classification": SequenceClassificationHead,
            "token-classification": TokenClassificationHead,
        }[head](cfg)

    def forward(
        self,
        input_ids: Tensor,  # (B, T)
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        positions: Tensor | None = None,  # masked-lm only: (N,) flat indices into B*T to project
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        enc = self.encoder(input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions)
        x = enc.last_hidden_state
        if self.head is None:
            logits = None
        elif self.head_name == "masked-lm":
            rows = x if positions is None else x.reshape(-1, x.size(-1))[positions]  # (N, dim): skip the rest
            logits = self.head(rows, self.encoder.embed.word.weight)
        elif self.head_name == "sequence-classification":
            logits = self.head(self.encoder.pool(x) if self.cfg.has_pooler else x[:, 0])
        else:
            logits = self.head(x)
        return ModelOutput(logits, x, enc.hidden_states, enc.attentions)


def init_weights(model: nn.Module, std: float) -> None:
    """BERT-style initialisation for freshly built modules (heads on a pretrained encoder, students)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, MaskedLMHead):  # its output bias is a bare parameter
            nn.init.zeros_(m.bias)
