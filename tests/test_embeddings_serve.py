"""The new tasks over real HTTP on loopback: TEI's /embed and /rerank, OpenAI's /v1/embeddings
(driven by the official openai client), and the catalog /score route of each new task."""

from __future__ import annotations

import base64
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from distilkit import pipeline  # noqa: E402
from distilkit.serve import ServeConfig, create_app  # noqa: E402

from test_embeddings import st_folder  # noqa: E402

TEXTS = ["My name is John and I live in Seattle.", "Paris is the capital of France.", "Hi there"]
LONG = " ".join(["Paris is the capital of France and its largest city."] * 30)


class LocalServer:
    """create_app(config, task) on uvicorn in a thread, on a free loopback port."""

    def __init__(self, task, **config):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        app = create_app(ServeConfig(task=task.name, model="tiny-model", **config), task)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)

    def post(self, path, body, **kw):
        return httpx.post(self.url + path, json=body, timeout=30, **kw)

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def embedder(checkpoint, tmp_path_factory):
    d = st_folder(tmp_path_factory.mktemp("st"), checkpoint("bert", None), max_seq_length=32)
    return pipeline("sentence-embedding", model=d)


@pytest.fixture(scope="module")
def embed_server(embedder):
    server = LocalServer(embedder, max_inputs=4, api_key=None)
    yield server
    server.close()


def test_embed_tei_shapes(embed_server, embedder):
    got = embed_server.post("/embed", {"inputs": TEXTS[0]})
    assert got.status_code == 200
    np.testing.assert_allclose(got.json(), embedder.encode([TEXTS[0]]), atol=1e-6)  # a list even for one string
    got = embed_server.post("/embed", {"inputs": TEXTS, "normalize": False}).json()
    np.testing.assert_allclose(got, embedder.encode(TEXTS, normalize=False), atol=1e-6)
    assert abs(np.linalg.norm(got[0]) - 1) > 1e-3
    assert np.allclose(embed_server.post("/embed", {"inputs": [LONG], "truncate": True}).json(), embedder.encode([LONG]),
                       atol=1e-6)


@pytest.mark.parametrize("body,status,field", [
    ({"inputs": ""}, 422, "inputs"),
    ({"inputs": []}, 422, "inputs"),
    ({"inputs": ["ok", ""]}, 422, "inputs.1"),
    ({"inputs": ["ok", 3]}, 422, "inputs.1"),
    ({"inputs": 3}, 422, "inputs"),
    ({"inputs": ["a"] * 5}, 422, "inputs"),  # over max_inputs=4
    ({"inputs": [LONG]}, 422, "inputs[0]"),  # truncate defaults to false, as in TEI
    ({"inputs": "a", "dimensions": 7}, 422, "dimensions"),
    ({"inputs": "a", "typo": 1}, 422, "typo"),
    ({"text": "a"}, 422, "inputs"),
    ([1, 2], 422, "body"),
])
def test_embed_errors_name_the_field(embed_server, body, status, field):
    got = embed_server.post("/embed", body)
    assert got.status_code == status, got.text
    assert got.json()["field"] == field and got.json()["error"]


def test_openai_client(embed_server, embedder):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=embed_server.url + "/v1", api_key="unused", max_retries=0)
    out = client.embeddings.create(model="tiny", input=TEXTS)  # the client asks for base64 and decodes it
    assert [d.index for d in out.data] == [0, 1, 2] and out.model == "tiny" and out.object == "list"
    np.testing.assert_allclose([d.embedding for d in out.data], embedder.encode(TEXTS), atol=1e-6)
    tokens = sum(embedder.count_tokens(TEXTS))
    assert out.usage.prompt_tokens == out.usage.total_tokens == tokens > len(TEXTS)
    single = client.embeddings.create(model="tiny", input=TEXTS[1], encoding_format="float")
    np.testing.assert_allclose(single.data[0].embedding, embedder.encode(TEXTS[1]), atol=1e-6)
    for bad, param in (("", "input[0]"), ([], "input"), (["ok", ""], "input[1]"), ([[1, 2, 3]], "input"),
                       (["a"] * 5, "input")):
        with pytest.raises(openai.BadRequestError) as e:
            client.embeddings.create(model="tiny", input=bad)
        assert e.value.status_code == 400
        assert e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error"


