"""The try-it page in a real browser: headless Debian Chromium driven by Playwright.

Skips (with the reason) where Playwright or Chromium is missing: `apt-get install chromium` and
`pip install playwright` (never `playwright install`: the browser comes from Debian).
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the browser: apt-get install chromium)")

from test_serve import start_servers, stop_all  # noqa: E402

CHROMIUM = os.environ.get("DISTILKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found: apt-get install chromium")


@pytest.fixture(scope="module")
def servers(checkpoint):
    running = start_servers({
        "qa": (("question-answering", checkpoint("distilbert", "question-answering", head_scale=20.0),
                "--no-access-log"), {}),
        "fm": (("fill-mask", checkpoint("distilbert", "masked-lm", head_scale=20.0), "--no-access-log"), {}),
    })
    yield running
    stop_all(running.values())


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def test_question_is_answered_and_highlighted(servers, browser, tmp_path):
    qa = servers["qa"]
    context = "My name is John and I live in Seattle. I work as a baker."
    question = "Where do I live?"
    expected = qa.post("/pipeline/question-answering", {"question": question, "context": context}).json()
    page = browser.new_page()
    try:
        page.goto(qa.url + "/")
        page.wait_for_selector("#question-answering:not([hidden])")
        page.fill("#context", context)
        page.fill("#question", question)
        page.click("#ask")
        page.wait_for_selector("#qa-result:not([hidden])", timeout=15_000)
        assert page.text_content("#error") == ""
        shown = expected["answer"] or "(no answer)"
        assert page.text_content("#answer") == shown
        assert page.text_content("#highlighted") == context  # the whole context, unchanged
        if expected["answer"]:
            assert page.text_content("#highlighted mark") == expected["answer"]
            before = page.evaluate("document.querySelector('#highlighted').firstChild.textContent")
            assert before == context[: expected["start"]]  # the mark sits at the answer's offsets
        page.screenshot(path=str(tmp_path / "qa.png"))
    finally:
        page.close()


def test_fill_mask_shows_the_top_k(servers, browser):
    fm = servers["fm"]
    sentence = "Paris is the [MASK] of France."
    # 60: over the page's old cap of 50 (the browser refused to submit), within the server's 1000.
    expected = fm.post("/pipeline/fill-mask", {"inputs": sentence, "parameters": {"top_k": 60}}).json()
    page = browser.new_page()
    try:
        page.goto(fm.url + "/")
        page.wait_for_selector("#fill-mask:not([hidden])")
        page.fill("#sentence", sentence)
        page.fill("#top-k", "60")
        page.click("#fill")
        page.wait_for_selector("#predictions tr td", timeout=15_000)
        rows = page.locator("#predictions tr").all()[1:]  # after the header
        assert len(expected) == 60
        assert [r.locator("td").first.text_content() for r in rows] == [e["token_str"] for e in expected]
    finally:
        page.close()


def test_errors_are_shown(servers, browser):
    qa = servers["qa"]
    page = browser.new_page()
    try:
        page.goto(qa.url + "/")
        page.wait_for_selector("#question-answering:not([hidden])")
        page.fill("#context", "My name is John and I live in Seattle.")
        page.fill("#question", "Where do I live?")
        page.click("#ask")
        page.wait_for_selector("#qa-result:not([hidden])", timeout=15_000)
        page.fill("#question", "   ")
        page.click("#ask")
        page.wait_for_function("document.querySelector('#error').textContent.length > 0", timeout=15_000)
        assert "422" in page.text_content("#error") and "question" in page.text_content("#error")
        assert page.is_hidden("#qa-result")  # the previous answer is not left beside the error
    finally:
        page.close()


@pytest.fixture(scope="module")
def vector_servers(checkpoint, classifier, tmp_path_factory):
    from test_embeddings import st_folder

    running = start_servers({
        "zs": (("zero-shot-classification", classifier("distilbert", {0: "contradiction", 1: "entailment"}),
                "--no-access-log"), {}),
        "rank": (("text-ranking", classifier("bert", {0: "LABEL_0"}, seed=2, head_scale=30.0), "--no-access-log"), {}),
        "embed": (("sentence-embedding", st_folder(tmp_path_factory.mktemp("st"), checkpoint("bert", None)),
                   "--no-access-log"), {}),
    })
    yield running
    stop_all(running.values())


def test_zero_shot_ranking_and_embedding_pages(vector_servers, browser):
    zs, rank, embed = vector_servers["zs"], vector_servers["rank"], vector_servers["embed"]
    page = browser.new_page()
    try:
        page.goto(zs.url + "/")
        page.wait_for_selector("#zero-shot-classification:not([hidden])")
        page.fill("#zs-labels", "travel, food, sports")
        page.click("#zs-classify")
        page.wait_for_selector("#zs-labels-out tr td", timeout=15_000)
        expected = zs.post("/pipeline/zero-shot-classification", {"inputs": page.input_value("#zs-text"), "parameters": {
            "candidate_labels": ["travel", "food", "sports"]}}).json()
        shown = [r.locator("td").first.text_content() for r in page.locator("#zs-labels-out tr").all()[1:]]
        assert shown == expected["labels"]

        page.goto(rank.url + "/")
        page.wait_for_selector("#text-ranking:not([hidden])")
        page.fill("#passages", "Berlin is big.\nParis is old.\nRome is warm.")
        page.click("#rank")
        page.wait_for_selector("#ranking tr td", timeout=15_000)
        texts = ["Berlin is big.", "Paris is old.", "Rome is warm."]
        expected = rank.post("/rerank", {"query": page.input_value("#query"), "texts": texts}).json()
        shown = [r.locator("td").first.text_content() for r in page.locator("#ranking tr").all()[1:]]
        assert shown == [texts[r["index"]] for r in expected]

        page.goto(embed.url + "/")
        page.wait_for_selector("#embedding:not([hidden])")
        page.click("#embed")
        page.wait_for_function("document.querySelector('#vectors').textContent.length > 0", timeout=15_000)
        vectors = embed.post("/embed", {"inputs": [page.input_value("#embed-a"), page.input_value("#embed-b")]}).json()
        cosine = sum(a * b for a, b in zip(*vectors))  # the folder normalises: unit vectors
        shown = page.text_content("#vectors")
        assert abs(float(shown.split("Cosine similarity: ")[1][:6]) - cosine) < 2e-4, shown
        assert "32 dimensions" in page.text_content("#vectors") and page.text_content("#error") == ""
        assert embed.get("/info").json()["embedding"] == {"dimension": 32, "pooling": "mean", "normalize": True}
        assert zs.get("/info").json()["embedding"] is None
    finally:
        page.close()
