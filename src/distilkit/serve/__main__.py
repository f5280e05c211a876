"""`python -m distilkit.serve` / `distilkit serve`: load the model once, then serve it on uvicorn.

SIGTERM (or Ctrl-C) stops accepting connections, lets in-flight requests finish (up to
--graceful-timeout-s; past it each gets 503 `shutting_down` and the model thread stops at its
next piece of work) and exits with status 0. `--port 0` binds a free port and logs it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from ..config import MODES
from .app import ServeConfig

ENV_API_KEY = "DISTILKIT_API_KEY"


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, except None: those flags say in their help what they fall back on."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser(prog: str = "distilkit serve") -> argparse.ArgumentParser:
    d = ServeConfig()
    p = argparse.ArgumentParser(prog=prog, description="Serve a distilkit task over HTTP (FastAPI on uvicorn).",
                                formatter_class=_DefaultsHelp)
    p.add_argument("--model", default=None,
                   help="local directory or hub id (default: $DISTILKIT_MODEL, else the task's default checkpoint)")
    p.add_argument("--task", required=True,
                   help="fill-mask | question-answering | text-classification | token-classification | "
                        "feature-extraction | sentence-embedding | zero-shot-classification | text-ranking")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--mode", default=d.mode, choices=MODES,
                   help="run mode (an exported model: fp32 or int8, on ONNX Runtime)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the model (default: torch's or ONNX Runtime's choice)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on the scoring routes (default: ${ENV_API_KEY}; "
                        "prefer the variable: a flag shows in the process list)")
    p.add_argument("--max-batch-tokens", type=int, default=d.max_batch_tokens,
                   help="estimated tokens merged into one model call (default: the task's forward-pass budget, "
                        "1024 on CPU, 2048 in bf16)")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                   help="inputs merged into one model call; 1 turns dynamic batching off")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="how long the oldest queued request waits for others to join its batch")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="larger bodies get 413")
    p.add_argument("--max-inputs", type=int, default=d.max_inputs, help="inputs per request; more get 422")
    p.add_argument("--max-text-chars", type=int, default=d.max_text_chars,
                   help="characters per text (question, context, text pair); longer get 422")
    p.add_argument("--max-request-tokens", type=int, default=d.max_request_tokens,
                   help="compute budget: estimated tokens one request may run through the model (windows "
                        "included); more get 422")
    p.add_argument("--max-response-items", type=int, default=d.max_response_items,
                   help="compute budget: results in one answer (fill-mask: masks x top_k; answers, labels, "
                        "entities); more get 422")
    p.add_argument("--max-response-bytes", type=int, default=d.max_response_bytes,
                   help="compute budget: estimated size of one JSON answer; larger get 422")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="requests waiting for the model; more get 503 with Retry-After")
    p.add_argument("--timeout-s", type=float, default=d.timeout_s, help="per-request deadline; past it 504")
    p.add_argument("--graceful-timeout-s", type=float, default=d.graceful_timeout_s,
                   help="on SIGTERM, how long in-flight requests may take to finish")
    p.add_argument("--header-timeout-s", type=float, default=d.header_timeout_s,
                   help="a connection must send a request's headers within this (of opening, or of its previous "
                        "answer), else it is closed")
    p.add_argument("--keep-alive-s", type=float, default=d.keep_alive_s,
                   help="idle keep-alive connections are closed after this (uvicorn's timeout_keep_alive)")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help="open connections; a request over it gets 503 too_many_connections")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    return p


SWITCH_INTERVAL_S = "0.0005"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The model thread gives the GIL up around every torch operation and waits for it back; while
    # the event loop is busy (a retry storm) each wait lasts the switch interval, 5 ms by default.
    sys.setswitchinterval(float(os.environ.get("DISTILKIT_SWITCH_INTERVAL_S", SWITCH_INTERVAL_S)))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ServeConfig(
            task=args.task, model=args.model, mode=args.mode, threads=args.threads,
            api_key=args.api_key or os.environ.get(ENV_API_KEY) or None,
            max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
            max_body_bytes=args.max_body_bytes, max_inputs=args.max_inputs, max_text_chars=args.max_text_chars,
            max_request_tokens=args.max_request_tokens, max_response_items=args.max_response_items,
            max_response_bytes=args.max_response_bytes, max_queue=args.max_queue, timeout_s=args.timeout_s,
            graceful_timeout_s=args.graceful_timeout_s, header_timeout_s=args.header_timeout_s,
            keep_alive_s=args.keep_alive_s, max_connections=args.max_connections)
    except ValueError as e:
        print(f"distilkit serve: {e}", file=sys.stderr)
        return 2

    # The model thread's idle OpenMP workers would otherwise spin on the cores the event loop needs
    # (measured: 4x the throughput of a small model under load). Set the variable to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import uvicorn

    from ..pipelines import pipeline
    from .app import create_app
    from .protocol import make_protocol

    log = logging.getLogger("distilkit.serve")
    log.info("loading %s for %s", config.model or "the default model", config.task)
    try:
        # Loaded before the port opens: a bad --model fails here, with its reason, not behind /ready.
        task = pipeline(config.task, model=config.model, mode=config.mode, threads=config.threads)
    except Exception as e:  # noqa: BLE001 - the command's boundary: say why and exit non-zero
        print(f"distilkit serve: cannot load {config.model or 'the default model'} for {config.task}: "
              f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    app = create_app(config, task)
    state = app.state.serve

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not self.should_exit:  # /ready turns 503 now; past the grace period, everything in flight 503s
                state.begin_drain(config.graceful_timeout_s)
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None):
            await super().startup(sockets)
            for listener in self.servers:  # the bound port, for --port 0
                for sock in listener.sockets:
                    host, port = sock.getsockname()[:2]
                    log.info("serving %s on http://%s:%d (API key %s)", config.task, host, port,
                             "required" if config.api_key else "off")

    server = Server(uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, access_log=not args.no_access_log,
        http=make_protocol(config.header_timeout_s, config.max_connections, state),
        timeout_keep_alive=config.keep_alive_s,
        # A backstop only: our own timer answers the requests in flight at the grace period first.
        timeout_graceful_shutdown=config.graceful_timeout_s + 0.5, server_header=False, lifespan="on"))
    # uvicorn re-raises the signal it stopped on once it is done; a no-op handler makes a graceful
    # stop end with status 0 instead of "killed by SIGTERM".
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    code = 0 if server.started else 1
    if state.batcher is not None and not state.batcher.join(0.5):
        # Still inside a forward pass that was running when the grace period ended: its answer is
        # no longer wanted, and waiting for it would outlive the grace period.
        log.warning("exiting while the model thread finishes its last piece of work")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
