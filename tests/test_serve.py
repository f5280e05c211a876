"""`distilkit serve` over real HTTP: servers run in subprocesses on loopback ports with tiny local models.

A launcher wraps `Task.run` so that inputs containing "SLOW" hold the model thread for
$DISTILKIT_TEST_SLOW_S seconds: that makes "a request in flight", timeouts and a full queue
deterministic without touching the server's code. Also here: table tests of the pure
`parse_request` / `format_response` (no model).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from distilkit.errors import InputError  # noqa: E402
from distilkit.schemas import format_response, parse_request  # noqa: E402

LAUNCHER = r"""
import json, os, sys, time
from distilkit.tasks.base import Task

_run = Task.run

def run(self, inputs, **params):
    if "SLOW" in json.dumps(inputs):
        time.sleep(float(os.environ.get("DISTILKIT_TEST_SLOW_S", "1")))
    return _run(self, inputs, **params)

Task.run = run
for name in ("distilkit.tasks.token_classification",):
    try:
        __import__(name)
    except ImportError:
        pass
from distilkit.serve.__main__ import main
sys.exit(main(sys.argv[1:]))
"""

API_KEY = "test-key-6f1c2a"
QA_SEED = {"input_data": {"question": "What's my name?", "context": "My name is John and I live in Seattle"}}
FM_SEED = {"inputs": {"input_string": ["Paris is the [MASK] of France.", "Today is a [MASK] day!"]},
           "parameters": {"top_k": 2}}


class Server:
    """One `python -m distilkit.serve` subprocess (through the launcher) on loopback. It binds
    port 0 itself and logs the port it got (no free-port race between tests)."""

    def __init__(self, task: str, model: Path, *flags: str, slow_s: float = 1.0, env: dict | None = None,
                 launcher: str = LAUNCHER):
        self.task = task
        self.port: int | None = None
        self.url = ""
        self.log_path = Path(tempfile.mkstemp(prefix=f"serve-{task}-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        environment = {k: v for k, v in os.environ.items() if k != "DISTILKIT_API_KEY"}
        environment.update({"DISTILKIT_TEST_SLOW_S": str(slow_s), "HF_HUB_OFFLINE": "1", **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-c", launcher, "--task", task, "--model", str(model), "--port", "0",
             "--threads", "1", "--log-level", "info", *flags],
            env=environment, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 240.0) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if self.port is None:
                found = re.search(r"serving \S+ on http://127\.0\.0\.1:(\d+)", self.log())
                if not found:
                    time.sleep(0.1)
                    continue
                self.port = int(found.group(1))
                self.url = f"http://127.0.0.1:{self.port}"
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def post(self, path: str, body=None, *, key: str | None = None, timeout: float = 30, **kwargs):
        headers = {"content-type": "application/json", **kwargs.pop("headers", {})}  # a JSON client unless told
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if body is not None:
            kwargs["json"] = body
        return httpx.post(self.url + path, headers=headers, timeout=timeout, **kwargs)

    def get(self, path: str, **kwargs):
        return httpx.get(self.url + path, timeout=kwargs.pop("timeout", 10), **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of GET /metrics (0 when absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = re.compile(rf"^{re.escape(name)}(\{{(.*)\}})? (\S+)$")
        for line in self.get("/metrics").text.splitlines():
            m = pattern.match(line)
            if m and (m.group(2) or "") == want:
                return float(m.group(3))
        return 0.0


def wait_until(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def hold_model_thread(pool, server: Server, body: dict, **kwargs):
    """Send a SLOW request and return its future once the model thread is running it."""
    before = server.metric("distilkit_batch_requests_count")
    future = pool.submit(server.post, "/score", body, **kwargs)
    wait_until(lambda: server.metric("distilkit_batch_requests_count") > before, what="the slow request to start")
    return future


def start_servers(specs: dict[str, tuple]) -> dict[str, Server]:
    """Start several servers at once (imports overlap), then wait for each."""
    servers = {name: Server(*args, **kwargs) for name, (args, kwargs) in specs.items()}
    try:
        for s in servers.values():
            s.wait_ready()
    except Exception:
        stop_all(servers.values())
        raise
    return servers


def stop_all(servers) -> None:
    servers = list(servers)
    for s in servers:  # all at once: each drains for a moment
        if s.proc.poll() is None:
            s.proc.terminate()
    for s in servers:
        s.stop()


def has_token_classification() -> bool:
    try:
        import distilkit.tasks.token_classification  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def models(checkpoint):
    return {
        "qa": checkpoint("distilbert", "question-answering", head_scale=20.0),
        "fm": checkpoint("distilbert", "masked-lm", head_scale=20.0),
        "tc": checkpoint("distilbert", "sequence-classification", head_scale=20.0),
        "ner": checkpoint("distilbert", "token-classification", head_scale=20.0),
    }


@pytest.fixture(scope="module")
def servers(models):
    specs = {
        # Small limits so that each error class is cheap to reach; 2.5 s SLOW vs a 1.5 s deadline.
        "qa": (("question-answering", models["qa"], "--max-inputs", "8", "--max-text-chars", "2000",
                "--max-body-bytes", "20000", "--timeout-s", "1.5"), {"slow_s": 4.0}),
        "fm": (("fill-mask", models["fm"], "--max-wait-ms", "20"), {"slow_s": 2.5, "env": {"DISTILKIT_API_KEY": API_KEY}}),
        "tc": (("text-classification", models["tc"], "--max-queue", "2", "--graceful-timeout-s", "20"),
               {"slow_s": 2.5}),
    }
    if has_token_classification():
        specs["ner"] = (("token-classification", models["ner"]), {})
    running = start_servers(specs)
    yield running
    stop_all(running.values())


@pytest.fixture(scope="module")
def local(models):
    """The same tasks in this process: what the server must answer."""
    from distilkit.pipelines import pipeline

    names = {"qa": "question-answering", "fm": "fill-mask", "tc": "text-classification", "ner": "token-classification"}
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = pipeline(names[kind], model=models[kind])
        return cache[kind]

    return get


def close(a, b) -> None:
    """Equal JSON trees, floats within 1e-5."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-5)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            close(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            close(x, y)
    else:
        assert a == b


