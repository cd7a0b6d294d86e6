"""A trained run behind HTTP: the FastAPI application of `protloc serve`.

    GET  /              the page for people: drop images, see labels and Grad-CAMs, download a CSV
    GET  /health        the run: name, backbone, engine, classes, thresholds, limits
    POST /predict       images (multipart `files`, a stain set, or one raw image body) -> labels, probabilities
    POST /explain       one image -> Grad-CAM overlay per class, inline as PNG data URLs
    GET  /docs          interactive API documentation, its assets served from the package (works offline)
    GET  /openapi.json  the API's description

Everything about the model comes from the run folder through the Predictor, as for `protloc predict`. Errors
are JSON {"detail": ...} with a 4xx status; 503 means busy, retry.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from importlib import import_module
from pathlib import Path
from typing import Sequence

import numpy as np
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from protloc.data.readers import HPA_STAINS
from protloc.errors import ProtlocError
from protloc.inference.predictor import Predictor
from protloc.inference.submission import SUBMISSION_COLUMNS, output_layout
from protloc.service.batching import BatchingPredictor, ModelThread, Overloaded
from protloc.service.deadline import RequestDeadline
from protloc.service.explanations import explain_image, preview_images
from protloc.service.limits import ServiceLimits
from protloc.service.schemas import Health
from protloc.service.uploads import decode_upload

STATIC = Path(__file__).parent / "static"
# The page runs only its own script and shows images it was sent inline; nothing is fetched from elsewhere.
PAGE_POLICY = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'"
STAIN_FIELDS = HPA_STAINS  # form fields of a stain set, in HPA channel order


class Service:
    """What the routes share: the loaded run, the one model thread, the batching queue, the limits."""

    def __init__(self, predictor: Predictor, *, run_name: str, engine: str, limits: ServiceLimits,
                 explainer: Predictor | None = None):
        self.predictor = predictor
        self.explainer = explainer or predictor  # Grad-CAM needs the torch model, also when serving ONNX
        self.run_name = run_name
        self.engine = engine
        self.limits = limits
        config = predictor.config
        # The stains `protloc predict` stacks for this run (data/readers.py): yellow only for 4-channel runs.
        self.stains = list(HPA_STAINS[:4] if config.in_chans == 4 else HPA_STAINS[:3])
        self.model_thread = ModelThread()
        self.batching = BatchingPredictor(predictor, self.model_thread, limits)
        self.decoders = ThreadPoolExecutor(limits.decode_slots, thread_name_prefix="protloc-decode")

    async def start(self) -> None:
        """Make the event loop's objects in the loop that serves (a test client runs a loop of its own)."""
        self.decode_slots = asyncio.Semaphore(self.limits.decode_slots)
        self.explain_slots = asyncio.Semaphore(self.limits.explain_slots)
        await self.model_thread.run(self._warm_up)
        # Grad-CAM's import takes seconds; done beside the serving, the first /explain need not wait for it.
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

    async def _enter(self, slots: asyncio.Semaphore, what: str) -> None:
        try:
            await asyncio.wait_for(slots.acquire(), self.limits.admission_wait_s)
        except TimeoutError:
            raise Overloaded(f"all {what} are busy; retry in a few seconds") from None

    async def decode(self, data: bytes) -> np.ndarray:
        """An uploaded file -> uint8 (H, W, C); at most `decode_slots` at once. Raises UploadError."""
        await self._enter(self.decode_slots, "image decoders")
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.decoders, partial(decode_upload, data, max_pixels=self.limits.max_pixels))
        finally:
            self.decode_slots.release()

    async def explain(self, image: np.ndarray, classes: Sequence[str]) -> tuple[dict[str, bytes], bytes, bytes]:
        """({class: overlay PNG}, composite PNG, green channel PNG); Grad-CAM runs in the model thread."""
        await self._enter(self.explain_slots, "Grad-CAM slots")
        try:
            overlays = await self.model_thread.run(explain_image, self.explainer, image, list(classes))
        finally:
            self.explain_slots.release()
        composite, green = await asyncio.get_running_loop().run_in_executor(self.decoders, preview_images, image)
        return overlays, composite, green

    def health(self) -> Health:
        config = self.predictor.config
        layout = output_layout("images", config.layout)
        return Health(status="ok", run=self.run_name, backbone=config.backbone, engine=self.engine,
                      labels=self.predictor.label_names,
                      thresholds=dict(zip(config.label_names, map(float, config.thresholds))),
                      image_size=config.image_size, stains=self.stains, csv_columns=list(SUBMISSION_COLUMNS[layout]),
                      max_upload_bytes=self.limits.max_upload_bytes, max_pixels=self.limits.max_pixels,
                      max_files=self.limits.max_files)


def create_app(predictor: Predictor, *, run_name: str, engine: str = "torch", limits: ServiceLimits | None = None,
               allowed_hosts: Sequence[str] = ("127.0.0.1", "localhost", "::1"), cors_origins: Sequence[str] = (),
               explainer: Predictor | None = None) -> FastAPI:
    """The application around a loaded run. `allowed_hosts`: Host headers accepted ("*" for any);
    `cors_origins`: web origins whose pages may call the API (none by default)."""
    from protloc.service.routes import router

    limits = limits or ServiceLimits()
    service = Service(predictor, run_name=run_name, engine=engine, limits=limits, explainer=explainer)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPIOffline(
        title=f"protloc: {run_name}", version="1", lifespan=lifespan, redoc_url=None, static_url="/docs-assets",
        description="Protein localisation from fluorescence images, with the run "
                    f"`{run_name}` ({predictor.config.backbone}). The page for people is at [/](/).",
        max_body_size=limits.max_upload_bytes,
        # Files: the images and a stain set; fields: the options. Both counts are far above any honest form.
        form_limits={"max_files": limits.max_files + len(STAIN_FIELDS), "max_fields": 32, "max_part_size": 4096},
    )
    app.state.service = service
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(ProtlocError, _unprocessable)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    app.add_middleware(RequestDeadline, seconds=limits.request_timeout_s)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY,
                                                            "Cache-Control": "no-cache"})

    return app


async def _overloaded(request: Request, error: Overloaded) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "2"})


async def _unprocessable(request: Request, error: ProtlocError) -> JSONResponse:
    return JSONResponse({"detail": "; ".join(error.lines)}, status_code=422)
