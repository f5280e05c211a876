"""The request merger (`serve/batcher.py`) with a recording stand-in for the model: what is merged
into one model call, what never is, and the work a batch skips once nobody waits for it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from distilkit.serve.batcher import MicroBatcher, ShuttingDown


class Recorder:
    """`run` for the batcher: records (inputs, params) per call; optionally sleeps per call."""

    def __init__(self, sleep_s: float = 0.0):
        self.calls: list[tuple[list, dict]] = []
        self.sleep_s = sleep_s

    def __call__(self, inputs: list, params: dict) -> list:
        self.calls.append((list(inputs), dict(params)))
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return [f"{x}:{params.get('top_k', '-')}" for x in inputs]


def serve(run: Recorder, coro_fn, **options):
    async def main():
        batcher = MicroBatcher(run, **options)
        await batcher.start()
        try:
            return await coro_fn(batcher)
        finally:
            await batcher.close()

    return asyncio.run(main())


def test_parameters_never_merge():
    run = Recorder()

    async def go(b):
        # All queued in the same tick: the collector sees six requests, two parameter sets.
        return await asyncio.gather(*(b.submit([f"t{i}"], {"top_k": 1 + i % 2}) for i in range(6)))

    results = serve(run, go, max_wait_s=0.05)
    assert results == [[f"t{i}:{1 + i % 2}"] for i in range(6)]  # each request its own slice
    assert sorted((sorted(inputs), p["top_k"]) for inputs, p in run.calls) == [
        (["t0", "t2", "t4"], 1), (["t1", "t3", "t5"], 2)]


def test_max_batch_tokens_bounds_a_call():
    run = Recorder()

    async def go(b):
        return await asyncio.gather(*(b.submit([f"t{i}"], {}, costs=[4]) for i in range(5)))

    serve(run, go, max_wait_s=0.05, max_batch_tokens=10)  # 4 + 4 fit, a third does not
    assert [len(inputs) for inputs, _ in run.calls] == [2, 2, 1]
    assert [x for inputs, _ in run.calls for x in inputs] == [f"t{i}" for i in range(5)]  # in arrival order


def test_max_batch_size_one_turns_merging_off():
    run = Recorder()

    async def go(b):
        return await asyncio.gather(*(b.submit([f"t{i}"], {}) for i in range(4)))

    assert serve(run, go, max_wait_s=0.05, max_batch_size=1) == [[f"t{i}:-"] for i in range(4)]
    assert [inputs for inputs, _ in run.calls] == [["t0"], ["t1"], ["t2"], ["t3"]]


@pytest.mark.parametrize("max_wait_s, calls", [(0.0, 2), (5.0, 1)])
def test_max_wait_lets_a_later_request_join(max_wait_s, calls):
    run = Recorder()

    async def go(b):
        first = asyncio.create_task(b.submit(["first"], {}))
        await asyncio.sleep(0.2)  # the second arrives while the first is still waiting for company (or not)
        second = await b.submit(["second"], {})
        return [await first, second]

    # max_batch_size 2: with a long wait, the batch is sent as soon as the second request fills it.
    assert serve(run, go, max_wait_s=max_wait_s, max_batch_size=2) == [["first:-"], ["second:-"]]
    assert len(run.calls) == calls


def test_a_timed_out_request_skips_its_remaining_pieces():
    run = Recorder(sleep_s=0.2)

    async def go(b):
        with pytest.raises(TimeoutError):
            await b.submit([f"t{i}" for i in range(10)], {}, costs=[1] * 10, timeout=0.5)
        await asyncio.sleep(0.5)  # the piece running at the deadline ends; no other starts
        return b.metrics.skipped_inputs.value()

    skipped = serve(run, go, max_wait_s=0.0, max_batch_tokens=1)  # one input per piece
    assert len(run.calls) <= 4 and skipped >= 6, (len(run.calls), skipped)


def test_abort_fails_queued_and_running_requests():
    release = threading.Event()
    calls = []

    def run(inputs, params):
        calls.append(inputs)
        release.wait(10)
        return list(inputs)

    async def go(b):
        running = asyncio.create_task(b.submit(["a", "b", "c"], {}, costs=[1, 1, 1]))
        await asyncio.sleep(0.1)  # the first piece is inside `run`
        queued = asyncio.create_task(b.submit(["d"], {}))
        await asyncio.sleep(0.05)
        b.abort()
        release.set()
        outcomes = await asyncio.gather(running, queued, return_exceptions=True)
        with pytest.raises(ShuttingDown):
            await b.submit(["e"], {})
        return outcomes

    running, queued = serve(run, go, max_wait_s=0.0, max_batch_tokens=1)
    assert isinstance(running, ShuttingDown) and isinstance(queued, ShuttingDown)
    assert calls == [["a"]]  # the model thread stopped at the next piece; "d" never ran


def test_a_long_request_takes_turns_with_later_ones():
    arrived = threading.Event()
    calls = []

    def run(inputs, params):
        calls.append(inputs[0])
        if inputs[0] == "long0":
            arrived.wait(10)  # the long request's first piece runs until the short one is queued
        return [f"{x}:{params.get('top_k', '-')}" for x in inputs]

    async def go(b):
        long = asyncio.create_task(b.submit([f"long{i}" for i in range(12)], {}, costs=[1] * 12))
        await asyncio.sleep(0.05)
        short = asyncio.create_task(b.submit(["short"], {"top_k": 3}, costs=[1]))  # other parameters: never merged
        await asyncio.sleep(0)  # queued
        arrived.set()
        return await short, await long

    short, long = serve(run, go, max_wait_s=0.0, max_batch_tokens=1)  # one input per piece
    assert short == ["short:3"] and long == [f"long{i}:-" for i in range(12)]
    # The short request ran right after the piece that was running when it came, not after all 12.
    assert calls == ["long0", "short"] + [f"long{i}" for i in range(1, 12)], calls


def test_interleaved_batches_keep_their_queue_accounting():
    release = threading.Event()

    def run(inputs, params):
        release.wait(10)
        return list(inputs)

    async def go(b):
        first = asyncio.create_task(b.submit(["a", "b"], {}, costs=[1, 1]))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(b.submit(["c", "d"], {}, costs=[1, 1]))
        await asyncio.sleep(0.05)
        depth_while_running = b.depth  # "c d" queued behind the running piece
        release.set()
        return depth_while_running, await first, await second, b.depth

    depth, first, second, after = serve(run, go, max_wait_s=0.0, max_batch_tokens=1)
    assert (first, second) == (["a", "b"], ["c", "d"])
    assert depth == 1 and after == 0