def error_of(response, status: int, error_type: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "error_type", "field"} and body["error"]
    assert body["error_type"] == error_type, body
    if field is not None:
        assert body["field"] == field, body
    return body


# ---------------------------------------------------------------------------------------- ops routes
def test_health_ready_info(servers):
    qa = servers["qa"]
    assert qa.get("/health").json()["status"] == "alive"
    assert qa.get("/ready").json()["status"] == "ready"
    info = qa.get("/info").json()
    assert info["task"] == "question-answering" and info["ready"] and info["version"]
    assert info["limits"]["max_inputs"] == 8 and info["limits"]["max_body_bytes"] == 20000
    assert info["auth"] is False and servers["fm"].get("/info").json()["auth"] is True
    spec = qa.get("/openapi.json").json()
    assert {"/score", "/pipeline/question-answering", "/health", "/ready", "/info", "/metrics", "/"} <= set(spec["paths"])


def test_small_things(servers, models):
    qa = servers["qa"]
    # One rule for empty lists: refused everywhere, never an empty 200.
    for body, field in (({"input_data": {"question": [], "context": "x"}}, "input_data.question"),
                        ({"input_data": {"question": "q", "context": []}}, "input_data.context"),
                        ({"question": [], "context": "x"}, "question"), ({"input_data": []}, "input_data")):
        error_of(qa.post("/score", body), 422, "invalid_request", field)
    assert qa.get("/info").json()["model"] == models["qa"].name  # the directory's name, not the host's path
    for path in ("/health", "/ready"):
        head = httpx.head(qa.url + path, timeout=10)
        assert head.status_code == 200 and head.content == b""
    # /docs works offline: every asset it names is served here.
    page = qa.get("/docs").text
    assets = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert assets and not [a for a in assets if "://" in a]
    for a in assets:
        assert qa.get(a).status_code == 200, a
    assert 'max="1000"' in qa.get("/").text  # the try-it page allows the server's top-k limit


def test_try_it_page_is_served(servers):
    page = servers["qa"].get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="question"' in page.text and 'id="context"' in page.text and "<script>" in page.text


