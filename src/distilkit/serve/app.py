"""The HTTP server: a FastAPI app around one task object and the micro-batcher.

The app knows request shapes (`distilkit.schemas`), limits, auth and metrics; it knows nothing of
tensors. Every scoring route does (`admission.py`): auth -> JSON content type -> room in the
queue -> read a bounded body -> `parse_request` -> limits -> the compute budget (`task.cost`)
-> queue in the batcher, which runs `task.run` and renders the answer (`format_response` and
JSON) on the model thread, so a large answer never holds the event loop.
Errors are JSON `{"error", "error_type", "field"}`; user input never yields a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import InputError
from ..schemas import RESPONSE_TYPES, ErrorBody, format_response, parse_request, task_name
from .admission import (CLIENT_CLOSED, ApiError, GraceMiddleware, MetricsMiddleware, QueueGate, authorize,
                        check_budget, check_limits, error_body, read_json, release, require_json)
from .batcher import ClientGone, MicroBatcher, QueueFull, ShuttingDown
from .metrics import ServeMetrics
from .openapi import DESCRIPTION, SCORE_DOC, install_docs, install_openapi

log = logging.getLogger("distilkit.serve")


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
    # The compute budget of one request (Task.cost), sized so that one request holds the model
    # for about a second with DistilBERT-base on 2 AMX CPU cores (3,000 tokens/s in fp32), while
    # every real QA paragraph of SQuAD v2.0 dev is admitted (the longest: 2,304 estimated tokens
    # with its windows; 1,024 refused 3.4% of them). A batch runs in deadline-checked pieces.
    max_request_tokens: int = 4096  # estimated tokens through the model, windows included
    max_response_items: int = 2048  # results in the answer (fill-mask: masks x top_k)
    max_response_bytes: int = 4 << 20  # estimated size of the JSON answer
    max_queue: int = 256  # requests waiting for the model before 503
    timeout_s: float = 30.0  # from arrival to answer, else 504
    graceful_timeout_s: float = 30.0  # how long SIGTERM waits for in-flight requests
    # Connections (uvicorn and serve/protocol.py).
    header_timeout_s: float = 10.0  # a connection's request headers must arrive within this
    keep_alive_s: float = 5.0  # idle keep-alive connections are closed after this
    max_connections: int = 1024  # open connections; a request over it gets 503

    def __post_init__(self) -> None:
        self.task = task_name(self.task)
        for name in ("max_batch_tokens", "max_batch_size", "max_body_bytes", "max_inputs", "max_text_chars",
                     "max_request_tokens", "max_response_items", "max_response_bytes", "max_queue", "max_connections"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.timeout_s <= 0 or self.graceful_timeout_s < 0:
            raise ValueError("max_wait_ms and graceful_timeout_s must be >= 0, timeout_s > 0")
        if self.header_timeout_s <= 0 or self.keep_alive_s <= 0:
            raise ValueError("header_timeout_s and keep_alive_s must be > 0")

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("api_key")
        d["model"] = public_model_name(self.model)
        return d


def public_model_name(model: str | None) -> str | None:
    """A hub id as given; a local directory by its name only (/info must not show the host's paths)."""
    if model is None or not Path(model).expanduser().exists():
        return model
    return Path(model).expanduser().resolve().name


def error_response(status: int, error_type: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, error_type, field), status, headers=headers)


def warmup_inputs(task: Any) -> list:
    if hasattr(task, "warmup_inputs"):  # the tasks whose inputs need more than a text
        return task.warmup_inputs()
    name = task_name(task.name)
    if name == "fill-mask":
        return [f"The model is {task.tokenizer.mask_token} up."]
    if name == "question-answering":
        return [{"question": "What warms up?", "context": "The model warms up before the first request."}]
    return ["The model warms up in Paris before the first request."]


def embedding_info(task: Any) -> dict[str, Any] | None:
    """For the tasks that answer vectors: their width and the defaults that shape them (a
    sentence-transformers folder's pooling and normalisation); None for the others."""
    if task is None or task_name(task.name) not in ("feature-extraction", "sentence-embedding"):
        return None
    p = task.params()
    return {"dimension": task.model.cfg.dim, "pooling": p.pooling, "normalize": p.normalize}


