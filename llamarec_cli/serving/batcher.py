"""Micro-batching for ``llamarec serve``: requests that arrive close together share one model call.

A single worker task takes the first waiting request, gathers those already queued and those arriving within a
short window after it (up to ``max_batch``), and runs the whole batch in one thread of its own. So the model runs one
batch at a time, never two at once, and the event loop stays free to accept and parse requests meanwhile; those
queue up for the next batch, which is how batches grow under load. A request that gets no answer within
``timeout_s`` gets ``BusyError`` (a 503), and is left out of its batch if that has not started yet. When a batch
fails, each of its requests is run again alone, so a request that breaks the model fails alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

# `llamarec serve`'s defaults: a window short against a forward pass (tens of ms and more), a batch that fills a
# GPU's pass; on a CPU a pass is cut at ranking/scoring.py's CPU_TOKENS_PER_PASS anyway
MAX_BATCH, WAIT_MS, TIMEOUT_S = 16, 5.0, 30.0
MAX_HISTORY = 1000  # entries in a request's history: far more than a retriever reads (ml-100k's LRURec reads 200)


class BusyError(Exception):
    """No answer within the timeout: the server is busier than it can keep up with, or stopping."""


@dataclass
class Job:
    value: Any
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)
    queued: float = 0.0  # seconds from arrival to the start of its batch
    batch: int = 0  # the size of its batch


class Batcher:
    def __init__(
        self, run: Callable[[list], list], *, max_batch: int = 16, wait_s: float = 0.005, timeout_s: float = 30.0
    ):
        """``run`` maps a list of values to their answers, in order, in one call (blocking: it runs in a thread)."""
        self.run, self.max_batch, self.wait_s, self.timeout_s = run, max_batch, wait_s, timeout_s
        self.sizes: Counter[int] = Counter()  # batch size -> batches run: whether batching happens, in /info
        self.queue: asyncio.Queue[Job] | None = None
        self.worker: asyncio.Task | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.running: list[Job] = []  # the batch in the model now

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="llamarec-model")
        self.worker = asyncio.create_task(self._work(), name="llamarec-batcher")

    async def stop(self) -> None:
        """Stop taking batches; whoever still waits gets BusyError. A batch already running finishes in its thread."""
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        waiting = list(self.running)
        while self.queue is not None and not self.queue.empty():
            waiting.append(self.queue.get_nowait())
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(BusyError("The server is stopping."))
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, value) -> Job:
        """Wait for ``value``'s answer (in ``job.future``'s result); BusyError after ``timeout_s``."""
        if self.worker is None or self.worker.done():
            raise BusyError("The server is not running batches (starting or stopping).")
        job = Job(value, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        try:
            async with asyncio.timeout(self.timeout_s):
                await job.future  # a timeout cancels the future: the worker then leaves the job out
        except TimeoutError:
            raise BusyError(
                f"No answer within {self.timeout_s:g} s: the server is busy. Retry later, or start it with a "
                "longer --timeout or more replicas."
            ) from None
        return job

    async def _gather(self) -> list[Job]:
        """The next batch: the first job whenever it comes, then more until ``max_batch`` or the window ends."""
        batch = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while len(batch) < self.max_batch:
            if self.queue.empty():
                try:
                    async with asyncio.timeout_at(deadline):
                        batch.append(await self.queue.get())
                except TimeoutError:
                    break
            else:
                batch.append(self.queue.get_nowait())
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [job for job in await self._gather() if not job.future.done()]  # done: timed out while queued
            if not batch:
                continue
            began = time.perf_counter()
            for job in batch:
                job.queued, job.batch = began - job.arrived, len(batch)
            self.sizes[len(batch)] += 1
            self.running = batch
            values = [job.value for job in batch]
            try:
                answers = await loop.run_in_executor(self.executor, self.run, values)
                outcomes = [(answer, None) for answer in answers]
            except Exception as exc:  # noqa: BLE001 - handed to the requests; alone, to find the one that breaks
                outcomes = [(None, exc)] if len(batch) == 1 else [await self._alone(loop, v) for v in values]
            for job, (answer, error) in zip(batch, outcomes, strict=True):
                if job.future.done():
                    continue
                if error is None:
                    job.future.set_result(answer)
                else:
                    job.future.set_exception(error)
            self.running = []

    async def _alone(self, loop, value) -> tuple[Any, Exception | None]:
        try:
            (answer,) = await loop.run_in_executor(self.executor, self.run, [value])
            return answer, None
        except Exception as exc:  # noqa: BLE001 - the request's own failure, answered to it
            return None, exc