# ---------------------------------------------------------------------------------------- seed shapes
def test_question_answering_seed_shape(servers, local):
    answer = servers["qa"].post("/score", QA_SEED)
    assert answer.status_code == 200, answer.text
    expected = local("qa").run([{"question": "What's my name?", "context": "My name is John and I live in Seattle"}])[0]
    assert answer.json() == [expected["answer"]]
    assert expected["answer"] in QA_SEED["input_data"]["context"]


def test_question_answering_lists_and_full_answers(servers, local):
    qa = servers["qa"]
    questions, contexts = ["What's my name?", "Where do I live?"], ["My name is John.", "I live in Seattle."]
    expected = local("qa").run([{"question": q, "context": c} for q, c in zip(questions, contexts)])
    r = qa.post("/score", {"input_data": {"question": questions, "context": contexts}})
    assert r.json() == [e["answer"] for e in expected]
    # One context, several questions.
    r = qa.post("/score", {"input_data": {"question": questions, "context": contexts[0]}})
    assert len(r.json()) == 2 and all(isinstance(a, str) for a in r.json())
    # The documented way to get {score, start, end, answer}.
    full = qa.post("/score", {"input_data": {"question": questions, "context": contexts},
                              "parameters": {"return_full": True}}).json()
    close(full, expected)
    # top_k > 1: a list per question, of strings or (return_full) of objects.
    top = qa.post("/score", {"input_data": {"question": questions, "context": contexts},
                             "parameters": {"top_k": 2, "handle_impossible_answer": True}}).json()
    assert all(isinstance(a, list) and all(isinstance(s, str) for s in a) for a in top)
    top_full = qa.post("/score", {"input_data": {"question": questions, "context": contexts},
                                  "parameters": {"top_k": 2, "return_full": True}}).json()
    assert all(set(a[0]) == {"score", "start", "end", "answer"} for a in top_full)


def test_question_answering_pipeline_route(servers, local):
    qa = servers["qa"]
    ex = {"question": "Where do I live?", "context": "My name is John and I live in Seattle"}
    expected = local("qa")(**ex)
    close(qa.post("/pipeline/question-answering", ex).json(), expected)
    close(qa.post("/pipeline/question-answering", {"inputs": ex}).json(), expected)
    both = qa.post("/pipeline/question-answering", {"inputs": [ex, ex], "parameters": {"top_k": 1}}).json()
    close(both, [expected, expected])
    # Plain pipeline JSON is accepted by /score too; catalog JSON is not a pipeline shape.
    close(qa.post("/score", ex).json(), expected)
    error_of(qa.post("/pipeline/question-answering", QA_SEED), 422, "invalid_request", "body")


def test_fill_mask_seed_shapes(servers, local):
    fm = servers["fm"]
    expected = local("fm").run(FM_SEED["inputs"]["input_string"], top_k=2)
    for body in (FM_SEED, {"input_data": FM_SEED["inputs"], "parameters": {"top_k": 2}}):
        r = fm.post("/score", body, key=API_KEY)
        assert r.status_code == 200, r.text
        got = r.json()
        assert len(got) == 2 and all(len(per_input) == 2 for per_input in got)
        assert all(set(d) == {"score", "token", "token_str", "sequence"} for per_input in got for d in per_input)
        close(got, expected)
    # Pipeline route: one string -> one flat list.
    single = fm.post("/pipeline/fill-mask", {"inputs": "Paris is the [MASK] of France.", "parameters": {"top_k": 3}},
                     key=API_KEY).json()
    close(single, local("fm")("Paris is the [MASK] of France.", top_k=3))


def test_text_classification_shapes(servers, local):
    tc = servers["tc"]
    texts = ["I love this!", {"text": "Is it good?", "text_pair": "It is terrible."}]
    r = tc.post("/score", {"input_data": texts})
    close(r.json(), local("tc")(texts))
    assert all(set(d) == {"label", "score"} for d in r.json())
    ranked = tc.post("/score", {"input_data": texts, "parameters": {"top_k": 2}}).json()
    close(ranked, local("tc")(texts, top_k=2))
    assert all(len(x) == 2 and x[0]["score"] >= x[1]["score"] for x in ranked)
    close(tc.post("/pipeline/text-classification", {"inputs": "I love this!"}).json(), local("tc")("I love this!"))
    close(tc.post("/pipeline/text-classification", {"inputs": "I love this!", "parameters": {"top_k": None}}).json(),
          local("tc")("I love this!", top_k=None))


