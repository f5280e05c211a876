"""Connection hygiene that uvicorn has no setting for, on its httptools protocol.

- A header timeout: a connection must finish sending a request's headers within
  `header_timeout_s` of opening (or of its previous response), else it is closed. uvicorn
  times out only idle keep-alive connections, so sockets that send nothing, or headers one byte
  a second, were held for ever.
- A connection limit that answers JSON: over `max_connections` open connections a request gets
  a 503 `{"error_type": "too_many_connections"}` with Retry-After and the connection is closed
  (uvicorn's `limit_concurrency` does the same count but answers plain text).
- A full queue refuses a scoring POST as soon as its headers are in, with bytes written here:
  no ASGI task, no middleware stack (FastAPI's, Starlette's, ours), no access-log line (the
  metrics count it), and the body is skipped as it arrives. Under a retry storm every
  refusal's time is taken from the model (`benchmarks/serve_load.py --storm`).
- Malformed HTTP gets a JSON 400 body instead of uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


def error_bytes(status: int, error_type: str, message: str, extra_headers: tuple[tuple[bytes, bytes], ...] = ()
                ) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"error": message, "error_type": error_type, "field": None}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *extra_headers]
    return headers, body


def make_protocol(header_timeout_s: float, max_connections: int | None, state: Any = None) -> type:
    """An HttpToolsProtocol class with these limits (uvicorn.Config(http=...) takes a class).
    state: the app's serving state, whose `queue_gate` (once the app has built it) says which
    requests the queue has no room for."""

    async def too_many_connections(scope: Any, receive: Any, send: Any) -> None:
        headers, body = error_bytes(503, "too_many_connections",
                                    f"more than {max_connections} open connections; retry shortly",
                                    ((b"retry-after", b"1"),))
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    class Answered:
        """Stands for the request cycle of a request answered here: the parser skips its body."""
        response_complete = True
        message_event = asyncio.Event()  # set by uvicorn when the connection goes; nobody waits on it

    answered = Answered()

    class Protocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            self._disarm()
            gate = getattr(state, "queue_gate", None)
            if max_connections is None or len(self.connections) <= max_connections:
                idle = self.cycle is None or self.cycle.response_complete  # else pipelined: answer in order
                if idle and gate is not None and gate.refuses(self.parser.get_method(), self.url):
                    return self._refuse(gate)
                return super().on_headers_complete()
            # uvicorn picks the app inside on_headers_complete: lend it ours for this request.
            app, self.app = self.app, too_many_connections
            try:
                super().on_headers_complete()
            finally:
                self.app = app

        def _refuse(self, gate) -> None:
            # A client that waits for "100 Continue" may never send the body the parser would skip.
            keep_alive = (self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
                          and not self.expect_100_continue)
            self.cycle = answered
            self._write(503, [*gate.start["headers"], *([] if keep_alive else [(b"connection", b"close")])],
                        gate.body["body"])
            gate.count_refusal(self.url.partition(b"?")[0].decode("ascii"))
            if not keep_alive:
                self.transport.close()
            self.on_response_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's headers are timed too

        def send_400_response(self, msg: str) -> None:
            self._write(400, *error_bytes(400, "invalid_http", msg))
            self.transport.close()

        def _write(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
            """A whole response, written straight to the socket (no ASGI cycle)."""
            content = [STATUS_LINE[status]]
            for name, value in [*self.server_state.default_headers, *headers]:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend([b"\r\n", body])
            self.transport.write(b"".join(content))

    return Protocol
