"""The encoder shared by DistilBERT, BERT and RoBERTa: embeddings, attention, feed-forward, blocks.

All three are post-layer-norm Transformer encoders; what differs (token types, position offsets,
eps, activation) comes from `ModelConfig`. Attention runs through PyTorch SDPA with a fused QKV
projection. No heads and no losses here (see heads.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


def sinusoidal_table(n_pos: int, dim: int) -> Tensor:
    """DistilBERT's fixed position table: sin on even, cos on odd channels. (n_pos, dim)"""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty(n_pos, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


@dataclass
class EncoderOutput:
    last_hidden_state: Tensor  # (B, T, dim)
    hidden_states: tuple[Tensor, ...] | None = None  # n_layers + 1 entries, embeddings first
    attentions: tuple[Tensor, ...] | None = None  # n_layers entries of (B, H, T, T)


def embedding(n: int, dim: int, padding_idx: int | None = None) -> nn.Embedding:
    """nn.Embedding initialised as torch does it (N(0, 1), a zero padding row), except on the meta
    device that checkpoint loading builds on: there torch's initialiser goes through its Python
    reference ops, whose first call imports torch._dynamo (about a second of cold start) to compute
    values nobody reads."""
    weight = torch.empty(n, dim)
    if weight.device.type != "meta":
        with torch.no_grad():
            nn.init.normal_(weight)
            if padding_idx is not None:
                weight[padding_idx].zero_()
    return nn.Embedding(n, dim, padding_idx=padding_idx, _weight=weight)


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word = embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_token_id)
        self.pos = embedding(cfg.max_positions, cfg.dim)
        self.token_type = embedding(cfg.type_vocab_size, cfg.dim) if cfg.type_vocab_size else None
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.pad_token_id = cfg.pad_token_id
        self.position_offset = cfg.position_offset

    def positions(self, input_ids: Tensor) -> Tensor:
        B, T = input_ids.shape
        if self.position_offset:
            # RoBERTa: real tokens count from pad_id + 1, padding sits at pad_id.
            real = input_ids.ne(self.pad_token_id).long()
            return torch.cumsum(real, dim=1) * real + self.pad_token_id
        return torch.arange(T, device=input_ids.device)[None, :]

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        x = self.word(input_ids)  # (B, T, dim)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type(token_type_ids)
        x = x + self.pos(self.positions(input_ids))
        return self.drop(self.norm(x))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)  # fused q, k, v: one GEMM instead of three
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.dropout = cfg.attention_dropout

    def forward(self, x: Tensor, mask: Tensor | None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, T, hd) each
        p = self.dropout if self.training else 0.0
        if need_weights:  # the explicit path, only when attention maps are asked for (distillation)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = F.dropout(scores.softmax(dim=-1), p=p, training=self.training)
            y = weights @ v
        else:
            weights = None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, T, C)), weights


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.dim, cfg.ffn_dim)
        self.down = nn.Linear(cfg.ffn_dim, cfg.dim)
        self.act = activation(cfg.activation)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.down(self.act(self.up(x))))


class Block(nn.Module):
    """Post-LN block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn = FeedForward(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor | None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        a, weights = self.attn(x, mask, need_weights)
        x = self.norm1(x + self.drop(a))
        x = self.norm2(x + self.ffn(x))
        return x, weights


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        # BERT-style checkpoints carry a pooler (dense + tanh on the first token).
        self.pooler = nn.Linear(cfg.dim, cfg.dim) if cfg.has_pooler else None

    def forward(
        self,
        input_ids: Tensor,  # (B, T)
        attention_mask: Tensor | None = None,  # (B, T), 1 for real tokens
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        mask = None
        # Skipping an all-ones mask lets SDPA take its fastest path; exporters must keep the mask,
        # since the check depends on the example input.
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if attention_mask is not None and (tracing or not bool(attention_mask.all())):
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): keys a query may attend to
        x = self.embed(input_ids, token_type_ids)
        hidden = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for layer in self.layers:
            x, weights = layer(x, mask, output_attentions)
            if hidden is not None:
                hidden.append(x)
            if attentions is not None:
                attentions.append(weights)
        return EncoderOutput(
            x, tuple(hidden) if hidden is not None else None, tuple(attentions) if attentions is not None else None
        )

    def pool(self, x: Tensor) -> Tensor:
        """BERT's pooled output: tanh(dense(h[:, 0])). (B, dim)"""
        if self.pooler is None:
            raise ValueError("this encoder has no pooler")
        return torch.tanh(self.pooler(x[:, 0]))
