"""Tokenization through the Rust `tokenizers` library, with the checkpoint's own special tokens.

Loads `tokenizer.json`, or builds the equivalent pipeline from `vocab.txt` (WordPiece, cased or
uncased) or `vocab.json` + `merges.txt` (byte-level BPE). Encodings keep character offsets into
the caller's string. Windows over long texts are cut by the task code (see `windows`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Encoding
from tokenizers import Tokenizer as RustTokenizer

_SPECIAL_NAMES = ("cls_token", "sep_token", "pad_token", "mask_token", "unk_token", "bos_token", "eos_token")
_WORDPIECE_DEFAULTS = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]", "unk_token": "[UNK]"}
_BPE_DEFAULTS = {
    "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "mask_token": "<mask>", "unk_token": "<unk>",
    "bos_token": "<s>", "eos_token": "</s>",
}
# transformers' clean_up_tokenization, applied on decode when the tokenizer config asks for it.
_CLEANUP = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised by transformers
        return value.get("content")
    return value


@dataclass
class PairTemplate:
    """Where the special tokens go around a (question, context) pair: prefix A middle B suffix."""

    prefix: list[int]
    middle: list[int]
    suffix: list[int]
    type_a: int
    type_b: int
    prefix_types: list[int]
    middle_types: list[int]
    suffix_types: list[int]

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


class Tokenizer:
    def __init__(self, rust: RustTokenizer, special_tokens: dict[str, str], model_max_length: int = 512,
                 clean_up_tokenization_spaces: bool = False, config: dict | None = None):
        rust.no_truncation()
        rust.no_padding()
        self.rust = rust
        self._truncating: dict[int, RustTokenizer] = {}  # max_length -> a truncating copy (see _encoder)
        self.special_tokens = special_tokens
        self.model_max_length = model_max_length
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.config = dict(config or {})
        self.pad_token_id = self._id("pad_token", 0)
        self.mask_token = special_tokens.get("mask_token")
        self.mask_token_id = self._id("mask_token", None)
        self.cls_token_id = self._id("cls_token", None)
        self.sep_token_id = self._id("sep_token", None)
        self.unk_token_id = self._id("unk_token", None)
        # Word-aware tokenizers mark word continuations (WordPiece "##"); this guides NER aggregation.
        model = json.loads(rust.to_str())["model"]
        self.continuing_subword_prefix = model.get("continuing_subword_prefix")
        self.pair_template = self._pair_template()
        single = self.rust.encode("a", add_special_tokens=True)
        a0 = single.sequence_ids.index(0)
        a1 = len(single.sequence_ids) - single.sequence_ids[::-1].index(0)
        self.single_prefix, self.single_suffix = single.ids[:a0], single.ids[a1:]  # [CLS] ... [SEP]

    def _id(self, name: str, default):
        token = self.special_tokens.get(name)
        tid = self.rust.token_to_id(token) if token else None
        return default if tid is None else tid

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        tok_config = _read_json(path / "tokenizer_config.json")
        special_map = _read_json(path / "special_tokens_map.json")
        if (path / "tokenizer.json").is_file():
            rust = RustTokenizer.from_file(str(path / "tokenizer.json"))
            defaults = _BPE_DEFAULTS if rust.token_to_id("<mask>") is not None else _WORDPIECE_DEFAULTS
        elif (path / "vocab.txt").is_file():
            from tokenizers.implementations import BertWordPieceTokenizer

            lower = tok_config.get("do_lower_case", True)
            strip = tok_config.get("strip_accents")
            rust = BertWordPieceTokenizer(
                str(path / "vocab.txt"), lowercase=lower, strip_accents=strip,
                handle_chinese_chars=tok_config.get("tokenize_chinese_chars", True), clean_text=True,
            )._tokenizer
            defaults = _WORDPIECE_DEFAULTS
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            rust = _byte_level_bpe(path, tok_config)
            defaults = _BPE_DEFAULTS
        else:
            raise FileNotFoundError(
                f"{path} has no tokenizer: expected tokenizer.json, vocab.txt, or vocab.json + merges.txt"
            )
        special = dict(defaults)
        for name in _SPECIAL_NAMES:
            value = _token_text(special_map.get(name)) or _token_text(tok_config.get(name))
            if value:
                special[name] = value
        special = {k: v for k, v in special.items() if rust.token_to_id(v) is not None}
        max_len = tok_config.get("model_max_length")
        if not isinstance(max_len, int) or max_len > 100_000:  # transformers' "very large" sentinel
            model_cfg = _read_json(path / "config.json")
            max_len = model_cfg.get("max_position_embeddings", 512)
            if model_cfg.get("model_type") == "roberta":
                max_len -= model_cfg.get("pad_token_id", 1) + 1
        return cls(rust, special, max_len, bool(tok_config.get("clean_up_tokenization_spaces", False)), tok_config)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.rust.save(str(path / "tokenizer.json"))
        cfg = dict(self.config)
        cfg.update(self.special_tokens)
        cfg["model_max_length"] = self.model_max_length
        cfg["clean_up_tokenization_spaces"] = self.clean_up_tokenization_spaces
        (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        (path / "special_tokens_map.json").write_text(json.dumps(self.special_tokens, indent=2, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ encoding
    def encode(self, texts: Sequence[str], add_special_tokens: bool = True, max_length: int | None = None) -> list[Encoding]:
        """Encode many texts in one Rust batch (parallel, GIL released); with `max_length`, cut
        to that many tokens, special tokens included, as transformers' `truncation=True` does."""
        return self._encoder(max_length).encode_batch(list(texts), add_special_tokens=add_special_tokens)

    def encode_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int | None = None) -> list[Encoding]:
        """Text pairs; with `max_length`, cut as transformers' `truncation=True` (longest_first):
        tokens come off the longer text first, both texts and every special token stay."""
        return self._encoder(max_length).encode_batch([tuple(p) for p in pairs], add_special_tokens=True)

    def _encoder(self, max_length: int | None) -> RustTokenizer:
        """The Rust tokenizer, or for `max_length` a copy of it that truncates: the library's own
        longest_first rule is the reference's, and the shared tokenizer stays untruncated (a
        setting on it would leak into every other caller, threads included)."""
        if max_length is None:
            return self.rust
        if max_length not in self._truncating:
            copy = RustTokenizer.from_str(self.rust.to_str())
            copy.enable_truncation(max_length, strategy="longest_first")
            self._truncating[max_length] = copy
        return self._truncating[max_length]

    def _pair_template(self) -> PairTemplate:
        enc = self.rust.encode("a", "b", add_special_tokens=True)
        seq = enc.sequence_ids
        a0, a1 = seq.index(0), len(seq) - seq[::-1].index(0)  # [a0, a1): the first sequence
        b0, b1 = seq.index(1), len(seq) - seq[::-1].index(1)
        ids, types = enc.ids, enc.type_ids
        return PairTemplate(ids[:a0], ids[a1:b0], ids[b1:], types[a0], types[b0],
                            types[:a0], types[a1:b0], types[b1:])

    # ------------------------------------------------------------------ decoding
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.cleanup(self.rust.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens))

    def cleanup(self, text: str) -> str:
        """transformers' clean_up_tokenization, when the tokenizer config asks for it."""
        if self.clean_up_tokenization_spaces:
            for a, b in _CLEANUP:
                text = text.replace(a, b)
        return text

    def id_to_token(self, i: int) -> str:
        return self.rust.id_to_token(int(i))

    def token_to_id(self, token: str) -> int | None:
        return self.rust.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self.rust.get_vocab_size(with_added_tokens=True)