def test_openai_raw_shapes(embed_server, embedder):
    got = embed_server.post("/v1/embeddings", {"input": "Hi there", "model": "m", "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(got["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, embedder.encode("Hi there"), atol=1e-7)
    bad = embed_server.post("/v1/embeddings", {"input": "a", "encoding_format": "int8"})
    assert bad.status_code == 400
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"} and bad.json()["error"]["param"] == "encoding_format"


def test_openai_auth(embedder):
    openai = pytest.importorskip("openai")
    server = LocalServer(embedder, api_key="sekret")
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).embeddings.create(
                model="m", input="a")
        ok = openai.OpenAI(base_url=server.url + "/v1", api_key="sekret", max_retries=0).embeddings.create(
            model="m", input="a")
        assert len(ok.data[0].embedding) == 32
    finally:
        server.close()


def test_score_route_and_metrics(embed_server, embedder):
    got = embed_server.post("/score", {"input_data": TEXTS[:2]})
    np.testing.assert_allclose(got.json(), embedder.encode(TEXTS[:2]), atol=1e-6)
    single = embed_server.post("/pipeline/sentence-embedding", {"inputs": TEXTS[0]}).json()
    np.testing.assert_allclose(single, embedder.encode(TEXTS[0]), atol=1e-6)
    bad = embed_server.post("/score", {"input_data": TEXTS, "parameters": {"pooling": "median"}})
    assert bad.status_code == 422 and bad.json()["field"] == "parameters.pooling"
    spec = httpx.get(embed_server.url + "/openapi.json").json()
    assert {"/embed", "/v1/embeddings", "/score"} <= set(spec["paths"])
    embed_server.post("/embed", {"inputs": "a"})
    embed_server.post("/v1/embeddings", {"input": "a"})
    metrics = httpx.get(embed_server.url + "/metrics").text
    assert 'route="/embed"' in metrics and 'route="/v1/embeddings"' in metrics


@pytest.fixture(scope="module")
def ranker(classifier):
    return pipeline("text-ranking", model=classifier("bert", {0: "LABEL_0"}, seed=2, head_scale=30.0))


@pytest.fixture(scope="module")
def rank_server(ranker):
    server = LocalServer(ranker, max_inputs=4)
    yield server
    server.close()


def test_rerank_tei_shapes(rank_server, ranker):
    got = rank_server.post("/rerank", {"query": "Where does John live?", "texts": TEXTS})
    assert got.status_code == 200
    expected = ranker("Where does John live?", TEXTS)
    assert [r["index"] for r in got.json()] == [r["index"] for r in expected]
    np.testing.assert_allclose([r["score"] for r in got.json()], [r["score"] for r in expected], atol=1e-6)
    assert "text" not in got.json()[0]
    with_text = rank_server.post("/rerank", {"query": "Where?", "texts": TEXTS, "return_text": True,
                                             "raw_scores": True}).json()
    assert {r["text"] for r in with_text} == set(TEXTS)
    raw = ranker("Where?", TEXTS, activation="none")
    np.testing.assert_allclose([r["score"] for r in with_text], [r["score"] for r in raw], atol=1e-6)
    catalog = rank_server.post("/score", {"input_data": [{"query": "Where?", "texts": TEXTS}],
                                          "parameters": {"top_k": 1}}).json()
    assert len(catalog) == 1 and catalog[0][0]["index"] == with_text[0]["index"]
    assert "/rerank" in httpx.get(rank_server.url + "/openapi.json").json()["paths"]