def render_json(body: Any, depth: int = 2) -> bytes:
    """JSON bytes of an answer, rendered item by item: one json.dumps of a whole 10 MB answer
    holds the GIL (so the event loop) for its whole length; small pieces let the loop in."""
    if isinstance(body, list) and depth > 0:
        return b"[" + b",".join(render_json(x, depth - 1) for x in body) + b"]"
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------------------- state
class _State:
    def __init__(self, config: ServeConfig, task: Any | None):
        self.config = config
        self.task = task
        self.metrics = ServeMetrics()
        self.batcher: MicroBatcher | None = None
        self.grace: GraceMiddleware | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = False
        self.draining = False
        self.failure: str | None = None
        self.started = time.time()
        self.admitting = 0  # scoring requests past the queue check, reading or checking their body
        self.queue_gate: QueueGate | None = None  # set when Starlette builds the middleware stack

    def require_ready(self) -> tuple[Any, MicroBatcher]:
        if self.failure is not None:
            raise ApiError(503, "not_ready", f"the model failed to load: {self.failure}")
        if not self.ready or self.batcher is None:
            raise ApiError(503, "not_ready", "the model is loading", headers={"Retry-After": "1"})
        return self.task, self.batcher

    def begin_drain(self, grace_s: float) -> None:
        """SIGTERM: /ready turns 503 now; at the end of the grace period, `abort`. Safe to call
        from a signal handler."""
        self.draining = True
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.call_later, grace_s, self.abort)

    def abort(self) -> None:
        """Every request still in flight gets 503 shutting_down; the model thread stops at its
        next piece of work."""
        if self.batcher is not None:
            self.batcher.abort()
        if self.grace is not None:
            self.grace.abort()


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
        state.loop = asyncio.get_running_loop()
        loader = asyncio.create_task(load_and_warm())
        if task is not None:
            await loader  # nothing to load: be ready before the first request
        yield
        state.draining = True
        loader.cancel()
        if state.batcher is not None:
            await state.batcher.close()

    app = FastAPI(title="distilkit", version=__version__, description=DESCRIPTION.format(task=name, route=pipeline_route),
                  lifespan=lifespan, redoc_url=None, docs_url=None)
    app.state.serve = state
    known_routes = {"/", "/health", "/ready", "/info", "/metrics", "/score", pipeline_route, "/docs", "/openapi.json"}
    # Added first, so inside the metrics: the 503 it sends at the end of the grace period is counted.
    app.add_middleware(GraceMiddleware, register=lambda m: setattr(state, "grace", m))
    scoring_routes = {"/score", pipeline_route}
    app.add_middleware(QueueGate, state=state, routes=scoring_routes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, routes=known_routes)

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

    @app.get("/health", response_model=Status, tags=["ops"], summary="Liveness: the process answers")
    async def health():
        return {"status": "alive"}

    @app.get("/ready", response_model=Status, tags=["ops"], summary="Readiness: the model is loaded and warmed",
             responses={503: {"model": Status, "description": "Loading, draining or failed"}})
    async def ready():
        if state.failure is not None:
            return JSONResponse({"status": "failed", "detail": state.failure}, 503)
        if state.draining:
            return JSONResponse({"status": "draining", "detail": None}, 503)
        if not state.ready:
            return JSONResponse({"status": "loading", "detail": None}, 503, headers={"Retry-After": "1"})
        return {"status": "ready", "detail": None}

    # HEAD answers like GET (load balancers probe with it), outside the OpenAPI document: one
    # route with both methods gives the two operations the same id.
    app.head("/health", include_in_schema=False)(health)
    app.head("/ready", include_in_schema=False)(ready)

    @app.get("/info", summary="Model, task, limits, compute budget and version", tags=["ops"])
    async def info() -> dict[str, Any]:
        t = state.task
        cfg = t.model.cfg if t is not None else None
        return {
            "version": __version__,
            "task": name,
            "model": public_model_name(config.model),
            "ready": state.ready,
            "family": cfg.family if cfg else None,
            "max_length": t.max_length if t is not None else None,
            "labels": [cfg.id2label[k] for k in sorted(cfg.id2label)] if cfg and cfg.id2label else None,
            "mask_token": t.tokenizer.mask_token if t is not None else None,
            "auth": config.api_key is not None,
            "routes": {"score": "/score", "pipeline": pipeline_route},
            "limits": {k: getattr(config, k) for k in ("max_body_bytes", "max_inputs", "max_text_chars", "max_queue",
                                                       "timeout_s")},
            "budget": {k: getattr(config, k) for k in ("max_request_tokens", "max_response_items", "max_response_bytes")},
            "connections": {k: getattr(config, k) for k in ("header_timeout_s", "keep_alive_s", "max_connections")},
            "batching": {"max_batch_tokens": state.batcher.max_batch_tokens if state.batcher else config.max_batch_tokens,
                         "max_batch_size": config.max_batch_size, "max_wait_ms": config.max_wait_ms},
            "embedding": embedding_info(t),
            "uptime_s": round(time.time() - state.started, 3),
        }

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics", tags=["ops"])
    async def metrics() -> Response:
        state.metrics.queue_depth.set(state.batcher.depth if state.batcher else 0)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # ------------------------------------------------------------------ scoring
    params_cache: dict[str, Any] = {}  # validated Params objects: most requests repeat a few parameter sets

    def task_params(t: Any, params: dict) -> Any:
        key = json.dumps(params, sort_keys=True, default=str)
        if key not in params_cache:
            try:
                p = t.params(**params)
            except InputError as e:
                raise ApiError(422, "invalid_parameter", str(e), _param_field(e.field)) from None
            if len(params_cache) >= 1024:
                params_cache.clear()
            params_cache[key] = p
        return params_cache[key]

    async def handle(request: Request, parse) -> Response:
        """Every scoring route (/score, the pipeline route, /embed, /rerank, /v1/embeddings): auth ->
        JSON -> body -> parse(body) -> limits -> budget -> the batcher, which renders on the model
        thread. parse(body) -> (inputs, params, render); render(results) -> the answer's JSON value."""
        authorize(request, config.api_key)
        require_json(request)
        t, batcher = state.require_ready()
        try:  # QueueGate admitted this request before its body was read; the slot is given back below
            body = await read_json(request, config.max_body_bytes, config.timeout_s)
            state.metrics.parsed.inc()
            inputs, params, render = parse(body)
            check_limits(inputs, config.max_inputs, config.max_text_chars)
            cost = t.cost(inputs, task_params(t, params))
            check_budget(cost, config.max_request_tokens, config.max_response_items, config.max_response_bytes)
        finally:
            release(state, request.scope)
        state.metrics.in_flight.inc()
        try:
            rendered = await batcher.submit(
                inputs, params, timeout=config.timeout_s, is_disconnected=request.is_disconnected,
                costs=list(cost.per_input), finish=lambda results: render_json(render(results)))
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
        return Response(rendered, media_type="application/json")

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
        415: {"model": ErrorBody, "description": "The body is not sent as application/json"},
        422: {"model": ErrorBody, "description": "Wrong shape or type, unknown parameter, too many inputs, text too "
                                                 "long, over the compute budget, missing mask token ... (`field` names it)"},
        503: {"model": ErrorBody, "description": "Queue full, loading or shutting down",
              "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}},
        504: {"model": ErrorBody, "description": "No answer within --timeout-s"},
    }

    @app.post("/score", response_model=RESPONSE_TYPES[name], responses=responses, tags=["scoring"],
              summary=f"Score ({name}): model-catalog or pipeline JSON", description=SCORE_DOC[name])
    async def score_route(request: Request):
        return await score(request, pipeline_only=False)

    @app.post(pipeline_route, response_model=RESPONSE_TYPES[name], responses=responses, tags=["scoring"],
              summary=f"{name} in the Hugging Face pipeline shapes",
              description="The body and the answer of the transformers pipeline: `pipeline(inputs, **parameters)`.")
    async def pipeline_route_fn(request: Request):
        return await score(request, pipeline_only=True)

    from .embeddings import add_routes  # TEI's /embed and /rerank, OpenAI's /v1/embeddings

    added = add_routes(app, state, handle)
    scoring_routes.update(added)  # the queue gate admits them too (it holds this set)
    known_routes.update(added)
    install_openapi(app, name, ["/score", pipeline_route], state, config.api_key is not None)
    install_docs(app)
    return app


def _param_field(field: str | None) -> str | None:
    return f"parameters.{field}" if field and not field.startswith("parameters") else field