def test_token_classification_shapes(servers, local):
    if "ner" not in servers:
        pytest.skip("distilkit.tasks.token_classification is not there yet")
    ner = servers["ner"]
    texts = ["My name is Wolfgang and I live in Berlin.", "Hugging Face Inc. is in New York City."]
    r = ner.post("/score", {"input_data": texts})
    assert r.status_code == 200, r.text
    got = r.json()
    assert len(got) == 2 and all(isinstance(x, list) for x in got)
    close(got, json.loads(json.dumps(format_response("ner", local("ner").run(texts), "catalog"))))
    grouped = ner.post("/pipeline/token-classification",
                       {"inputs": texts[0], "parameters": {"aggregation_strategy": "simple"}}).json()
    assert all({"entity_group", "score", "word", "start", "end"} <= set(e) for e in grouped)


# ---------------------------------------------------------------------------------------- errors
def test_malformed_and_wrong_types(servers):
    qa = servers["qa"]
    error_of(qa.post("/score", content=b'{"input_data": ', headers={"content-type": "application/json"}),
             400, "invalid_json", "body")
    error_of(qa.post("/score", content=b""), 400, "invalid_json", "body")
    error_of(qa.post("/score", content=b'{"x": NaN}'), 400, "invalid_json", "body")
    error_of(qa.post("/score", content=b"\xff\xfe"), 400, "invalid_json", "body")
    error_of(qa.post("/score", [1, 2]), 422, "invalid_request", "body")
    error_of(qa.post("/score", {"input_data": {"question": 5, "context": "c"}}), 422, "invalid_request",
             "input_data.question")
    error_of(qa.post("/score", {"input_data": {"question": "q"}}), 422, "invalid_request", "input_data.context")
    error_of(qa.post("/score", {"input_data": {"question": "  ", "context": "c"}}), 422, "invalid_request",
             "input_data.question")
    error_of(qa.post("/score", {"input_data": {"question": ["a", "b"], "context": ["c"]}}), 422, "invalid_request",
             "input_data.question")
    error_of(qa.post("/score", {**QA_SEED, "parameters": {"top_k": "2"}}), 422, "invalid_request", "parameters.top_k")
    error_of(qa.post("/score", {**QA_SEED, "parameters": {"top_k": 0}}), 422, "invalid_request", "parameters.top_k")
    error_of(qa.post("/score", {**QA_SEED, "parameters": {"topk": 2}}), 422, "invalid_request", "parameters.topk")
    error_of(qa.post("/score", {**QA_SEED, "extra": 1}), 422, "invalid_request", "extra")
    error_of(qa.post("/score", {**QA_SEED, "parameters": {"max_seq_len": 4096}}), 422, "invalid_input", "max_seq_len")
    error_of(qa.get("/nowhere"), 404, "not_found")
    error_of(qa.get("/score"), 405, "method_not_allowed")


def test_missing_mask_token_names_the_input(servers):
    body = {"inputs": {"input_string": ["Paris is the [MASK] of France.", "No mask here."]}}
    error_of(servers["fm"].post("/score", body, key=API_KEY), 422, "invalid_input", "inputs[1]")


def test_limits(servers):
    qa = servers["qa"]
    many = {"input_data": {"question": ["q?"] * 9, "context": "My name is John."}}
    error_of(qa.post("/score", many), 422, "too_many_inputs", "inputs")
    long = {"input_data": {"question": "q?", "context": "word " * 500}}
    error_of(qa.post("/score", long), 422, "text_too_long", "inputs[0].context")
    huge = {"input_data": {"question": "q?", "context": "x" * 30_000}}
    error_of(qa.post("/score", huge), 413, "payload_too_large", "body")

    def chunks():  # no Content-Length: the limit holds while streaming too
        yield b'{"input_data": {"question": "q?", "context": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}}'

    error_of(qa.post("/score", content=chunks()), 413, "payload_too_large", "body")


def test_body_that_never_arrives_is_408(servers):
    qa = servers["qa"]  # --timeout-s 1.5
    with socket.create_connection(("127.0.0.1", qa.port), timeout=10) as s:
        s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"input_data\"")
        head = s.recv(4096)  # answered at the deadline, body still incomplete
    assert head.startswith(b"HTTP/1.1 408"), head