@pytest.mark.parametrize("body,field", [
    ({"query": "", "texts": ["a"]}, "query"),
    ({"query": "q", "texts": []}, "texts"),
    ({"query": "q", "texts": ["a", ""]}, "texts.1"),
    ({"query": "q", "texts": "a"}, "texts"),
    ({"query": "q", "texts": ["a"] * 5}, "inputs[0].texts"),  # over max_inputs=4 texts
    ({"query": "q", "texts": ["a", LONG]}, "texts[1]"),  # truncate defaults to false, as in TEI
    ({"query": "q"}, "texts"),
])
def test_rerank_errors_name_the_field(rank_server, body, field):
    got = rank_server.post("/rerank", body)
    assert got.status_code == 422, got.text
    assert got.json()["field"] == field


def test_zero_shot_and_feature_extraction_score_routes(classifier, checkpoint):
    labels = {0: "contradiction", 1: "neutral", 2: "entailment"}
    zs = pipeline("zero-shot-classification", model=classifier("distilbert", labels))
    server = LocalServer(zs)
    try:
        got = server.post("/score", {"input_data": TEXTS[:2], "parameters": {"candidate_labels": ["travel", "food"]}})
        assert got.status_code == 200 and got.json() == zs(TEXTS[:2], ["travel", "food"])
        single = server.post("/pipeline/zero-shot-classification",
                             {"inputs": TEXTS[0], "parameters": {"candidate_labels": "travel, food", "multi_label": True}})
        assert single.json() == zs(TEXTS[0], "travel, food", multi_label=True)
        missing = server.post("/score", {"input_data": TEXTS[:1]})
        assert missing.status_code == 422 and "candidate_labels" in missing.json()["field"]
    finally:
        server.close()
    fe = pipeline("feature-extraction", model=checkpoint("distilbert", None))
    server = LocalServer(fe)
    try:
        tokens = server.post("/pipeline/feature-extraction", {"inputs": TEXTS[2]}).json()
        np.testing.assert_allclose(tokens, fe(TEXTS[2]), atol=1e-6)
        assert np.asarray(tokens).shape[:1] == (1,)
        pooled = server.post("/score", {"input_data": TEXTS, "parameters": {"pooling": "mean"}}).json()
        np.testing.assert_allclose(pooled, fe(TEXTS, pooling="mean"), atol=1e-6)
        assert server.post("/embed", {"inputs": "a"}).status_code == 404  # no embedding routes for this task
    finally:
        server.close()


def test_the_new_tasks_count_their_real_cost_against_the_budget(classifier, checkpoint, ranker):
    """Zero-shot runs one pair per label, ranking one per text, and unpooled features answer
    every token's vector: each is refused at admission when that, not the input count, is over."""
    zs = pipeline("zero-shot-classification", model=classifier("distilbert", {0: "contradiction", 1: "entailment"}))
    server = LocalServer(zs, max_request_tokens=200)
    try:
        labels = [f"label {i}" for i in range(40)]
        few = server.post("/score", {"input_data": TEXTS[:1], "parameters": {"candidate_labels": labels[:2]}})
        assert few.status_code == 200, few.text
        many = server.post("/score", {"input_data": TEXTS[:1], "parameters": {"candidate_labels": labels}})
        assert many.status_code == 422 and many.json()["error_type"] == "over_budget", many.text
    finally:
        server.close()
    server = LocalServer(ranker, max_request_tokens=200, max_inputs=64)
    try:
        assert server.post("/rerank", {"query": "Where?", "texts": TEXTS}).status_code == 200
        got = server.post("/rerank", {"query": "Where?", "texts": [TEXTS[0]] * 40})
        assert got.status_code == 422 and got.json()["error_type"] == "over_budget", got.text
    finally:
        server.close()
    fe = pipeline("feature-extraction", model=checkpoint("distilbert", None))
    server = LocalServer(fe, max_response_bytes=20_000)
    try:
        pooled = server.post("/score", {"input_data": [LONG[:300]], "parameters": {"pooling": "mean"}})
        assert pooled.status_code == 200, pooled.text
        unpooled = server.post("/score", {"input_data": [LONG[:300]]})
        assert unpooled.status_code == 422 and unpooled.json()["error_type"] == "over_budget", unpooled.text
    finally:
        server.close()
