"""The HTTP server: a FastAPI app around one task object and the micro-batcher.

The app knows request shapes (`distilkit.schemas`), limits, auth and metrics; it knows nothing of
tensors. Every scoring route does: auth -> read a bounded body -> `parse_request` -> limits ->
queue in the batcher (which calls `task.run` on a model thread) -> `format_response`.
Errors are JSON `{"error", "error_type", "field"}`; user input never yields a 5xx.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__, schemas_embed
from ..errors import InputError
from ..schemas import RESPONSE_TYPES, ErrorBody, example_requests, format_response, parse_request, request_schema, task_name
from .batcher import ClientGone, MicroBatcher, QueueFull, ShuttingDown
from .metrics import ServeMetrics

log = logging.getLogger("distilkit.serve")

# Status for a request whose client left before the answer (nginx's convention; nobody reads it).
CLIENT_CLOSED = 499


@dataclass
class ServeConfig:
    """Everything `distilkit serve` takes; `python -m distilkit.serve --help` documents each."""

    task: str = "question-answering"
    model: str | None = None  # None: the task's default checkpoint
    mode: str = "fp32"
    threads: int | None = None
    api_key: str | None = field(default=None, repr=False)
    max_batch_tokens: int | None = None  # estimated tokens merged into one model call; None: the task's max_tokens
    max_batch_size: int = 64  # inputs merged into one model call (1: no dynamic batching)
    max_wait_ms: float = 5.0  # how long the oldest queued request waits for company
    max_body_bytes: int = 1 << 20
    max_inputs: int = 64  # inputs per request
    max_text_chars: int = 20_000  # characters per text (question, context, text pair)
    max_queue: int = 256  # requests waiting for the model before 503
    timeout_s: float = 30.0  # from arrival to answer, else 504
    graceful_timeout_s: float = 30.0  # how long SIGTERM waits for in-flight requests

    def __post_init__(self) -> None:
        self.task = task_name(self.task)
        for name in ("max_batch_tokens", "max_batch_size", "max_body_bytes", "max_inputs", "max_text_chars",
                     "max_queue"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.timeout_s <= 0 or self.graceful_timeout_s < 0:
            raise ValueError("max_wait_ms and graceful_timeout_s must be >= 0, timeout_s > 0")

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("api_key")
        return d


class ApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.error_type, self.message, self.field, self.headers = status, error_type, message, field, headers


def error_response(status: int, error_type: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type, "field": field}, status, headers=headers)


def warmup_inputs(task: Any) -> list:
    if hasattr(task, "warmup_inputs"):  # the tasks whose inputs need more than a text
        return task.warmup_inputs()
    name = task_name(task.name)
    if name == "fill-mask":
        return [f"The model is {task.tokenizer.mask_token} up."]
    if name == "question-answering":
        return [{"question": "What warms up?", "context": "The model warms up before the first request."}]
    return ["The model warms up in Paris before the first request."]


# ---------------------------------------------------------------------------------------- state
class _State:
    def __init__(self, config: ServeConfig, task: Any | None):
        self.config = config
        self.task = task
        self.metrics = ServeMetrics()
        self.batcher: MicroBatcher | None = None
        self.ready = False
        self.draining = False
        self.failure: str | None = None
        self.started = time.time()

    def require_ready(self) -> tuple[Any, MicroBatcher]:
        if self.failure is not None:
            raise ApiError(503, "not_ready", f"the model failed to load: {self.failure}")
        if not self.ready or self.batcher is None:
            raise ApiError(503, "not_ready", "the model is loading", headers={"Retry-After": "1"})
        return self.task, self.batcher


class Status(BaseModel):
    status: str
    detail: str | None = None


# ---------------------------------------------------------------------------------------- the app
def create_app(config: ServeConfig, task: Any | None = None) -> FastAPI:
    """The app for one task. `task`: an already built task object (`distilkit.pipeline(...)`);
    without it the model named by `config` is loaded in the background at startup."""
    name = config.task
    if task is not None and task_name(task.name) != name:
        raise ValueError(f"config.task is {name} but the task object is {task.name}")
    state = _State(config, task)
    pipeline_route = f"/pipeline/{name}"
    page = (resources.files("distilkit.serve") / "static" / "index.html").read_text(encoding="utf-8")

    async def load_and_warm() -> None:
        try:
            if state.task is None:
                from ..pipelines import pipeline

                state.task = await asyncio.to_thread(pipeline, name, model=config.model, mode=config.mode,
                                                     threads=config.threads)
            t = state.task
            state.batcher = MicroBatcher(
                lambda inputs, params: t.run(inputs, **params),
                check=lambda inputs, params: t.featurize(list(inputs), t.params(**params)),
                max_batch_tokens=config.max_batch_tokens or t.max_tokens, max_batch_size=config.max_batch_size,
                max_wait_s=config.max_wait_ms / 1000, max_queue=config.max_queue, metrics=state.metrics)
            await state.batcher.start()
            await state.batcher.call(lambda: t.run(warmup_inputs(t), **getattr(t, "warmup_params", {})))
            state.ready = True
            state.metrics.ready.set(1)
            log.info("model ready: task=%s model=%s", name, config.model)
        except Exception as e:  # noqa: BLE001 - reported by /ready and every scoring route
            state.failure = f"{type(e).__name__}: {e}"
            log.exception("the model failed to load")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(load_and_warm())
        if task is not None:
            await loader  # nothing to load: be ready before the first request
        yield
        state.draining = True
        loader.cancel()
        if state.batcher is not None:
            await state.batcher.close()

    app = FastAPI(
        title="distilkit",
        version=__version__,
        description=_DESCRIPTION.format(task=name, route=pipeline_route),
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.serve = state
    known_routes = {"/", "/health", "/ready", "/info", "/metrics", "/score", pipeline_route, "/docs", "/openapi.json"}
    app.add_middleware(_MetricsMiddleware, metrics=state.metrics, routes=known_routes)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(e.status, e.error_type, e.message, e.field, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, kind, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in first["loc"])
        return error_response(422, "invalid_request", f"{loc}: {first['msg']}", loc or None)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal_error", "internal server error")

    # ------------------------------------------------------------------ open routes
    @app.get("/", response_class=HTMLResponse, summary="Try-it page", tags=["ui"])
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", response_model=Status, summary="Liveness: the process answers", tags=["ops"])
    async def health():
        return {"status": "alive"}

    @app.get("/ready", response_model=Status, summary="Readiness: the model is loaded and warmed", tags=["ops"],
             responses={503: {"model": Status, "description": "Loading, draining or failed"}})
    async def ready():
        if state.failure is not None:
            return JSONResponse({"status": "failed", "detail": state.failure}, 503)
        if state.draining:
            return JSONResponse({"status": "draining", "detail": None}, 503)
        if not state.ready:
            return JSONResponse({"status": "loading", "detail": None}, 503, headers={"Retry-After": "1"})
        return {"status": "ready", "detail": None}

    @app.get("/info", summary="Model, task, limits and version", tags=["ops"])
    async def info() -> dict[str, Any]:
        t = state.task
        cfg = t.model.cfg if t is not None else None
        return {
            "version": __version__,
            "task": name,
            "model": config.model,
            "ready": state.ready,
            "family": cfg.family if cfg else None,
            "max_length": t.max_length if t is not None else None,
            "labels": [cfg.id2label[k] for k in sorted(cfg.id2label)] if cfg and cfg.id2label else None,
            "mask_token": t.tokenizer.mask_token if t is not None else None,
            "auth": config.api_key is not None,
            "routes": {"score": "/score", "pipeline": pipeline_route},
            "limits": {k: getattr(config, k) for k in ("max_body_bytes", "max_inputs", "max_text_chars", "max_queue",
                                                       "timeout_s")},
            "batching": {"max_batch_tokens": state.batcher.max_batch_tokens if state.batcher else config.max_batch_tokens,
                         "max_batch_size": config.max_batch_size, "max_wait_ms": config.max_wait_ms},
            "uptime_s": round(time.time() - state.started, 3),
        }

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics", tags=["ops"])
    async def metrics() -> Response:
        state.metrics.queue_depth.set(state.batcher.depth if state.batcher else 0)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # ------------------------------------------------------------------ scoring
    valid_params: set[str] = set()

    async def handle(request: Request, parse) -> Response:
        """Every scoring route: auth -> body -> parse(body) -> limits -> batcher -> render.
        parse(body) -> (inputs, params, render), render(results) -> the answer's JSON value."""
        _authorize(request, config.api_key)
        t, batcher = state.require_ready()
        body = await _read_json(request, config.max_body_bytes, config.timeout_s)
        inputs, params, render = parse(body)
        _check_limits(inputs, config)
        key = json.dumps(params, sort_keys=True, default=str)
        if key not in valid_params:  # validation costs ~0.2 ms; most requests repeat a few parameter sets
            try:
                t.params(**params)
            except InputError as e:
                raise ApiError(422, "invalid_parameter", str(e), _param_field(e.field)) from None
            if len(valid_params) >= 1024:
                valid_params.clear()
            valid_params.add(key)
        state.metrics.in_flight.inc()
        try:
            results = await batcher.submit(inputs, params, timeout=config.timeout_s,
                                           is_disconnected=request.is_disconnected)
        except QueueFull:
            raise ApiError(503, "queue_full", "too many requests are waiting; retry shortly",
                           headers={"Retry-After": "1"}) from None
        except ShuttingDown:
            raise ApiError(503, "shutting_down", "the server is shutting down", headers={"Retry-After": "1"}) from None
        except TimeoutError:
            raise ApiError(504, "timeout", f"no answer within {config.timeout_s:g} s") from None
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        except InputError as e:
            raise ApiError(422, "invalid_input", str(e), e.field) from None
        finally:
            state.metrics.in_flight.dec()
        return JSONResponse(render(results))

    async def score(request: Request, pipeline_only: bool) -> Response:
        def parse(body: Any):
            try:
                inputs, params, shape = parse_request(name, body, pipeline_only=pipeline_only)
            except InputError as e:
                raise ApiError(422, "invalid_request", str(e), e.field) from None
            return inputs, params, lambda results: format_response(name, results, shape, params)

        return await handle(request, parse)

    responses: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorBody, "description": "Malformed JSON"},
        401: {"model": ErrorBody, "description": "Missing or wrong API key (when the server has one)"},
        408: {"model": ErrorBody, "description": "The body did not arrive within --timeout-s"},
        413: {"model": ErrorBody, "description": "Body over --max-body-bytes"},
        422: {"model": ErrorBody, "description": "Wrong shape or type, unknown parameter, too many inputs, "
                                                 "text too long, missing mask token ... (`field` names it)"},
        503: {"model": ErrorBody, "description": "Queue full, loading or shutting down",
              "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}},
        504: {"model": ErrorBody, "description": "No answer within --timeout-s"},
    }

    @app.post("/score", response_model=RESPONSE_TYPES[name], responses=responses, tags=["scoring"],
              summary=f"Score ({name}): model-catalog or pipeline JSON",
              description=_SCORE_DOC[name])
    async def score_route(request: Request):
        return await score(request, pipeline_only=False)

    @app.post(pipeline_route, response_model=RESPONSE_TYPES[name], responses=responses, tags=["scoring"],
              summary=f"{name} in the Hugging Face pipeline shapes",
              description="The body and the answer of the transformers pipeline: "
                          "`pipeline(inputs, **parameters)`.")
    async def pipeline_route_fn(request: Request):
        return await score(request, pipeline_only=True)

    from .embeddings import add_routes  # TEI's /embed and /rerank, OpenAI's /v1/embeddings

    known_routes.update(add_routes(app, state, handle))

    # ------------------------------------------------------------------ OpenAPI: bodies from the shared schemas
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        mask = state.task.tokenizer.mask_token if state.task is not None else "[MASK]"
        examples = example_requests(name, mask or "[MASK]")
        for path, pipeline_only in (("/score", False), (pipeline_route, True)):
            schema = TypeAdapter(request_schema(name, pipeline_only)).json_schema(
                ref_template="#/components/schemas/{model}")
            components.update(schema.pop("$defs", {}))
            _tailor(components, state.task)
            chosen = {k: v for k, v in examples.items() if k == "pipeline" or not pipeline_only}
            spec["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {
                    "schema": schema,
                    "examples": {k: {"summary": f"{k} shape", "value": v} for k, v in chosen.items()},
                }},
            }
            if config.api_key is not None:
                spec["paths"][path]["post"]["security"] = [{"bearer": []}]
        if config.api_key is not None:
            components_root = spec["components"]
            components_root["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    return app


# ---------------------------------------------------------------------------------------- helpers
def _authorize(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    # compare_digest: the time taken does not tell how much of the key matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)",
                       "Authorization", headers={"WWW-Authenticate": "Bearer"})


def _tailor(components: dict[str, Any], task: Any) -> None:
    """Bounds only the loaded model knows: window lengths up to its maximum."""
    params = components.get("QuestionAnsweringParameters")
    if task is None or params is None:
        return
    for name in ("max_seq_len", "doc_stride"):
        for option in params["properties"][name].get("anyOf", []):
            if option.get("type") == "integer":
                option["maximum"] = min(option.get("maximum", task.max_length), task.max_length)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


async def _read_json(request: Request, limit: int, timeout_s: float) -> Any:
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


def _check_limits(inputs: list, config: ServeConfig) -> None:
    if len(inputs) > config.max_inputs:
        raise ApiError(422, "too_many_inputs", f"{len(inputs)} inputs, over the limit of {config.max_inputs} per request",
                       "inputs")
    for i, x in enumerate(inputs):
        texts = list(x.items()) if isinstance(x, dict) else [("", x)]
        for key, value in list(texts):
            if isinstance(value, list):  # text-ranking's texts: each one a model input
                if len(value) > config.max_inputs:
                    raise ApiError(422, "too_many_inputs", f"{len(value)} texts, over the limit of {config.max_inputs} "
                                   "per request", f"inputs[{i}].{key}")
                texts += [(f"{key}[{j}]", text) for j, text in enumerate(value)]
        for key, text in texts:
            if isinstance(text, str) and len(text) > config.max_text_chars:
                where = f"inputs[{i}]" + (f".{key}" if key else "")
                raise ApiError(422, "text_too_long",
                               f"{where} is {len(text)} characters, over the limit of {config.max_text_chars}", where)


def _param_field(field: str | None) -> str | None:
    return f"parameters.{field}" if field and not field.startswith("parameters") else field


class _MetricsMiddleware:
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


_DESCRIPTION = """distilkit serving **{task}**.

- `POST /score`: the model-catalog request shapes (`{{"input_data": ...}}`, `{{"inputs": {{"input_string": [...]}}}}`)
  and the Hugging Face pipeline JSON; answers in the shape asked.
- `POST {route}`: the Hugging Face pipeline shapes only.
- `GET /health`, `GET /ready`, `GET /info`, `GET /metrics` (Prometheus), `GET /` (try-it page).

Errors are `{{"error": ..., "error_type": ..., "field": ...}}`.
"""

_SCORE_DOC = {
    "fill-mask": 'Catalog: `{"inputs": {"input_string": ["Paris is the [MASK] of France."]}, "parameters": {"top_k": 2}}` '
                 '(or `"input_data"`) -> one list of `{score, token, token_str, sequence}` per input (a list of such '
                 'lists for an input with several masks).',
    "question-answering": 'Catalog: `{"input_data": {"question": "What\'s my name?", "context": "My name is John"}}` -> '
                          '`["John"]`; lists of questions and contexts -> one answer per pair (a list of answers per '
                          'pair with top_k > 1). `"parameters": {"return_full": true}` answers with '
                          '`{score, start, end, answer}` objects instead.',
    "text-classification": 'Catalog: `{"input_data": ["I love it", {"text": "a", "text_pair": "b"}]}` -> one '
                           '`{label, score}` per input (a sorted list per input when `top_k` is given).',
    "token-classification": 'Catalog: `{"input_data": ["My name is Wolfgang"]}` -> one list of entities per input.',
    **{task: spec["doc"] for task, spec in schemas_embed.TASKS.items()},
}
