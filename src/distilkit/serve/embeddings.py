"""The embedding and reranking APIs people already call: Text Embeddings Inference's `POST /embed`
and `POST /rerank`, and OpenAI's `POST /v1/embeddings` (its request, its answer with `usage`, its
error body). Each route only translates bodies: the same handler as `/score` does auth, limits,
batching and metrics, and the same task object computes."""

from __future__ import annotations

import base64
import re
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from ..schemas import ErrorBody
from ..schemas import _validate as validate
from ..schemas_embed import RankedText, Text
from .app import ApiError

_TEI = "Text Embeddings Inference"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EmbedRequest(_Strict):
    """TEI's /embed body."""

    inputs: Text | Annotated[list[Text], Field(min_length=1)]
    normalize: bool = Field(True, description="Unit-length vectors.")
    truncate: bool = Field(False, description="Cut texts over the model's limit instead of refusing them.")
    truncation_direction: Literal["Right", "right"] = Field("Right", description="Only Right: the end is cut.")
    prompt_name: None = Field(None, description="Not supported: prompts are not configured.")
    dimensions: int | None = Field(None, description="Must be the model's width if given.")


class RerankRequest(_Strict):
    """TEI's /rerank body."""

    query: Text
    texts: Annotated[list[Text], Field(min_length=1)]
    raw_scores: bool = Field(False, description="Logits instead of sigmoid scores.")
    return_text: bool = Field(False, description="Include each text in the answer.")
    truncate: bool = Field(False, description="Cut pairs over the model's limit instead of refusing them.")
    truncation_direction: Literal["Right", "right"] = "Right"


class OpenAIEmbeddingRequest(_Strict):
    """OpenAI's embeddings body. Token-id inputs are refused: send text."""

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


def add_routes(app: FastAPI, state: Any, handle) -> set[str]:
    """The routes of the served task (sentence-embedding: /embed and /v1/embeddings; text-ranking:
    /rerank); returns their paths, for the metrics."""
    task = state.config.task
    if task == "sentence-embedding":
        _embedding_routes(app, state, handle)
        return {"/embed", "/v1/embeddings"}
    if task == "text-ranking":
        _rerank_route(app, handle)
        return {"/rerank"}
    return set()


def _body(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the request body must be a JSON object", "body")
    try:
        return validate(model, body)  # the catalog's validation: the deepest error, its field named
    except InputError as e:
        raise ApiError(422, "invalid_request", str(e), e.field) from None


def _check_dimensions(dimensions: int | None, state: Any, field: str) -> None:
    dim = state.task.model.cfg.dim
    if dimensions is not None and dimensions != dim:
        raise ApiError(422, "invalid_parameter", f"{field} must be {dim} (this model's width), got {dimensions}",
                       field)


def _embedding_routes(app: FastAPI, state: Any, handle) -> None:
    @app.post("/embed", response_model=list[list[float]], tags=["scoring"], summary=f"Embed ({_TEI})",
              responses={422: {"model": ErrorBody}}, openapi_extra=_body_doc(EmbedRequest),
              description="TEI's body and answer: one vector per input (a list even for one string).")
    async def embed(request: Request):
        def parse(body):
            req = _body(EmbedRequest, body)
            _check_dimensions(req.dimensions, state, "dimensions")
            inputs = [req.inputs] if isinstance(req.inputs, str) else list(req.inputs)
            return inputs, {"normalize": req.normalize, "truncation": req.truncate}, _vectors

        return await handle(request, parse)

    @app.post("/v1/embeddings", tags=["scoring"], summary="Embeddings (OpenAI API)",
              openapi_extra=_body_doc(OpenAIEmbeddingRequest),
              description="OpenAI's embeddings request and answer (`data`, `usage`); errors in OpenAI's shape "
                          '`{"error": {"message", "type", "param", "code"}}`. Texts past the model\'s '
                          "max_seq_length are cut, as sentence-transformers cuts them.")
    async def openai_embeddings(request: Request):
        def parse(body):
            req = _body(OpenAIEmbeddingRequest, body)
            _check_dimensions(req.dimensions, state, "dimensions")
            texts = [req.input] if isinstance(req.input, str) else list(req.input)
            if not texts:
                raise ApiError(422, "invalid_request", "input is an empty list", "input")
            if any(not isinstance(t, str) for t in texts):
                raise ApiError(422, "invalid_request", "token-id inputs are not supported: send the text", "input")
            try:
                tokens = sum(state.task.count_tokens(texts))
            except InputError as e:
                raise ApiError(422, "invalid_input", str(e), e.field) from None
            b64 = req.encoding_format == "base64"
            served = req.model or (state.config.model and str(state.config.model).rstrip("/").rsplit("/", 1)[-1])

            def render(results):
                data = [{"object": "embedding", "index": i,
                         "embedding": base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() if b64
                         else np.asarray(v, dtype=np.float32).tolist()} for i, v in enumerate(results)]
                return {"object": "list", "data": data, "model": served or "distilkit",
                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

            return texts, {}, render

        try:
            return await handle(request, parse)
        except ApiError as e:
            return openai_error(e)


def _rerank_route(app: FastAPI, handle) -> None:
    @app.post("/rerank", response_model=list[RankedText], tags=["scoring"], summary=f"Rerank ({_TEI})",
              responses={422: {"model": ErrorBody}}, openapi_extra=_body_doc(RerankRequest),
              description="TEI's body and answer: `[{index, score, text?}]`, best first.")
    async def rerank(request: Request):
        def parse(body):
            req = _body(RerankRequest, body)
            params = {"return_text": req.return_text, "truncation": req.truncate}
            if req.raw_scores:
                params["activation"] = "none"
            return [{"query": req.query, "texts": list(req.texts)}], params, lambda results: results[0]

        return await handle(request, parse)


def _vectors(results: list) -> list:
    return [np.asarray(v, dtype=np.float32).tolist() for v in results]


def openai_error(e: ApiError) -> JSONResponse:
    """OpenAI's error body; its status for a bad request is 400, not 422."""
    status = 400 if e.status == 422 else e.status
    kind = "invalid_request_error" if status < 500 else "server_error"
    code = "invalid_api_key" if status == 401 else e.error_type
    param = re.sub(r"^inputs(?=\[|$)", "input", e.field) if e.field else None
    return JSONResponse({"error": {"message": e.message, "type": kind, "param": param, "code": code}}, status,
                        headers=e.headers)


def _body_doc(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}
