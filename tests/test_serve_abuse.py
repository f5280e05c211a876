"""`distilkit serve` under abuse, over real HTTP on loopback: compute budgets, deadlines that free
the model, admission before the body is read, connection hygiene, and shutdown past the grace
period. Servers run through test_serve's launcher, where inputs containing "SLOW" hold the model
thread for $DISTILKIT_TEST_SLOW_S seconds each time a piece of work containing them runs.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from test_serve import Server, error_of, hold_model_thread, start_servers, stop_all, wait_until  # noqa: E402


@pytest.fixture(scope="module")
def fm(checkpoint):
    """Fill-mask with small limits: each input is a piece of its own (--max-batch-tokens 1),
    0.5 s per SLOW piece against a 3 s deadline; one queue slot; 1 s to send headers; 8 connections."""
    running = start_servers({"fm": (
        ("fill-mask", checkpoint("distilbert", "masked-lm", head_scale=20.0), "--max-batch-tokens", "1",
         "--timeout-s", "3", "--max-queue", "1", "--header-timeout-s", "1", "--max-connections", "8",
         "--no-access-log"), {"slow_s": 0.5})})
    yield running["fm"]
    stop_all(running.values())


def recv_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def json_of(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), raw
    return int(head[9:12]), json.loads(body)


# ---------------------------------------------------------------------------------------- budget
def test_a_budget_busting_request_is_refused_and_the_next_one_served(fm):
    parsed = fm.metric("distilkit_batch_requests_count")
    big = fm.post("/score", {"inputs": "[MASK] " * 500, "parameters": {"top_k": 1000}})
    body = error_of(big, 422, "over_budget", "parameters.top_k")
    assert "500000 results" in body["error"] and "2048" in body["error"]
    many = fm.post("/score", {"input_data": ["Paris is the [MASK] of France. " * 20] * 40})
    assert "over the limit of 4096" in error_of(many, 422, "over_budget", "inputs")["error"]
    assert fm.metric("distilkit_batch_requests_count") == parsed  # neither reached the model
    small = fm.post("/score", {"inputs": "Paris is the [MASK] of France.", "parameters": {"top_k": 2}})
    assert small.status_code == 200 and len(small.json()) == 2
    assert fm.get("/info").json()["budget"] == {"max_request_tokens": 4096, "max_response_items": 2048,
                                                 "max_response_bytes": 4 << 20}


def test_the_default_budget_admits_every_real_squad_paragraph(tmp_path, shared_data):
    """A QA endpoint must take the task's real inputs: every question of SQuAD v2.0 dev (the half in
    ../shared/data) with its paragraph, windows counted as the server counts them (the real
    distilbert-base-uncased tokenizer and 512 positions: 384-token windows, stride 128)."""
    from conftest import make_checkpoint
    from distilkit import pipeline
    from distilkit.serve.app import ServeConfig

    model = make_checkpoint(tmp_path, "distilbert", "question-answering",
                            shared_data / "tokenizers" / "distilbert-base-uncased", max_position_embeddings=512)
    tc = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**tc, "model_max_length": 512}))
    qa = pipeline("question-answering", model=model)
    assert qa.max_length == 512
    data = json.loads((shared_data / "squad" / "dev-v2.0-half.json").read_text())
    costs = [qa.cost([{"question": q["question"], "context": p["context"]}], qa.params()).tokens
             for article in data["data"] for p in article["paragraphs"] for q in p["qas"]]
    assert len(costs) > 5000 and max(costs) <= ServeConfig().max_request_tokens


# ---------------------------------------------------------------------------------------- deadlines
def test_a_timed_out_request_frees_the_model_for_the_one_behind_it(fm):
    skipped = fm.metric("distilkit_skipped_inputs_total")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        # Ten SLOW pieces (5 s of model time) against a 3 s deadline.
        long = hold_model_thread(pool, fm, {"input_data": [f"SLOW {i} [MASK]." for i in range(10)]})
        time.sleep(1.5)
        behind = fm.post("/score", {"input_data": ["Paris is the [MASK] of France."]})  # its deadline: 4.5 s
        error_of(long.result(), 504, "timeout")
    # Without pieces the long request would hold the model for 5 s and this one would time out too.
    assert behind.status_code == 200, behind.text
    # The piece running at the deadline ends; the long request's last pieces never run.
    for _ in range(50):
        if fm.metric("distilkit_skipped_inputs_total") >= skipped + 3:
            break
        time.sleep(0.1)
    assert fm.metric("distilkit_skipped_inputs_total") >= skipped + 3


# ---------------------------------------------------------------------------------------- admission
def test_a_full_queue_refuses_before_reading_the_body(fm):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = hold_model_thread(pool, fm, {"input_data": ["SLOW [MASK]."] * 4})  # 2 s of model time
        queued = pool.submit(fm.post, "/score", {"input_data": ["queued [MASK]."]})
        wait_until(lambda: fm.metric("distilkit_queue_depth") == 1, what="one queued request")
        parsed = fm.metric("distilkit_bodies_parsed_total")
        # Not JSON at all: a 503, not a 400, because the body is never read.
        r = fm.post("/score", content=b"{not json", headers={"content-type": "application/json"})
        error_of(r, 503, "queue_full")
        assert r.headers["retry-after"] == "1"
        # A body that never comes: answered at once, not after --timeout-s (408).
        with socket.create_connection(("127.0.0.1", fm.port), timeout=10) as s:
            s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 503")
        # A refusal whose body was never read leaves the connection usable (keep-alive).
        with socket.create_connection(("127.0.0.1", fm.port), timeout=10) as s:
            body = b'{"input_data": ["kept alive [MASK]."]}'
            s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert s.recv(4096).startswith(b"HTTP/1.1 503")
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            # Pipelined: two refusals, in order, then the connection closes as the last one asked.
            one = (b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            s.sendall(one + one.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n"))
            both = recv_all(s)
            assert both.count(b"HTTP/1.1 503") == 2 and both.count(b'"queue_full"') == 2, both
        # A client that waits for "100 Continue" may never send its body: refused, then closed.
        with socket.create_connection(("127.0.0.1", fm.port), timeout=10) as s:
            s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Expect: 100-continue\r\nContent-Length: 100\r\n\r\n")
            raw = recv_all(s)
            assert raw.startswith(b"HTTP/1.1 503") and b"connection: close" in raw.lower()
        # The protocol refuses from the raw URL; a percent-encoded path meets the same check in the app.
        with socket.create_connection(("127.0.0.1", fm.port), timeout=10) as s:
            s.sendall(b"POST /sc%6fre HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Connection: close\r\nContent-Length: 100\r\n\r\n")
            status, err = json_of(recv_all(s))
            assert (status, err["error_type"]) == (503, "queue_full")
        assert fm.metric("distilkit_bodies_parsed_total") == parsed
        assert fm.metric("distilkit_requests_total", route="/score", method="POST", status="503") >= 4
        assert slow.result().status_code == 200 and queued.result().status_code == 200


# ---------------------------------------------------------------------------------------- connections
def test_a_silent_socket_is_closed_after_the_header_timeout(fm):
    with socket.create_connection(("127.0.0.1", fm.port), timeout=15) as s:
        assert recv_all(s) == b""  # closed by the server (--header-timeout-s 1), not by our 15 s timeout
    with socket.create_connection(("127.0.0.1", fm.port), timeout=15) as s:
        # Headers one byte at a time: closed before they are complete.
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for ch in b"X-Slow: " + b"a" * 60:
            try:
                s.sendall(bytes([ch]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            s.settimeout(0.01)
            try:
                if s.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed
    assert fm.get("/health").status_code == 200


def test_over_the_connection_limit_is_503_json(fm):
    silent = [socket.create_connection(("127.0.0.1", fm.port)) for _ in range(8)]  # --max-connections 8
    try:
        with socket.create_connection(("127.0.0.1", fm.port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, body = json_of(recv_all(s))
        assert status == 503 and body["error_type"] == "too_many_connections"
    finally:
        for s in silent:
            s.close()
    wait_until(lambda: fm.get("/health").status_code == 200, what="room for connections again")


def test_malformed_http_is_a_json_400(fm):
    with socket.create_connection(("127.0.0.1", fm.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n")
        status, body = json_of(recv_all(s))
    assert status == 400 and body["error_type"] == "invalid_http"


def test_only_json_bodies_are_scored(fm):
    body = json.dumps({"inputs": "Paris is the [MASK] of France."})
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"content-type": kind} if kind else {}
        r = httpx.post(fm.url + "/score", content=body, headers=headers, timeout=10)
        error_of(r, 415, "unsupported_media_type", "Content-Type")
    assert fm.post("/score", content=body, headers={"content-type": "application/json; charset=utf-8"}).status_code == 200


# ---------------------------------------------------------------------------------------- shutdown
def test_sigterm_past_the_grace_period_answers_503_and_exits(checkpoint):
    server = Server("fill-mask", checkpoint("distilbert", "masked-lm"), "--graceful-timeout-s", "1",
                    slow_s=60.0).wait_ready()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = hold_model_thread(pool, server, {"inputs": "SLOW [MASK]."}, timeout=60)
            queued = pool.submit(server.post, "/score", {"inputs": "queued [MASK]."}, timeout=60)
            wait_until(lambda: server.metric("distilkit_queue_depth") == 1, what="a queued request")
            server.proc.send_signal(signal.SIGTERM)
            for future in (running, queued):
                r = future.result(timeout=30)
                error_of(r, 503, "shutting_down")
                assert r.headers["retry-after"] == "1"
        # The model thread is still asleep for a minute: the process does not wait for it.
        assert server.proc.wait(15) == 0
        assert "Traceback" not in server.log() and "Internal Server Error" not in server.log()
    finally:
        server.stop()