def test_request_timeout_is_504(servers):
    qa = servers["qa"]
    before = qa.metric("distilkit_dropped_requests_total", reason="timeout")
    finished = qa.metric("distilkit_batch_duration_seconds_count")
    start = time.monotonic()
    r = qa.post("/score", {"input_data": {"question": "SLOW?", "context": "My name is John."}})
    error_of(r, 504, "timeout")
    assert time.monotonic() - start < 3.5  # answered at the deadline, not when the model finished (4 s)
    assert qa.metric("distilkit_dropped_requests_total", reason="timeout") == before + 1
    # The model thread cannot be interrupted: once it is done, the server goes on.
    wait_until(lambda: qa.metric("distilkit_batch_duration_seconds_count") > finished, what="the slow batch")
    assert qa.post("/score", QA_SEED).status_code == 200


def test_queue_full_is_503_with_retry_after(servers):
    tc = servers["tc"]  # --max-queue 2
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        slow = hold_model_thread(pool, tc, {"input_data": ["SLOW"]})
        queued = [pool.submit(tc.post, "/score", {"input_data": [f"text {i}"]}) for i in range(2)]
        wait_until(lambda: tc.metric("distilkit_queue_depth") == 2, what="two queued requests")
        r = tc.post("/score", {"input_data": ["one too many"]})
        error_of(r, 503, "queue_full")
        assert int(r.headers["retry-after"]) >= 1
        assert slow.result().status_code == 200
        assert [f.result().status_code for f in queued] == [200, 200]


def test_bad_request_in_a_merged_batch_fails_alone(servers, local):
    fm = servers["fm"]
    texts = [f"Paris is the [MASK] of France number {i}." for i in range(6)]
    before_batches = fm.metric("distilkit_batch_requests_count")
    before_requests = fm.metric("distilkit_batch_requests_sum")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        slow = hold_model_thread(pool, fm, {"input_data": ["SLOW [MASK]"]}, key=API_KEY)
        # Everything below queues behind it and is merged into one batch.
        good = [pool.submit(fm.post, "/score", {"input_data": [t]}, key=API_KEY) for t in texts]
        bad = pool.submit(fm.post, "/score", {"input_data": ["No mask in this one."]}, key=API_KEY)
        assert slow.result().status_code == 200
        error_of(bad.result(), 422, "invalid_input", "inputs[0]")
        for t, f in zip(texts, good):
            assert f.result().status_code == 200
            close(f.result().json(), local("fm").run([t]))  # each request gets its own slice back
    batches = fm.metric("distilkit_batch_requests_count") - before_batches
    requests = fm.metric("distilkit_batch_requests_sum") - before_requests
    assert requests / batches > 1.5, (requests, batches)  # merged, not one by one


def test_disconnected_client_is_dropped_before_compute(servers):
    fm = servers["fm"]
    before = fm.metric("distilkit_dropped_requests_total", reason="disconnected")
    body = json.dumps({"input_data": ["Dropped [MASK] request."]}).encode()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = hold_model_thread(pool, fm, {"input_data": ["SLOW [MASK]"]}, key=API_KEY)
        with socket.create_connection(("127.0.0.1", fm.port)) as s:
            s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            # Queued behind the slow one; now the client leaves.
            wait_until(lambda: fm.metric("distilkit_queue_depth") >= 1, what="the request to be queued")
        assert slow.result().status_code == 200
    wait_until(lambda: fm.metric("distilkit_dropped_requests_total", reason="disconnected") >= before + 1,
               what="the disconnected request to be dropped")


