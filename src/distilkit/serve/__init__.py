"""`distilkit serve`: a FastAPI server around one task, with dynamic batching, limits, auth,
Prometheus metrics and a try-it page. `create_app(ServeConfig(...))` builds the app;
`python -m distilkit.serve` (or `distilkit serve`) runs it on uvicorn."""

from __future__ import annotations

from .app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app", "main"]


def main(argv: list[str] | None = None) -> int:
    from .__main__ import main as _main

    return _main(argv)
