"""The served OpenAPI document (request bodies from `distilkit.schemas`) and a Swagger UI page
whose assets are served by the server itself, so that `/docs` works offline.

The assets come from the `fastapi-offline` wheel (Swagger UI 5, which reads OpenAPI 3.1);
without it `/docs` answers a short page saying how to get it, and `/openapi.json` still works.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from pydantic import TypeAdapter

from .. import schemas_embed
from ..schemas import example_requests, request_schema

ASSETS = "/docs-assets"


def install_openapi(app: FastAPI, name: str, routes: list[str], state: Any, api_key: bool) -> None:
    """`app.openapi` with the task's request schemas and seed examples on each scoring route."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        mask = state.task.tokenizer.mask_token if state.task is not None else "[MASK]"
        examples = example_requests(name, mask or "[MASK]")
        for path in routes:
            pipeline_only = path != "/score"
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
            if api_key:
                spec["paths"][path]["post"]["security"] = [{"bearer": []}]
        if api_key:
            spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI) -> None:
    """GET /docs: Swagger UI from local assets (the app is built with docs_url=None)."""
    try:
        static = resources.files("fastapi_offline") / "static"
        assets_present = (static / "swagger-ui-bundle.js").is_file()
    except ModuleNotFoundError:
        assets_present = False
    if assets_present:
        from fastapi.staticfiles import StaticFiles

        app.mount(ASSETS, StaticFiles(directory=str(static)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if not assets_present:
            return HTMLResponse("<!doctype html><title>distilkit docs</title><p>The Swagger UI page needs its "
                                "assets: <code>pip install fastapi-offline</code> (in <code>distilkit[serve]</code>). "
                                'The OpenAPI document is at <a href="/openapi.json">/openapi.json</a>.</p>')
        return get_swagger_ui_html(openapi_url="openapi.json", title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css", swagger_favicon_url=f"{ASSETS}/favicon.png")


def _tailor(components: dict[str, Any], task: Any) -> None:
    """Bounds only the loaded model knows: window lengths up to its maximum."""
    params = components.get("QuestionAnsweringParameters")
    if task is None or params is None:
        return
    for name in ("max_seq_len", "doc_stride"):
        for option in params["properties"][name].get("anyOf", []):
            if option.get("type") == "integer":
                option["maximum"] = min(option.get("maximum", task.max_length), task.max_length)


DESCRIPTION = """distilkit serving **{task}**.

- `POST /score`: the model-catalog request shapes (`{{"input_data": ...}}`, `{{"inputs": {{"input_string": [...]}}}}`)
  and the Hugging Face pipeline JSON; answers in the shape asked.
- `POST {route}`: the Hugging Face pipeline shapes only.
- `GET /health`, `GET /ready`, `GET /info`, `GET /metrics` (Prometheus), `GET /` (try-it page).

Bodies are JSON (`Content-Type: application/json`). Errors are `{{"error": ..., "error_type": ..., "field": ...}}`.
`GET /info` shows the per-request limits and compute budget.
"""

SCORE_DOC = {
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