def windows(n_tokens: int, size: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) token ranges covering n_tokens in windows of `size` overlapping by `stride`.

    The same cut as the Rust tokenizer's overflowing truncation (and so the transformers pipelines):
    windows start every size - stride tokens until one reaches the end.
    """
    if n_tokens <= size:
        return [(0, n_tokens)]
    if not 0 <= stride < size:
        raise ValueError(f"stride ({stride}) must be smaller than the window ({size} tokens)")
    out = []
    for start in range(0, n_tokens, size - stride):
        end = min(start + size, n_tokens)
        out.append((start, end))
        if end == n_tokens:
            break
    return out


def encoding_arrays(enc: Encoding) -> tuple[np.ndarray, np.ndarray, list[int | None]]:
    """ids (T,), offsets (T, 2), word ids of one encoding, as arrays."""
    return np.asarray(enc.ids, dtype=np.int64), np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2), enc.word_ids


def _read_json(file: Path) -> dict:
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None


def _byte_level_bpe(path: Path, tok_config: dict) -> RustTokenizer:
    """RoBERTa's tokenizer from vocab.json + merges.txt, as transformers' converter builds it."""
    from tokenizers import decoders, models, pre_tokenizers, processors

    vocab = json.loads((path / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (path / "merges.txt").read_text().splitlines()
              if line and not line.startswith("#version")]
    add_prefix_space = tok_config.get("add_prefix_space", False)
    trim_offsets = tok_config.get("trim_offsets", True)
    rust = RustTokenizer(models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                                    fuse_unk=False))
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    rust.decoder = decoders.ByteLevel()
    bos = _token_text(tok_config.get("bos_token")) or "<s>"
    eos = _token_text(tok_config.get("eos_token")) or "</s>"
    rust.post_processor = processors.RobertaProcessing(
        (eos, vocab[eos]), (bos, vocab[bos]), add_prefix_space=add_prefix_space, trim_offsets=trim_offsets
    )
    specials = [t for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>") if t in vocab]
    from tokenizers import AddedToken

    rust.add_special_tokens([AddedToken(t, lstrip=(t == "<mask>"), normalized=False) for t in specials])
    return rust
