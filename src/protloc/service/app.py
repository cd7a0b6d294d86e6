"""A trained run behind HTTP: the FastAPI application of `protloc serve`.

    GET  /              the page for people: drop images, see labels and class-activation maps, download a CSV
    GET  /health        the run: name, backbone, engine, classes, thresholds, limits
    POST /predict       images (multipart `files`, a stain set, or one raw image body) -> labels, probabilities
    POST /explain       one image -> a class-activation map (HiResCAM) per class, inline as PNG data URLs
    GET  /docs          interactive API documentation, its assets served from the package (works offline)
    GET  /openapi.json  the API's description

Everything about the model comes from the run folder through the Predictor, as for `protloc predict`. Errors
are JSON {"detail": ...} with a 4xx status; 503 means busy, retry.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Sequence

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from protloc.errors import ProtlocError
from protloc.inference.predictor import Predictor
from protloc.service.batching import Overloaded
from protloc.service.deadline import RequestDeadline
from protloc.service.limits import ServiceLimits
from protloc.service.routes import STAIN_FIELDS, router
from protloc.service.runtime import Runtime

STATIC = Path(__file__).parent / "static"
# The page runs only its own script and shows images it was sent inline; nothing is fetched from elsewhere.
PAGE_POLICY = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'"


def create_app(predictor: Predictor, *, run_name: str, engine: str = "torch", limits: ServiceLimits | None = None,
               allowed_hosts: Sequence[str] = ("127.0.0.1", "localhost", "::1"), cors_origins: Sequence[str] = (),
               explainer: Predictor | None = None) -> FastAPI:
    """The application around a loaded run. `allowed_hosts`: Host headers accepted ("*" for any);
    `cors_origins`: web origins whose pages may call the API (none by default)."""
    limits = limits or ServiceLimits()
    runtime = Runtime(predictor, run_name=run_name, engine=engine, limits=limits, explainer=explainer)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPIOffline(
        title=f"protloc: {run_name}", version="1", lifespan=lifespan, redoc_url=None, static_url="/docs-assets",
        description="Protein localisation from fluorescence images, with the run "
                    f"`{run_name}` ({predictor.config.backbone}). The page for people is at [/](/).",
        max_body_size=limits.max_upload_bytes,
        # Files: the images and a stain set; fields: the options. Both counts are far above any honest form.
        form_limits={"max_files": limits.max_files + len(STAIN_FIELDS), "max_fields": 32, "max_part_size": 4096},
    )
    app.state.runtime = runtime
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
