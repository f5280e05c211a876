"""The one thread that runs the model: a queue of calls, results as futures.

A daemon thread rather than a ThreadPoolExecutor: the interpreter joins an executor's threads
at exit, so a forward pass still running when the grace period ends would keep the process
alive past it. The server stops this thread between pieces of work (`MicroBatcher.abort`) and
exits without waiting for a piece that is still inside a matrix product.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from typing import Any, Callable


class ModelThread:
    def __init__(self, name: str = "distilkit-model"):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            future, fn, args = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
                future.set_exception(e)

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((future, fn, args))
        return future

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self.submit(fn, *args))

    def stop(self) -> None:
        """No new calls after the current one."""
        self._calls.put(None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the current call to end; True when the thread is gone."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
