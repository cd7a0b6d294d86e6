"""Requests in, forward passes out: images that arrive within a few milliseconds share one batch.

One thread runs the model (a loaded network is not safe to share between threads, and Grad-CAM hooks its
layers); the event loop only queues. Admission is bounded in images and in decoded bytes, so that excess load
waits briefly and then gets 503 instead of growing the queue without end.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import numpy as np

from protloc.inference.predictor import Predictor
from protloc.service.limits import ServiceLimits

T = TypeVar("T")


class Overloaded(Exception):
    """No room for more work within the admission wait; the client should retry later (503)."""


@dataclass
class Job:
    image: np.ndarray
    tta: bool
    done: asyncio.Future = field(repr=False)


class ModelThread:
    """The one thread that touches the model: predictions and explanations alike run here, one at a time."""

    def __init__(self):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="protloc-model")

    def run(self, function: Callable[..., T], *args) -> asyncio.Future[T]:
        """`function(*args)` in the model thread; await the result."""
        return asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class Admission:
    """At most `max_items` items and `max_bytes` bytes admitted at once; one item alone is always let in."""

    def __init__(self, *, max_items: int, max_bytes: int, wait_s: float):
        self.max_items, self.max_bytes, self.wait_s = max_items, max_bytes, wait_s
        self.items = 0
        self.bytes = 0
        self.changed = asyncio.Condition()

    def _fits(self, size: int) -> bool:
        return self.items == 0 or (self.items < self.max_items and self.bytes + size <= self.max_bytes)

    async def enter(self, size: int) -> None:
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: self._fits(size)), self.wait_s)
            except TimeoutError:
                raise Overloaded(f"the prediction queue is full ({self.items} images waiting); "
                                 f"retry in a few seconds") from None
            self.items += 1
            self.bytes += size

    async def leave(self, size: int) -> None:
        async with self.changed:
            self.items -= 1
            self.bytes -= size
            self.changed.notify_all()


class BatchingPredictor:
    """`await predict(image, tta)` -> (probabilities (C,), outlier score or None), computed in batches shared
    between requests."""

    def __init__(self, predictor: Predictor, model_thread: ModelThread, limits: ServiceLimits):
        self.predictor = predictor
        self.model_thread = model_thread
        self.batch_size = limits.batch_size
        self.batch_wait_s = limits.batch_wait_ms / 1000
        self.limits = limits
        self.forward_passes = 0  # counted for tests and logs: how well requests were batched
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        """Start batching in the running event loop (its queue and conditions belong to that loop)."""
        self.admission = Admission(max_items=self.limits.max_queued_images, max_bytes=self.limits.max_queued_bytes,
                                   wait_s=self.limits.admission_wait_s)
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._serve(), name="protloc-batching")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def predict(self, image: np.ndarray, *, tta: bool = False) -> tuple[np.ndarray, float | None]:
        await self.admission.enter(image.nbytes)
        try:
            job = Job(image, tta, asyncio.get_running_loop().create_future())
            self.queue.put_nowait(job)
            return await job.done
        finally:
            await self.admission.leave(image.nbytes)

    async def _next_batch(self) -> list[Job]:
        """The first waiting job, and those that arrive within the batch wait, up to the batch size."""
        batch = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.batch_wait_s
        while len(batch) < self.batch_size:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        return [job for job in batch if not job.done.done()]  # a request that gave up (deadline, disconnect)

    async def _serve(self) -> None:
        while True:
            batch = await self._next_batch()
            for tta in (False, True):  # one forward pass per setting: TTA runs 8 views of each image
                jobs = [job for job in batch if job.tta == tta]
                if jobs:
                    await self._run(jobs, tta)

    async def _run(self, jobs: list[Job], tta: bool) -> None:
        images = [job.image for job in jobs]
        try:
            probabilities, scores = await self.model_thread.run(self._forward, images, tta)
        except Exception as error:  # a fault in the model run: every waiting request hears of it
            for job in jobs:
                if not job.done.done():
                    job.done.set_exception(error)
            return
        for index, (job, row) in enumerate(zip(jobs, probabilities)):
            if not job.done.done():
                job.done.set_result((row, None if scores is None else float(scores[index])))

    def _forward(self, images: list[np.ndarray], tta: bool) -> tuple[np.ndarray, np.ndarray | None]:
        self.forward_passes += 1
        result = self.predictor.predict_scored(images, tta=tta, batch_size=len(images))
        return result.outputs, result.outlier_scores