# ---------------------------------------------------------------------------------------- auth
def test_auth_on(servers):
    fm = servers["fm"]
    body = {"inputs": "Paris is the [MASK] of France."}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"},
                    {"Authorization": API_KEY}):
        r = fm.post("/score", body, headers=headers)
        error_of(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
    error_of(fm.post("/pipeline/fill-mask", body), 401, "unauthorized")
    assert fm.post("/score", body, key=API_KEY).status_code == 200
    assert fm.post("/score", body, headers={"Authorization": f"bearer {API_KEY}"}).status_code == 200
    for path in ("/health", "/ready"):  # probes stay open
        assert fm.get(path).status_code == 200
    assert API_KEY not in fm.log()  # never logged


def test_a_non_ascii_key_matches_byte_for_byte(models):
    from fastapi.testclient import TestClient

    from distilkit.pipelines import pipeline
    from distilkit.serve import ServeConfig, create_app

    key = "clé-ünïcode-🔑"
    app = create_app(ServeConfig(task="text-classification", api_key=key),
                     pipeline("text-classification", model=models["tc"]))
    body = {"input_data": ["I love it"]}
    with TestClient(app) as client:
        # What a client sends for this key: its UTF-8 bytes (the server must not compare latin-1 text).
        good = client.post("/score", json=body, headers={"Authorization": b"Bearer " + key.encode()})
        assert good.status_code == 200, good.text
        wrong = client.post("/score", json=body, headers={"Authorization": b"Bearer " + key.encode("latin-1", "replace")})
        error_of(wrong, 401, "unauthorized")


def test_auth_off(servers):
    assert servers["qa"].post("/score", QA_SEED).status_code == 200
    assert servers["qa"].post("/score", QA_SEED, headers={"Authorization": "Bearer anything"}).status_code == 200


# ---------------------------------------------------------------------------------------- metrics
def test_metrics_move(servers):
    qa = servers["qa"]
    ok = dict(route="/score", method="POST", status="200")
    bad = dict(route="/score", method="POST", status="422")
    before_ok, before_bad = qa.metric("distilkit_requests_total", **ok), qa.metric("distilkit_requests_total", **bad)
    before_latency = qa.metric("distilkit_request_duration_seconds_count", route="/score")
    before_batches = qa.metric("distilkit_batch_requests_count")
    assert qa.post("/score", QA_SEED).status_code == 200
    assert qa.post("/score", {"input_data": {"question": 1, "context": "c"}}).status_code == 422
    assert qa.metric("distilkit_requests_total", **ok) == before_ok + 1
    assert qa.metric("distilkit_requests_total", **bad) == before_bad + 1
    assert qa.metric("distilkit_request_duration_seconds_count", route="/score") == before_latency + 2
    assert qa.metric("distilkit_batch_requests_count") == before_batches + 1
    text = qa.get("/metrics").text
    for name in ("distilkit_queue_depth", "distilkit_batch_inputs_bucket", "distilkit_requests_in_flight",
                 "distilkit_ready 1"):
        assert name in text
    assert qa.get("/metrics").headers["content-type"].startswith("text/plain")


# ---------------------------------------------------------------------------------------- shutdown
def test_sigterm_finishes_the_requests_in_flight_and_queued(models, local):
    """Its own server: stopping it leaves the other tests theirs, in any order."""
    server = Server("text-classification", models["tc"], "--graceful-timeout-s", "20", slow_s=2.5).wait_ready()
    text = "SLOW: I love this!"
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            in_flight = hold_model_thread(pool, server, {"inputs": text})
            queued = [pool.submit(server.post, "/score", {"input_data": [f"queued text {i}"]}) for i in range(2)]
            wait_until(lambda: server.metric("distilkit_queue_depth") == 2, what="two queued requests")
            server.proc.send_signal(signal.SIGTERM)

            def refused() -> bool:  # no new connections while draining
                try:
                    httpx.get(server.url + "/health", timeout=1)
                except httpx.HTTPError:
                    return True
                return False

            wait_until(refused, timeout=10, what="the listener to close")
            assert not in_flight.done()  # still running when the port closed
            r = in_flight.result(timeout=30)
            answers = [f.result(timeout=30) for f in queued]
        assert r.status_code == 200, r.text
        close(r.json(), local("tc")(text))
        for i, a in enumerate(answers):  # queued before the signal: served within the grace period
            assert a.status_code == 200, a.text
            close(a.json(), local("tc").run([f"queued text {i}"]))
        assert server.proc.wait(20) == 0, server.log()
    finally:
        server.stop()


def test_ready_is_503_while_draining(models):
    from fastapi.testclient import TestClient

    from distilkit.pipelines import pipeline
    from distilkit.serve import ServeConfig, create_app

    app = create_app(ServeConfig(task="text-classification"), pipeline("text-classification", model=models["tc"]))
    with TestClient(app) as client:
        assert client.get("/ready").status_code == 200
        app.state.serve.begin_drain(60.0)  # what SIGTERM calls
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "draining"
        assert client.post("/score", json={"input_data": ["still served"]}).status_code == 200


# ---------------------------------------------------------------------------------------- in process
def test_app_loads_its_model_in_the_background(models, tmp_path):
    from fastapi.testclient import TestClient

    from distilkit.serve import ServeConfig, create_app

    with TestClient(create_app(ServeConfig(task="sentiment-analysis", model=str(models["tc"])))) as client:
        deadline = time.monotonic() + 120
        while (r := client.get("/ready")).status_code != 200:
            assert r.json()["status"] == "loading" and time.monotonic() < deadline, r.json()
            time.sleep(0.1)
        assert client.post("/score", json={"input_data": ["I love it"]}).status_code == 200
    with TestClient(create_app(ServeConfig(task="fill-mask", model=str(tmp_path / "missing")))) as client:
        deadline = time.monotonic() + 60
        while (r := client.get("/ready")).json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert r.status_code == 503 and r.json()["status"] == "failed"
        error_of(client.post("/score", json={"inputs": "a [MASK]"}), 503, "not_ready")
        assert client.get("/health").status_code == 200


def test_an_exported_model_is_served_without_torch(models, tmp_path):
    pytest.importorskip("onnxruntime")
    from distilkit.export import export_onnx
    from distilkit.pipelines import pipeline

    out = export_onnx(models["qa"], tmp_path / "onnx")
    # `import torch` fails in the server: sys.modules maps it to None.
    server = Server("question-answering", out, launcher="import sys\nsys.modules['torch'] = None\n" + LAUNCHER)
    try:
        server.wait_ready()
        r = server.post("/score", {**QA_SEED, "parameters": {"return_full": True}})
        assert r.status_code == 200, r.text
        close(r.json(), pipeline("question-answering", model=out).run([QA_SEED["input_data"]]))
        assert server.get("/info").json()["model"] == "onnx"
    finally:
        server.stop()


def test_bad_model_exits_with_the_reason(tmp_path):
    from distilkit.serve.__main__ import main

    assert main(["--task", "fill-mask", "--model", str(tmp_path / "missing"), "--port", "0"]) == 1
    assert main(["--task", "fill-mask", "--max-inputs", "0"]) == 2
    with pytest.raises(SystemExit) as bad_mode:  # refused before anything loads
        main(["--task", "fill-mask", "--mode", "fp16"])
    assert bad_mode.value.code == 2


# ---------------------------------------------------------------------------------------- schemas (pure)
@pytest.mark.parametrize("task, body, inputs, params, shape", [
    ("fill-mask", FM_SEED, FM_SEED["inputs"]["input_string"], {"top_k": 2}, "catalog"),
    ("fill-mask", {"input_data": {"input_string": ["a [MASK]"]}}, ["a [MASK]"], {}, "catalog"),
    ("fill-mask", {"input_data": ["a [MASK]", "b [MASK]"]}, ["a [MASK]", "b [MASK]"], {}, "catalog"),
    ("fill-mask", {"inputs": "a [MASK]", "parameters": {"top_k": 3}}, ["a [MASK]"], {"top_k": 3}, "pipeline-single"),
    ("fill-mask", {"inputs": ["a [MASK]"]}, ["a [MASK]"], {}, "pipeline"),
    ("question-answering", QA_SEED, [QA_SEED["input_data"]], {}, "catalog"),
    ("qa", {"input_data": {"question": ["q1", "q2"], "context": "c"}},
     [{"question": "q1", "context": "c"}, {"question": "q2", "context": "c"}], {}, "catalog"),
    ("question-answering", {"input_data": {"question": "q", "context": "c"}, "parameters": {"return_full": True}},
     [{"question": "q", "context": "c"}], {}, "catalog-full"),
    ("question-answering", {"input_data": [{"question": "q", "context": "c"}]},
     [{"question": "q", "context": "c"}], {}, "catalog"),
    ("question-answering", {"question": "q", "context": "c", "parameters": {"top_k": 2}},
     [{"question": "q", "context": "c"}], {"top_k": 2}, "pipeline-single"),
    ("question-answering", {"inputs": [{"question": "q", "context": "c"}]}, [{"question": "q", "context": "c"}], {},
     "pipeline"),
    ("text-classification", {"input_data": ["a", {"text": "b", "text_pair": "c"}]},
     ["a", {"text": "b", "text_pair": "c"}], {}, "catalog"),
    ("text-classification", {"inputs": "a", "parameters": {"top_k": None}}, ["a"], {"top_k": None, "legacy": False},
     "pipeline-single"),
    ("text-classification", {"input_data": {"input_string": ["a"]}}, ["a"], {}, "catalog"),
    ("token-classification", {"input_data": ["a", "b"], "parameters": {"aggregation_strategy": "simple"}},
     ["a", "b"], {"aggregation_strategy": "simple"}, "catalog"),
    ("ner", {"inputs": "a"}, ["a"], {}, "pipeline-single"),
])
def test_parse_request(task, body, inputs, params, shape):
    assert parse_request(task, body) == (inputs, params, shape)


@pytest.mark.parametrize("task, body, field", [
    ("fill-mask", [], "body"),
    ("fill-mask", {}, "body"),
    ("fill-mask", {"inputs": {"input_string": []}}, "inputs.input_string"),
    ("fill-mask", {"inputs": {"input_string": ["a", 3]}}, "inputs.input_string.1"),
    ("fill-mask", {"input_data": ["a", 3]}, "input_data.1"),
    ("fill-mask", {"inputs": "a", "parameters": {"top_k": True}}, "parameters.top_k"),
    ("question-answering", {"input_data": {"question": ["a"], "context": ["b", "c"]}}, "input_data.question"),
    ("question-answering", {"question": "q"}, "context"),
    ("question-answering", {"input_data": {"question": "q", "context": "c"}, "parameters": {"max_answer_len": 10**12}},
     "parameters.max_answer_len"),
    ("text-classification", {"inputs": {"text": "a", "text_pair": 1}}, "inputs.text_pair"),
    ("token-classification", {"inputs": "a", "parameters": {"window": 10**40}}, "parameters.window"),
])
def test_parse_request_errors_name_the_field(task, body, field):
    with pytest.raises(InputError) as e:
        parse_request(task, body)
    assert e.value.field == field


def test_parse_request_pipeline_only():
    with pytest.raises(InputError):
        parse_request("question-answering", QA_SEED, pipeline_only=True)
    assert parse_request("fill-mask", {"inputs": {"input_string": ["a"]}}, pipeline_only=False)[2] == "catalog"


def test_format_response():
    a = {"score": 0.5, "start": 0, "end": 4, "answer": "John"}
    b = {"score": 0.25, "start": 5, "end": 7, "answer": "is"}
    assert format_response("qa", [a], "catalog") == ["John"]
    assert format_response("qa", [[a, b]], "catalog") == [["John", "is"]]
    assert format_response("qa", [a, b], "catalog-full") == [a, b]
    assert format_response("qa", [a], "pipeline-single") == a
    assert format_response("qa", [a, b], "pipeline") == [a, b]
    tok = [{"score": 0.5, "token": 1, "token_str": "x", "sequence": "a x"}]
    assert format_response("fill-mask", [tok, tok], "catalog") == [tok, tok]
    assert format_response("fill-mask", [tok], "pipeline-single") == tok
    assert format_response("fill-mask", [tok], "pipeline") == tok  # the pipeline unwraps a one-item list
    label = {"label": "joy", "score": 0.9}
    assert format_response("text-classification", [label], "pipeline-single", {}) == [label]
    assert format_response("text-classification", [[label]], "pipeline-single", {"top_k": 1, "legacy": False}) == [label]
    assert format_response("text-classification", [label, label], "catalog") == [label, label]
    np = pytest.importorskip("numpy")
    entity = {"entity": "B-PER", "score": np.float32(0.5), "index": np.int64(1), "word": "x", "start": 0, "end": 1}
    out = format_response("token-classification", [[entity]], "catalog")
    assert json.dumps(out) and type(out[0][0]["score"]) is float and type(out[0][0]["index"]) is int
    assert format_response("ner", [[entity]], "pipeline-single") == [entity]
