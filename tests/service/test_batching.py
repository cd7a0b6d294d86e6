"""The batching worker: requests arriving together share forward passes, answers go back to their own
requests, and admission is bounded."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from protloc.service.batching import Admission, BatchingPredictor, ModelThread, Overloaded
from protloc.service.limits import ServiceLimits


def images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(count)]


def probabilities(answers) -> np.ndarray:
    """The probabilities of (probabilities, outlier score) answers."""
    return np.stack([row for row, _score in answers])


async def with_batching(predictor, limits: ServiceLimits, work):
    thread = ModelThread()
    batching = BatchingPredictor(predictor, thread, limits)
    batching.start()
    try:
        return await work(batching)
    finally:
        await batching.stop()
        thread.close()


def test_images_arriving_together_share_one_forward_pass_and_get_their_own_answers(predictor):
    pictures = images(12)

    async def work(batching):
        answers = await asyncio.gather(*(batching.predict(picture) for picture in pictures))
        return answers, batching.forward_passes

    answers, passes = asyncio.run(with_batching(predictor, ServiceLimits(batch_size=16, batch_wait_ms=50), work))
    assert passes == 1
    np.testing.assert_allclose(probabilities(answers), predictor.predict_proba(pictures), atol=1e-5)


def test_batches_hold_at_most_the_batch_size_and_keep_tta_apart(predictor):
    pictures = images(10, seed=1)

    async def work(batching):
        plain = [batching.predict(picture) for picture in pictures[:7]]
        averaged = [batching.predict(picture, tta=True) for picture in pictures[7:]]
        answers = await asyncio.gather(*plain, *averaged)
        return answers, batching.forward_passes

    answers, passes = asyncio.run(with_batching(predictor, ServiceLimits(batch_size=4, batch_wait_ms=50), work))
    assert passes >= 4  # 7 plain in batches of 4 at most (2 passes), 3 averaged apart from them (1 or 2 more)
    np.testing.assert_allclose(probabilities(answers[:7]), predictor.predict_proba(pictures[:7]), atol=1e-5)
    np.testing.assert_allclose(probabilities(answers[7:]), predictor.predict_proba(pictures[7:], tta=True), atol=1e-5)


def test_a_full_queue_makes_the_excess_wait_briefly_then_raise_overloaded():
    async def scenario():
        admission = Admission(max_items=2, max_bytes=1000, wait_s=0.05)
        await admission.enter(10)
        await admission.enter(10)
        with pytest.raises(Overloaded, match="queue is full"):
            await admission.enter(10)  # a third item: no room
        await admission.leave(10)
        await admission.enter(10)  # room again
        await admission.leave(10)
        await admission.leave(10)
        with pytest.raises(Overloaded):
            await admission.enter(10)  # one item in...
            await admission.enter(995)  # ...and this one would pass the byte budget
        await admission.leave(10)
        await admission.enter(5000)  # alone, even an item over the budget is let in
        assert (admission.items, admission.bytes) == (1, 5000)

    asyncio.run(scenario())


def test_a_request_that_gave_up_is_dropped_from_its_batch(predictor):
    pictures = images(3, seed=2)

    async def work(batching):
        abandoned = asyncio.ensure_future(batching.predict(pictures[0]))
        await asyncio.sleep(0)  # queued
        abandoned.cancel()
        answers = await asyncio.gather(*(batching.predict(picture) for picture in pictures[1:]))
        return answers, batching.admission.items

    answers, waiting = asyncio.run(with_batching(predictor, ServiceLimits(batch_wait_ms=20), work))
    assert waiting == 0  # its place in the queue was given back
    np.testing.assert_allclose(probabilities(answers), predictor.predict_proba(pictures[1:]), atol=1e-5)
