"""What a scoring request must pass before it costs work, cheapest first: the API key, a JSON
content type, room in the queue (before the body is read), a bounded body that arrives in
time, valid JSON, the per-request limits and the compute budget (`Task.cost`). Also the two
plain ASGI middlewares: request metrics, and the 503 that requests still in flight get when
the shutdown grace period ends.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Any

from starlette.requests import ClientDisconnect, Request

from ..tasks.cost import Cost
from .metrics import ServeMetrics

# Status for a request whose client left before the answer (nginx's convention; nobody reads it).
CLIENT_CLOSED = 499


class ApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.error_type, self.message, self.field, self.headers = status, error_type, message, field, headers


def error_body(message: str, error_type: str, field: str | None = None) -> dict[str, Any]:
    return {"error": message, "error_type": error_type, "field": field}


def authorize(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    # The raw header bytes: Starlette decodes headers as latin-1, so a UTF-8 key compared as text
    # could never match. compare_digest: the time taken does not tell how much of the key matched.
    raw = next((v for k, v in request.scope["headers"] if k == b"authorization"), b"")
    scheme, _, token = raw.partition(b" ")
    if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), api_key.encode("utf-8")):
        raise ApiError(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)",
                       "Authorization", headers={"WWW-Authenticate": "Bearer"})


def require_json(request: Request) -> None:
    """Only JSON bodies: a form or text/plain POST is a CORS "simple" request that any web page
    can send to a keyless server on localhost without the browser asking first."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
        raise ApiError(415, "unsupported_media_type",
                       f"send the body as JSON with Content-Type: application/json (got {kind or 'none'})",
                       "Content-Type")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: Request, limit: int, timeout_s: float) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"the body is {declared} bytes, over the limit of {limit}", "body")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):  # a client trickling its body in holds no slot forever
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, "payload_too_large", f"the body is over the limit of {limit} bytes", "body")
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the body did not arrive within {timeout_s:g} s", "body") from None
    except ClientDisconnect:
        raise ApiError(CLIENT_CLOSED, "client_closed", "the client left while sending its body") from None
    if not body.strip():
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object", "body")
    try:
        return json.loads(bytes(body), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}", "body") from None


def check_limits(inputs: list, max_inputs: int, max_text_chars: int) -> None:
    if len(inputs) > max_inputs:
        raise ApiError(422, "too_many_inputs", f"{len(inputs)} inputs, over the limit of {max_inputs} per request",
                       "inputs")
    for i, x in enumerate(inputs):
        texts = list(x.items()) if isinstance(x, dict) else [("", x)]
        for key, value in list(texts):
            if isinstance(value, list):  # text-ranking's texts: each one a model input
                if len(value) > max_inputs:
                    raise ApiError(422, "too_many_inputs", f"{len(value)} texts, over the limit of {max_inputs} "
                                   "per request", f"inputs[{i}].{key}")
                texts += [(f"{key}[{j}]", text) for j, text in enumerate(value)]
        for key, text in texts:
            if isinstance(text, str) and len(text) > max_text_chars:
                where = f"inputs[{i}]" + (f".{key}" if key else "")
                raise ApiError(422, "text_too_long",
                               f"{where} is {len(text)} characters, over the limit of {max_text_chars}", where)


def check_budget(cost: Cost, max_tokens: int, max_items: int, max_bytes: int) -> None:
    """The per-request compute budget: what one request may make the model do and answer."""
    if cost.tokens > max_tokens:
        raise ApiError(422, "over_budget",
                       f"the inputs come to about {cost.tokens} tokens for the model (windows included), over the "
                       f"limit of {max_tokens} per request (--max-request-tokens); send fewer or shorter texts",
                       "inputs")
    if cost.items > max_items:
        raise ApiError(422, "over_budget",
                       f"the answer would hold {cost.items} results, over the limit of {max_items} per request "
                       f"(--max-response-items); lower {cost.items_field} or send fewer inputs", cost.items_field)
    if cost.response_bytes > max_bytes:
        raise ApiError(422, "over_budget",
                       f"the answer would be about {cost.response_bytes} bytes, over the limit of {max_bytes} "
                       f"(--max-response-bytes); lower {cost.items_field} or send fewer inputs", cost.items_field)


