"""What the routes share while the service runs: the loaded run, the one model thread, the batching queue,
the decoding threads and the limits on each."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib import import_module
from typing import Callable, Sequence, TypeVar

import numpy as np

from protloc.data import IMAGES
from protloc.data.stains import run_stains
from protloc.inference.predictor import Predictor
from protloc.inference.submission import SUBMISSION_COLUMNS, output_layout
from protloc.service.batching import BatchingPredictor, ModelThread, Overloaded
from protloc.service.explanations import explain_image, preview_images
from protloc.service.limits import ServiceLimits
from protloc.service.schemas import Health
from protloc.service.uploads import decode_upload

T = TypeVar("T")


class Runtime:
    """The service's moving parts; made before the event loop, started and stopped by the app's lifespan."""

    def __init__(self, predictor: Predictor, *, run_name: str, engine: str, limits: ServiceLimits,
                 explainer: Predictor | None = None):
        self.predictor = predictor
        self.explainer = explainer or predictor  # the class maps need the torch model, also when serving ONNX
        self.run_name = run_name
        self.engine = predictor.engine_name  # what actually runs: "auto" resolved by load_predictor
        self.limits = limits
        config = predictor.config
        # The stains `protloc predict` stacks for this run (data/readers.py): yellow only for 4-channel runs.
        self.stains = list(run_stains(config.in_chans))
        self.model_thread = ModelThread()
        self.batching = BatchingPredictor(predictor, self.model_thread, limits)
        self.decoders = ThreadPoolExecutor(limits.decode_slots, thread_name_prefix="protloc-decode")
        self._maps_about: str | None = None

    async def start(self) -> None:
        """Make the event loop's objects in the loop that serves (a test client runs a loop of its own)."""
        self.decode_slots = asyncio.Semaphore(self.limits.decode_slots)
        self.explain_slots = asyncio.Semaphore(self.limits.explain_slots)
        await self.model_thread.run(self._warm_up)
        # pytorch-grad-cam's import takes seconds; done beside the serving, the first /explain need not wait for it.
        threading.Thread(target=import_module, args=("pytorch_grad_cam",), name="protloc-import", daemon=True).start()
        self.batching.start()

    def _warm_up(self) -> None:
        """One forward pass before the first request, which would otherwise wait for the lazy set-up."""
        size = self.predictor.config.image_size
        self.predictor.predict_proba([np.zeros((size, size, 3), dtype=np.uint8)], batch_size=1)

    async def stop(self) -> None:
        await self.batching.stop()

    def close(self) -> None:
        self.model_thread.close()
        self.decoders.shutdown(wait=True, cancel_futures=True)

    async def _in_slot(self, slots: asyncio.Semaphore, what: str, work: Callable[[], asyncio.Future[T]]) -> T:
        """`work()` once one of `slots` is free (waiting up to the admission wait, else Overloaded). The slot is
        freed when the work ends, not when its request gives up: a thread cannot be stopped halfway."""
        try:
            await asyncio.wait_for(slots.acquire(), self.limits.admission_wait_s)
        except TimeoutError:
            raise Overloaded(f"all {what} are busy; retry in a few seconds") from None

        def free_slot(done: asyncio.Future) -> None:
            slots.release()
            if not done.cancelled():
                done.exception()  # seen, so that the failure of abandoned work is not logged as never retrieved

        future = work()
        future.add_done_callback(free_slot)
        return await asyncio.shield(future)

    async def decode(self, data: bytes, *, bit_depth: int | None = None, stain_map: dict | None = None) -> np.ndarray:
        """An uploaded file -> uint8 (H, W, C), wide pixels read at `bit_depth` (the request's) or the predictor's,
        named channels by the request's `stain_map` or the predictor's; at most `decode_slots` at once. Raises
        ImageReadError."""
        loop = asyncio.get_running_loop()
        depth = bit_depth if bit_depth is not None else self.predictor.bit_depth
        decode = partial(decode_upload, data, max_pixels=self.limits.max_pixels, bit_depth=depth,
                         channels=self.predictor.config.in_chans, stain_map=stain_map or self.predictor.stain_map)
        return await self._in_slot(self.decode_slots, "image decoders",
                                   lambda: loop.run_in_executor(self.decoders, decode))

    async def explain(self, image: np.ndarray, classes: Sequence[str]) -> tuple[dict[str, tuple[bytes, bytes]], bytes, bytes]:
        """({class: (overlay PNG, heat map PNG)}, composite PNG, green channel PNG); the maps are made in the model
        thread."""
        overlays = await self._in_slot(self.explain_slots, "class-map slots",
                                       lambda: self.model_thread.run(explain_image, self.explainer, image, list(classes)))
        composite, green = await asyncio.get_running_loop().run_in_executor(self.decoders, preview_images, image)
        return overlays, composite, green

    async def cells(self, image: np.ndarray, probabilities: np.ndarray, name: str, threshold: float | None = None):
        """The image's cells (service/cells.py), segmented and labelled in the model thread, one image at a time
        (the explain slots: each is many forward passes). Raises DataError for an image with no nuclei."""
        from protloc.service.cells import cell_results

        return await self._in_slot(self.explain_slots, "cell slots", lambda: self.model_thread.run(
            cell_results, self.predictor, image, probabilities, name, threshold))

    async def maps_about(self) -> str:
        """How the maps are made and drawn (reports/explain.py's words), worked out once: it runs the model."""
        if self._maps_about is None:
            from protloc.reports.explain import describe_maps

            self._maps_about = await self.model_thread.run(
                partial(describe_maps, self.explainer.model, self.explainer.config, panels=False))
        return self._maps_about

    def health(self) -> Health:
        config = self.predictor.config
        layout = output_layout(IMAGES, config.layout)
        return Health(status="ok", run=self.run_name, backbone=config.backbone, engine=self.engine,
                      labels=self.predictor.label_names,
                      thresholds=dict(zip(config.label_names, map(float, config.thresholds))),
                      image_size=config.image_size, stains=self.stains, csv_columns=list(SUBMISSION_COLUMNS[layout]),
                      max_upload_bytes=self.limits.max_upload_bytes, max_pixels=self.limits.max_pixels,
                      max_files=self.limits.max_files, trained_on=config.trained_on,
                      training_data=config.training_data.to_dict() if config.training_data is not None else None,
                      outlier_threshold=self.predictor.outlier_threshold)
