"""The asynchronous micro-batcher: concurrent requests -> merged `task.run` calls -> results per request.

Requests wait in one queue. A collector coroutine takes the oldest request and every queued
request with the same parameters, until a token budget or a batch size is reached or the oldest
has waited `max_wait_s`; requests whose client has gone or whose deadline has passed are dropped
there, before they cost compute. One model thread runs the merged inputs through `run` (the
event loop never runs the model) in pieces of at most `max_batch_tokens`, one piece per turn:
batches in progress take turns, and a batch formed while another is running goes next, so a
request waits for at most the piece that was running when it was taken, not for a long
request's whole run. Before each piece the inputs of requests that timed out or left are
dropped, and nothing more runs once the server aborts. Each request's results are turned into
its response body (`finish`) on the model thread too, so the event loop never renders a large
answer. A request with bad input fails alone: its piece is retried without it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..errors import InputError
from .metrics import ServeMetrics
from .model_thread import ModelThread

log = logging.getLogger("distilkit.serve")

RunFn = Callable[[list, dict], list]  # (inputs, params) -> one result per input, in order
CheckFn = Callable[[list, dict], None]  # raises InputError for inputs `RunFn` would refuse
FinishFn = Callable[[list], Any]  # one request's results -> what `submit` returns (its response body)
# How often the collector asks whether the clients of a running batch are still there.
_WATCH_S = 0.05
_NOT_RUN = object()  # the result slot of an input its piece skipped


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


class ClientGone(Exception):
    """The client disconnected before its request reached the model."""


class ShuttingDown(Exception):
    """The batcher was closed with the request still queued."""


@dataclass(eq=False)
class _Request:
    inputs: list
    params: dict
    key: str  # requests merge only with requests of the same parameters
    costs: list[int]  # estimated tokens per input
    future: asyncio.Future
    enqueued: float
    deadline: float | None = None  # time.monotonic() past which nobody waits for the answer
    is_disconnected: Callable[[], Awaitable[bool]] | None = None
    finish: FinishFn | None = None
    abandoned: bool = False  # timed out, cancelled or disconnected: read by the model thread

    @property
    def cost(self) -> int:
        return sum(self.costs)

    def wanted(self) -> bool:
        return not self.abandoned and (self.deadline is None or time.monotonic() < self.deadline)


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    sizes: collections.Counter = field(default_factory=collections.Counter)


@dataclass(eq=False)
class _Running:
    """A batch on its way through the model, one piece a turn."""
    batch: list[_Request]
    pieces: list[list[tuple[int, int]]]  # (request, input) positions
    results: list[list]
    failed: dict[int, BaseException] = field(default_factory=dict)
    done: int = 0  # pieces run or skipped
    seconds: float = 0.0  # on the model thread


def estimate_tokens(inputs: list) -> int:
    """Tokens a list of inputs will take, from their length in characters (about 4 per token)."""
    total = 0
    for x in inputs:
        if isinstance(x, dict):
            total += sum(len(v) for v in x.values() if isinstance(v, str)) // 4 + 3
        else:
            total += len(x) // 4 + 2 if isinstance(x, str) else 2
    return max(total, 1)


class MicroBatcher:
    def __init__(self, run: RunFn, *, max_batch_tokens: int = 8192, max_batch_size: int = 64,
                 max_wait_s: float = 0.005, max_queue: int = 256, check: CheckFn | None = None,
                 metrics: ServeMetrics | None = None):
        if max_batch_tokens < 1 or max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_tokens, max_batch_size and max_queue must be >= 1, max_wait_s >= 0")
        self.run, self.check = run, check
        self.max_batch_tokens, self.max_batch_size = max_batch_tokens, max_batch_size
        self.max_wait_s, self.max_queue = max_wait_s, max_queue
        self.metrics = metrics or ServeMetrics()
        self.stats = BatchStats()
        self._pending: collections.deque[_Request] = collections.deque()
        self._active: collections.deque[_Running] = collections.deque()  # batches taking turns
        self._wake: asyncio.Event | None = None
        self._collector: asyncio.Task | None = None
        self._thread = ModelThread()
        self._closed = False
        self._aborted = False  # read by the model thread between pieces

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._collector = asyncio.create_task(self._collect(), name="distilkit-batcher")

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the model thread (warm-up), outside the queue."""
        return await self._thread.call(fn, *args)

    def abort(self) -> None:
        """The grace period is over: take no more requests, fail the queued ones with
        ShuttingDown, and let the running batch stop at its next piece (its requests fail too)."""
        self._closed = self._aborted = True
        waiting = list(self._pending) + [r for running in self._active for r in running.batch]
        self._pending.clear()
        for r in waiting:
            if not r.future.done():
                r.future.set_exception(ShuttingDown())
        self.metrics.queue_depth.set(0)

    async def close(self) -> None:
        """Stop taking requests and fail those still queued; a running piece is not interrupted."""
        self._closed = True
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
        self.abort()
        self._thread.stop()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the model thread to end; True when it has."""
        return self._thread.join(timeout)

    @property
    def depth(self) -> int:
        """Requests waiting: queued, or in a batch waiting for its turn (not the one running)."""
        return len(self._pending) + sum(len(running.batch) for running in list(self._active)[1:])

    # ------------------------------------------------------------------ requests
    async def submit(self, inputs: list, params: dict, *, timeout: float | None = None,
                     is_disconnected: Callable[[], Awaitable[bool]] | None = None,
                     costs: list[int] | None = None, finish: FinishFn | None = None) -> Any:
        """Queue one request and wait for its results (one per input), or for `finish(results)`,
        which runs on the model thread. `costs`: estimated tokens per input (default: from the
        characters).

        Raises QueueFull, ShuttingDown, ClientGone, TimeoutError (the request's remaining work is
        then skipped), InputError, or whatever `run` raised for this request.
        """
        if self._closed or self._wake is None:
            raise ShuttingDown()
        if self.depth >= self.max_queue:
            self.metrics.dropped.inc(reason="queue_full")
            raise QueueFull()
        loop = asyncio.get_running_loop()
        costs = list(costs) if costs is not None else [estimate_tokens([x]) for x in inputs]
        request = _Request(list(inputs), dict(params), json.dumps(params, sort_keys=True, default=str), costs,
                           loop.create_future(), loop.time(),
                           time.monotonic() + timeout if timeout is not None else None, is_disconnected, finish)
        self._pending.append(request)
        self.metrics.queue_depth.set(self.depth)
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), timeout)
        except (TimeoutError, asyncio.CancelledError) as e:
            # Nobody waits for it any more: the collector and the model thread skip it.
            request.abandoned = True
            request.future.cancel()
            if request in self._pending:
                self._pending.remove(request)
                self.metrics.queue_depth.set(self.depth)
            if isinstance(e, TimeoutError):
                self.metrics.dropped.inc(reason="timeout")
            raise

    # ------------------------------------------------------------------ the collector
    async def _collect(self) -> None:
        assert self._wake is not None
        active = self._active
        while True:
            while not self._pending and not active:
                self._wake.clear()
                await self._wake.wait()
            if self._pending:
                # Wait for company only when the model would otherwise be idle.
                batch = await self._live(await self._next_batch(wait=not active))
                self.metrics.queue_depth.set(self.depth)
                if batch:
                    self._admit(batch)
            if not active:
                continue
            running = active[0]
            step = asyncio.wrap_future(self._thread.submit(self._step, running))
            outcomes = await self._watch(step, running.batch)
            if outcomes is None:  # more pieces: the next batch takes its turn
                active.rotate(-1)
                continue
            active.popleft()
            self.metrics.batch_seconds.observe(running.seconds)
            for r, (ok, value) in zip(running.batch, outcomes):
                if r.future.done():  # timed out or left while running: nobody is waiting
                    continue
                if ok:
                    self.metrics.inputs.inc(len(r.inputs))
                    r.future.set_result(value)
                else:
                    r.future.set_exception(value)

    async def _next_batch(self, wait: bool) -> list[_Request]:
        """The next batch to run; [] while it may still grow and the model has other work."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        first = self._pending[0]
        deadline = first.enqueued + self.max_wait_s
        if not wait:
            return self._take(first.key) if self._full(first.key) or loop.time() >= deadline else []
        while not self._full(first.key) and loop.time() < deadline:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
            except TimeoutError:
                break
        return self._take(first.key)

    def _admit(self, batch: list[_Request]) -> None:
        n_inputs = sum(len(r.inputs) for r in batch)
        self.metrics.batch_requests.observe(len(batch))
        self.metrics.batch_inputs.observe(n_inputs)
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.sizes[len(batch)] += 1
        # A new batch goes first: what it waits for is bounded by the piece just run.
        self._active.appendleft(_Running(batch, list(self._pieces(batch)), [[_NOT_RUN] * len(r.inputs) for r in batch]))

    async def _watch(self, running: asyncio.Future, batch: list[_Request]) -> Any:
        """Wait for a running piece, marking the requests whose client leaves meanwhile, so that
        the model thread skips their remaining pieces."""
        while True:
            done, _ = await asyncio.wait({running}, timeout=_WATCH_S)
            if done:
                return running.result()
            for r in batch:
                if not r.abandoned and r.is_disconnected is not None and await r.is_disconnected():
                    r.abandoned = True
                    self.metrics.dropped.inc(reason="disconnected")
                    if not r.future.done():
                        r.future.set_exception(ClientGone())

    def _full(self, key: str) -> bool:
        tokens = size = 0
        for r in self._pending:
            if r.key == key and not r.future.done():
                tokens += r.cost
                size += len(r.inputs)
                if tokens >= self.max_batch_tokens or size >= self.max_batch_size:
                    return True
        return False

    def _take(self, key: str) -> list[_Request]:
        """The oldest request and the next ones with the same parameters that fit the budget."""
        batch: list[_Request] = []
        tokens = size = 0
        keep: collections.deque[_Request] = collections.deque()
        full = False
        while self._pending:
            r = self._pending.popleft()
            if r.future.done():
                continue
            fits = not batch or (tokens + r.cost <= self.max_batch_tokens and size + len(r.inputs) <= self.max_batch_size)
            if r.key == key and not full and fits:
                batch.append(r)
                tokens += r.cost
                size += len(r.inputs)
            else:
                full = full or r.key == key  # keep FIFO order among requests that could merge
                keep.append(r)
        self._pending = keep
        return batch

    async def _live(self, batch: list[_Request]) -> list[_Request]:
        live = []
        for r in batch:
            if r.future.done() or not r.wanted():
                continue
            if r.is_disconnected is not None and await r.is_disconnected():
                self.metrics.dropped.inc(reason="disconnected")
                r.future.set_exception(ClientGone())
                continue
            live.append(r)
        return live

    # ------------------------------------------------------------------ the model thread
    def _step(self, running: _Running) -> list[tuple[bool, Any]] | None:
        """Run the batch's next piece; when it was the last (or the server aborted), (ok, response
        or exception) per request. Runs on the model thread."""
        batch, results, failed = running.batch, running.results, running.failed
        start = time.perf_counter()
        if not self._aborted and running.done < len(running.pieces):
            piece = running.pieces[running.done]
            running.done += 1
            live = [(ri, xi) for ri, xi in piece if ri not in failed and batch[ri].wanted()]
            self.metrics.skipped_inputs.inc(len(piece) - len(live))
            if live:
                self._run_piece(batch[0].params, batch, live, results, failed)
            if running.done < len(running.pieces):
                running.seconds += time.perf_counter() - start
                return None
        outcomes: list[tuple[bool, Any]] = []
        for ri, r in enumerate(batch):
            if ri in failed:
                outcomes.append((False, failed[ri]))
            elif any(x is _NOT_RUN for x in results[ri]):  # skipped: aborted, timed out or gone
                outcomes.append((False, ShuttingDown() if self._aborted else TimeoutError()))
            else:
                try:
                    outcomes.append((True, r.finish(results[ri]) if r.finish is not None else results[ri]))
                except Exception as e:  # noqa: BLE001 - reported to that request alone
                    log.exception("rendering the response failed")
                    outcomes.append((False, e))
        running.seconds += time.perf_counter() - start
        return outcomes

    def _pieces(self, batch: list[_Request]):
        """(request, input) positions in order, cut into runs of at most max_batch_tokens
        (a single input over it is a piece alone)."""
        piece: list[tuple[int, int]] = []
        tokens = 0
        for ri, r in enumerate(batch):
            for xi, cost in enumerate(r.costs):
                if piece and tokens + cost > self.max_batch_tokens:
                    yield piece
                    piece, tokens = [], 0
                piece.append((ri, xi))
                tokens += cost
        if piece:
            yield piece

    def _run_piece(self, params: dict, batch: list[_Request], live: list[tuple[int, int]], results: list[list],
                   failed: dict[int, BaseException]) -> None:
        try:
            self._run_into(params, batch, live, results)
            return
        except Exception as e:  # noqa: BLE001 - isolate below, every error is still reported
            owners = list(dict.fromkeys(ri for ri, _ in live))
            if len(owners) == 1:
                if not isinstance(e, InputError):
                    log.exception("scoring failed")
                failed[owners[0]] = e
                return
        # One request spoiled the merged call: find the culprits cheaply, run the rest together,
        # and only if that fails too run each request alone.
        rest = []
        for ri in owners:
            mine = [batch[ri].inputs[xi] for r2, xi in live if r2 == ri]
            if self.check is not None:
                try:
                    self.check(mine, params)
                except InputError as e:
                    failed[ri] = e
                    continue
            rest.append(ri)
        if 0 < len(rest) < len(owners):
            try:
                self._run_into(params, batch, [(ri, xi) for ri, xi in live if ri in rest], results)
                return
            except Exception:  # noqa: BLE001 - fall through to one call per request
                pass
        for ri in rest:
            try:
                self._run_into(params, batch, [(r2, xi) for r2, xi in live if r2 == ri], results)
            except Exception as e:  # noqa: BLE001 - reported to that request alone
                if not isinstance(e, InputError):
                    log.exception("scoring failed")
                failed[ri] = e

    def _run_into(self, params: dict, batch: list[_Request], positions: list[tuple[int, int]],
                  results: list[list]) -> None:
        merged = [batch[ri].inputs[xi] for ri, xi in positions]
        out = self.run(merged, params)
        if len(out) != len(merged):
            raise RuntimeError(f"run returned {len(out)} results for {len(merged)} inputs")
        for (ri, xi), value in zip(positions, out):
            results[ri][xi] = value