# ---------------------------------------------------------------------------------------- middlewares
ADMITTED = "distilkit.admitted"  # scope key: this request holds one of the queue's admission slots


class QueueGate:
    """Admission before work: with `--max-queue` requests already waiting (queued, or reading
    and checking their bodies), a scoring POST is refused here, before routing, auth or a byte
    of its body. A refusal costs microseconds: under a retry storm the event loop (and the
    GIL the model thread needs between its operations) stays with the admitted requests.
    The route gives the slot back (`release`) once its request is queued or refused.

    `refuses` is also what the HTTP protocol asks as soon as a request's headers are in
    (`protocol.make_protocol`), so that a refusal skips the whole middleware stack; the check
    here stays for the servers that run the app on another ASGI server."""

    def __init__(self, app, state, routes: set[str]):
        self.app, self.state, self.routes = app, state, routes
        self.raw_routes = {r.encode() for r in routes}
        state.queue_gate = self
        body = json.dumps(error_body("too many requests are waiting; retry shortly", "queue_full")).encode()
        self.start = {"type": "http.response.start", "status": 503,
                      "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                  (b"content-length", str(len(body)).encode())]}
        self.body = {"type": "http.response.body", "body": body}

    def queue_full(self) -> bool:
        state = self.state
        return state.batcher is not None and state.batcher.depth + state.admitting >= state.config.max_queue

    def refuses(self, method: bytes, url: bytes) -> bool:
        """Whether a request, from its method and raw URL alone, is a scoring POST that the queue
        has no room for (a percent-encoded path is left to the check in the app)."""
        return method == b"POST" and url.partition(b"?")[0] in self.raw_routes and self.queue_full()

    def count_refusal(self, path: str) -> None:
        """For a refusal answered by the protocol, which MetricsMiddleware never sees."""
        self.state.metrics.dropped.inc(reason="queue_full")
        self.state.metrics.requests.inc(route=path, method="POST", status="503")

    async def _refuse(self, send) -> None:
        self.state.metrics.dropped.inc(reason="queue_full")
        await send(self.start)
        await send(self.body)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.routes:
            return await self.app(scope, receive, send)
        if self.queue_full():
            return await self._refuse(send)
        state = self.state
        state.admitting += 1
        scope[ADMITTED] = True
        try:
            await self.app(scope, receive, send)
        finally:
            release(state, scope)


def release(state, scope) -> None:
    if scope.pop(ADMITTED, False):
        state.admitting -= 1


class MetricsMiddleware:
    """Counts requests by route and status and times them (plain ASGI: no body buffering)."""

    def __init__(self, app, metrics: ServeMetrics, routes: set[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope["path"] if scope["path"] in self.routes else "other"
            self.metrics.requests.inc(route=route, method=scope["method"], status=str(status[0]))
            self.metrics.latency.observe(time.perf_counter() - start, route=route)


class GraceMiddleware:
    """When the shutdown grace period ends (`abort`), every request still in flight whose answer
    has not started gets the documented 503 `shutting_down` JSON with Retry-After, instead of
    the plain-text 500 uvicorn sends for the tasks it cancels."""

    def __init__(self, app, register=None):
        self.app = app
        self.tasks: set[asyncio.Task] = set()
        self.aborted = False
        if register is not None:  # Starlette builds middlewares itself: hand the instance to its owner
            register(self)

    def abort(self) -> None:
        self.aborted = True
        for task in list(self.tasks):
            task.cancel()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if not self.aborted or started:
                raise
            body = json.dumps(error_body("the server is shutting down", "shutting_down")).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                    (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.tasks.discard(task)
