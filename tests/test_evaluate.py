"""`distilkit evaluate`: metrics through the inference tasks on tiny checkpoints, checked against
direct computations with the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distilkit import evaluate as E
from distilkit.checkpoint import load_model
from distilkit.pipelines import pipeline
from distilkit.tokenizer import Tokenizer

CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy. "
           "Paris is the capital of France and its largest city. Alice is sitting on the bench.")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add noise and overhead


def test_word_tags_take_the_first_piece_of_each_word():
    words = ["Washington", "went", "to", "U.S."]
    # pipeline output with aggregation "none" and nothing ignored: one dict per piece
    entities = [{"entity": "B-LOC", "start": 0, "end": 4}, {"entity": "I-PER", "start": 4, "end": 10},
                {"entity": "O", "start": 11, "end": 15}, {"entity": "B-LOC", "start": 19, "end": 20},
                {"entity": "I-LOC", "start": 20, "end": 21}]
    assert E.word_tags(words, entities) == ["B-LOC", "O", "O", "B-LOC"]  # "to" had no piece: O


def test_token_classification_entity_f1_matches_the_model(tmp_path, checkpoint):
    ckpt = checkpoint("bert", "token-classification", head_scale=30.0)
    sentences = [["John", "lives", "in", "Seattle", "."], ["Paris", "is", "the", "capital", "of", "France"],
                 ["Hugging", "Face", "Inc.", "is", "based", "in", "New", "York"]]
    gold = [["B-PER", "O", "O", "B-LOC", "O"], ["B-LOC", "O", "O", "O", "O", "B-LOC"],
            ["B-ORG", "I-ORG", "I-ORG", "O", "O", "O", "B-LOC", "I-LOC"]]
    data = tmp_path / "test.txt"
    data.write_text("\n\n".join("\n".join(f"{w} X X {t}" for w, t in zip(ws, ts)) for ws, ts in zip(sentences, gold)))
    report = E.evaluate(str(ckpt), "ner", data)
    # The same tags straight from the model: argmax at the first piece of each word.
    model, tok = load_model(ckpt), Tokenizer.from_pretrained(ckpt)
    expected = []
    for words in sentences:
        enc = tok.rust.encode(words, is_pretokenized=True)
        with torch.no_grad():
            logits = model(torch.tensor([enc.ids]), torch.ones(1, len(enc.ids), dtype=torch.long)).logits[0]
        first = {}
        for pos, w in enumerate(enc.word_ids):
            if w is not None and w not in first:
                first[w] = model.cfg.id2label[int(logits[pos].argmax())]
        expected.append([first.get(i, "O") for i in range(len(words))])
    from distilkit.metrics import entity_scores

    want = entity_scores(gold, expected)
    got = report["metrics"]
    assert report["task"] == "token-classification" and report["examples"] == 3
    assert (got["precision"], got["recall"], got["f1"]) == (want["precision"], want["recall"], want["f1"])
    assert got["accuracy"] == sum(a == b for g, p in zip(gold, expected) for a, b in zip(g, p)) / 19


def test_text_classification_accuracy(tmp_path, checkpoint):
    ckpt = checkpoint("distilbert", "sequence-classification", head_scale=30.0)
    texts = ["My name is John and I live in Seattle.", "Today is a beautiful day!", "Who is the CEO?",
             "Paris is the capital of France.", "Alice is sitting on the bench."]
    task = pipeline("text-classification", model=str(ckpt))
    predicted = [r["label"] for r in task.run(texts)]
    gold = [predicted[0], predicted[1], "anger" if predicted[2] != "anger" else "joy", predicted[3], predicted[4]]
    data = tmp_path / "t.txt"
    data.write_text("".join(f"{t};{g}\n" for t, g in zip(texts, gold)))
    m = E.evaluate(str(ckpt), "text-classification", data)["metrics"]
    assert m["accuracy"] == pytest.approx(0.8) and 0 <= m["macro_f1"] <= 1 and m["support"] == 5


def squad(tmp_path, questions):
    qas = [{"id": str(i), "question": q, "answers": [{"text": a, "answer_start": CONTEXT.index(a)}] if a else [],
            "is_impossible": a is None} for i, (q, a) in enumerate(questions)]
    f = tmp_path / "squad.json"
    f.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}))
    return f


QUESTIONS = [("Who gave their name to Normandy?", "The Normans"), ("What is the capital of France?", "Paris"),
             ("Where is Alice sitting?", "on the bench"), ("When?", "10th and 11th centuries"),
             ("What is the weather like?", None), ("Who is the CEO?", None)]


def leaning_to_null(ckpt, out, inputs):
    """The same model with the mean final [CLS] state added to both rows of its QA head, so that the
    null answer wins: a random head hardly ever lets it."""
    import transformers as T

    model, tok = T.AutoModelForQuestionAnswering.from_pretrained(ckpt), T.AutoTokenizer.from_pretrained(ckpt)
    enc = tok([i["question"] for i in inputs], [i["context"] for i in inputs], padding=True,
              truncation="only_second", max_length=48, return_tensors="pt")
    with torch.no_grad():
        cls = model.bert(**enc).last_hidden_state[:, 0].mean(0)
        model.qa_outputs.weight.add_(torch.stack([cls, cls]) / cls.norm())
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("null", [False, True], ids=["spans-win", "null-wins"])
def test_squad_v2_uses_the_pipeline_answers_and_null_score_differences(tmp_path, checkpoint, null):
    from distilkit.data.readers import read_squad
    from distilkit.metrics import squad_v2

    records = read_squad(squad(tmp_path, QUESTIONS))
    inputs = [{"question": r["question"], "context": r["context"]} for r in records]
    ckpt = checkpoint("bert", "question-answering", head_scale=30.0)
    if null:
        ckpt = leaning_to_null(ckpt, tmp_path / "null", inputs)
    task = pipeline("question-answering", model=str(ckpt))
    params = dict(max_seq_len=48, doc_stride=16)
    preds, na = E.qa_predictions(task, records, version_2=True, **params)
    with_null = task.run(inputs, handle_impossible_answer=True, **params)
    spans = task.run(inputs, **params)
    assert {bool(a["answer"]) for a in with_null} == {not null}  # the branch this case exercises
    for r, a, s in zip(records, with_null, spans):
        assert preds[r["id"]] == a["answer"]  # the pipeline's own answer
        assert (na[r["id"]] > 0) == (a["answer"] == "")  # the null wins exactly when na_prob > 0
        if a["answer"] == "":
            assert na[r["id"]] == pytest.approx(a["score"] - s["score"], abs=1e-7)
    report = E.evaluate(str(ckpt), "qa", tmp_path / "squad.json", max_seq_len=48, doc_stride=16)
    m = report["metrics"]
    assert m == squad_v2(records, preds, na)
    assert m["HasAns_total"] == 4 and m["NoAns_total"] == 2 and "best_f1_thresh" in m
    v1 = E.evaluate(str(ckpt), "qa", tmp_path / "squad.json", version="1", select=":1", max_seq_len=48)["metrics"]
    assert set(v1) == {"exact_match", "f1", "total", "unanswerable_left_out"}
    assert (v1["total"], v1["unanswerable_left_out"]) == (4, 2)


def test_version_1_on_v2_data_scores_the_answerable_questions_as_the_recipe_does(tmp_path, checkpoint, capsys):
    """`evaluate --version 1` on v2.0 data: the v1.1 recipe's test metrics (answerable questions only), said so."""
    from distilkit.train.finetune import FinetuneConfig, read_split, score

    data = squad(tmp_path, QUESTIONS)
    ckpt = checkpoint("bert", "question-answering", head_scale=30.0)
    cfg = FinetuneConfig(task="question-answering", model=str(ckpt), data_dir=str(tmp_path), train_file=data.name,
                         max_seq_len=48, doc_stride=16)
    recipe = score(cfg, pipeline("question-answering", model=str(ckpt)), read_split(cfg, data.name, None))
    assert recipe["f1"] > 0  # else leaving questions out would not change the score
    out = tmp_path / "report.json"
    assert E.main(["--model", str(ckpt), "--task", "qa", "--data", str(data), "--version", "1", "--max-seq-len", "48",
                   "--doc-stride", "16", "--max-answer-len", "30", "--max-question-len", "64", "--output", str(out),
                   "--progress", "lines"]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert (m["exact_match"], m["f1"], m["total"]) == (recipe["exact_match"], recipe["f1"], 4)
    assert m["unanswerable_left_out"] == 2
    err = capsys.readouterr().err
    assert "2 unanswerable of 6 questions left out; scored the 4 answerable ones" in err
    assert "evaluate: done: 4 questions" in err and "\r" not in err


def test_fill_mask_pseudo_perplexity_matches_a_direct_computation(tmp_path, checkpoint):
    ckpt = checkpoint("distilbert", "masked-lm")
    texts = ["Paris is the capital of France.", "Alice is sitting on the bench."]
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": 0}) + "\n" for t in texts))
    m = E.evaluate(str(ckpt), "fill-mask", data, mask_fraction=1.0)["metrics"]
    model, tok = load_model(ckpt), Tokenizer.from_pretrained(ckpt)
    nll, top1, top5 = [], [], []
    for enc in tok.encode(texts):
        ids = torch.tensor(enc.ids)
        for pos in range(1, len(ids) - 1):
            masked = ids.clone()
            masked[pos] = tok.mask_token_id
            with torch.no_grad():
                logits = model(masked[None], torch.ones(1, len(ids), dtype=torch.long)).logits[0, pos].double()
            nll.append(-torch.log_softmax(logits, -1)[ids[pos]].item())
            top = logits.topk(5).indices.tolist()
            top1.append(ids[pos].item() == top[0])
            top5.append(ids[pos].item() in top)
    assert m["masked_tokens"] == len(nll) and m["texts"] == 2
    assert m["pseudo_perplexity"] == pytest.approx(float(np.exp(np.mean(nll))), rel=1e-5)
    assert m["top1_accuracy"] == pytest.approx(np.mean(top1)) and m["top5_accuracy"] == pytest.approx(np.mean(top5))


def test_cli_writes_the_report_and_a_table(tmp_path, checkpoint, capsys):
    ckpt = checkpoint("distilbert", "sequence-classification", head_scale=30.0)
    data = tmp_path / "t.txt"
    data.write_text("Today is a beautiful day!;joy\nWho is the CEO?;anger\n")
    out = tmp_path / "report.json"
    assert E.main(["--model", str(ckpt), "--task", "text-classification", "--data", str(data), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["examples"] == 2 and "accuracy" in report["metrics"]
    table = capsys.readouterr().err
    assert "accuracy" in table and "precision" in table
    assert E.main(["--model", str(ckpt), "--task", "text-classification", "--data", str(tmp_path / "none.txt")]) == 2


@pytest.mark.slow
def test_real_minilm_fine_tunes_if_present(shared_data):
    """The fine-tuned MiniLM checkpoints of docs/finetune.md, when they have been built on this machine."""
    from pathlib import Path

    model = Path.home() / ".cache/distilkit/minilm-emotion"
    if not (model / "model.safetensors").is_file():
        pytest.skip("~/.cache/distilkit/minilm-emotion not built (see docs/finetune.md)")
    m = E.evaluate(str(model), "text-classification", shared_data / "emotion/test.txt", limit=200)["metrics"]
    assert m["accuracy"] > 0.85


def test_scoring_moves_progress_chunk_by_chunk(checkpoint):
    class Counter:
        total = None

        def __init__(self):
            self.updates = []

        def update(self, n):
            self.updates.append(n)

    task = pipeline("text-classification", model=str(checkpoint("distilbert", "sequence-classification")))
    records = [{"text": f"text number {i}", "label": "joy"} for i in range(2 * E.CHUNK + 3)]
    counter = Counter()
    E.evaluate_text_classification(task, records, counter)
    assert counter.updates == [E.CHUNK, E.CHUNK, 3]
