"""The asynchronous micro-batcher: concurrent requests -> merged `task.run` calls -> results per request.

Requests wait in one queue. A collector coroutine takes the oldest request and every queued
request with the same parameters, until a token budget or a batch size is reached or the oldest
has waited `max_wait_s`; requests whose client has gone or whose deadline has passed are dropped
there, before they cost compute. One worker thread runs the merged inputs through `run` (the
event loop never runs the model), and each request gets its slice of the results back.
A request with bad input fails alone: the batch is retried without it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..errors import InputError
from .metrics import ServeMetrics

log = logging.getLogger("distilkit.serve")

RunFn = Callable[[list, dict], list]  # (inputs, params) -> one result per input, in order
CheckFn = Callable[[list, dict], None]  # raises InputError for inputs `RunFn` would refuse


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
    cost: int  # estimated tokens
    future: asyncio.Future
    enqueued: float
    is_disconnected: Callable[[], Awaitable[bool]] | None = None


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    sizes: collections.Counter = field(default_factory=collections.Counter)


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
                 cost: Callable[[list], int] = estimate_tokens, metrics: ServeMetrics | None = None):
        if max_batch_tokens < 1 or max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_tokens, max_batch_size and max_queue must be >= 1, max_wait_s >= 0")
        self.run, self.check, self.cost = run, check, cost
        self.max_batch_tokens, self.max_batch_size = max_batch_tokens, max_batch_size
        self.max_wait_s, self.max_queue = max_wait_s, max_queue
        self.metrics = metrics or ServeMetrics()
        self.stats = BatchStats()
        self._pending: collections.deque[_Request] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._collector: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distilkit-model")
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._collector = asyncio.create_task(self._collect(), name="distilkit-batcher")

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the model thread (warm-up), outside the queue."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def close(self) -> None:
        """Stop taking requests; fail those still queued. In-flight batches are not interrupted."""
        self._closed = True
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
        while self._pending:
            r = self._pending.popleft()
            if not r.future.done():
                r.future.set_exception(ShuttingDown())
        self.metrics.queue_depth.set(0)
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ requests
    async def submit(self, inputs: list, params: dict, *, timeout: float | None = None,
                     is_disconnected: Callable[[], Awaitable[bool]] | None = None) -> list:
        """Queue one request and wait for its results (one per input).

        Raises QueueFull, ShuttingDown, ClientGone, TimeoutError (the request is then dropped if it
        has not reached the model), InputError, or whatever `run` raised for this request.
        """
        if self._closed or self._wake is None:
            raise ShuttingDown()
        if len(self._pending) >= self.max_queue:
            self.metrics.dropped.inc(reason="queue_full")
            raise QueueFull()
        loop = asyncio.get_running_loop()
        request = _Request(list(inputs), dict(params), json.dumps(params, sort_keys=True, default=str),
                           self.cost(inputs), loop.create_future(), loop.time(), is_disconnected)
        self._pending.append(request)
        self.metrics.queue_depth.set(len(self._pending))
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), timeout)
        except (TimeoutError, asyncio.CancelledError) as e:
            # Left the queue (or its result is no longer wanted): the collector skips done futures.
            request.future.cancel()
            if request in self._pending:
                self._pending.remove(request)
                self.metrics.queue_depth.set(len(self._pending))
            if isinstance(e, TimeoutError):
                self.metrics.dropped.inc(reason="timeout")
            raise

    # ------------------------------------------------------------------ the collector
    async def _collect(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            first = self._pending[0]
            deadline = first.enqueued + self.max_wait_s
            while not self._full(first.key) and loop.time() < deadline:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
                except TimeoutError:
                    break
            batch = await self._live(self._take(first.key))
            self.metrics.queue_depth.set(len(self._pending))
            if not batch:
                continue
            n_inputs = sum(len(r.inputs) for r in batch)
            self.metrics.batch_requests.observe(len(batch))
            self.metrics.batch_inputs.observe(n_inputs)
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.sizes[len(batch)] += 1
            start = time.perf_counter()
            outcomes = await loop.run_in_executor(self._executor, self._execute, batch[0].params, batch)
            self.metrics.batch_seconds.observe(time.perf_counter() - start)
            for r, (ok, value) in zip(batch, outcomes):
                if r.future.done():  # timed out while running: nobody is waiting
                    continue
                if ok:
                    self.metrics.inputs.inc(len(r.inputs))
                    r.future.set_result(value)
                else:
                    r.future.set_exception(value)

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
            if r.future.done():
                continue
            if r.is_disconnected is not None and await r.is_disconnected():
                self.metrics.dropped.inc(reason="disconnected")
                r.future.set_exception(ClientGone())
                continue
            live.append(r)
        return live

    # ------------------------------------------------------------------ the model thread
    def _execute(self, params: dict, batch: list[_Request]) -> list[tuple[bool, Any]]:
        """(ok, results or exception) per request. Runs on the model thread."""
        try:
            return self._run_merged(params, batch)
        except Exception as e:  # noqa: BLE001 - isolate below, every error is still reported
            if len(batch) == 1:
                if not isinstance(e, InputError):
                    log.exception("scoring failed")
                return [(False, e)]
        # One request spoiled the merged call: find the culprits cheaply, run the rest together,
        # and only if that fails too run each request alone.
        outcomes: list[tuple[bool, Any] | None] = [None] * len(batch)
        rest = []
        for i, r in enumerate(batch):
            if self.check is not None:
                try:
                    self.check(r.inputs, params)
                except InputError as e:
                    outcomes[i] = (False, e)
                    continue
            rest.append(i)
        if 0 < len(rest) < len(batch):
            try:
                for i, o in zip(rest, self._run_merged(params, [batch[i] for i in rest])):
                    outcomes[i] = o
                return outcomes  # type: ignore[return-value]
            except Exception:  # noqa: BLE001 - fall through to one call per request
                pass
        for i in rest:
            try:
                outcomes[i] = self._run_merged(params, [batch[i]])[0]
            except Exception as e:  # noqa: BLE001 - reported to that request alone
                if not isinstance(e, InputError):
                    log.exception("scoring failed")
                outcomes[i] = (False, e)
        return outcomes  # type: ignore[return-value]

    def _run_merged(self, params: dict, batch: list[_Request]) -> list[tuple[bool, Any]]:
        merged = [x for r in batch for x in r.inputs]
        results = self.run(merged, params)
        if len(results) != len(merged):
            raise RuntimeError(f"run returned {len(results)} results for {len(merged)} inputs")
        out, at = [], 0
        for r in batch:
            out.append((True, results[at: at + len(r.inputs)]))
            at += len(r.inputs)
        return out
