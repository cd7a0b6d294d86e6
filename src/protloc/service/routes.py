"""The API's routes: GET /health, POST /predict, POST /explain. The framework parses and validates requests;
these functions gather the images, hand them to the service and shape the answers."""
from __future__ import annotations

import asyncio
import base64
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from python_multipart.multipart import parse_options_header

from protloc.data import BIT_DEPTHS
from protloc.data.images import ImageReadError, compose_stains
from protloc.data.stains import STAINS, parse_stain_map
from protloc.service.explanations import thumbnail_png
from protloc.service.runtime import Runtime
from protloc.service.schemas import ClassExplanation, ExplainResponse, Health, ImageResult, PredictResponse, Problem
from protloc.service.uploads import http_status

router = APIRouter()

STAIN_FIELDS = STAINS  # form fields of a stain set, in HPA channel order
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff", "application/octet-stream")
BINARY = {"schema": {"type": "string", "format": "binary"}}
# A single image may also be the whole body, for `curl --data-binary @cell.png -H 'Content-Type: image/png'`.
RAW_IMAGE_BODY = {"requestBody": {"content": {kind: BINARY for kind in IMAGE_TYPES}}}
ERRORS = {status: {"model": Problem, "description": text} for status, text in {
    400: "no image, or a malformed form", 413: "upload over the byte or pixel limit",
    415: "not a form or an image body; or a file that is not PNG, JPEG or TIFF",
    422: "invalid option, damaged image, or incomplete stain set", 503: "busy: retry in a few seconds"}.items()}


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


# ---------------------------------------------------------------- options: query string or form fields


@dataclass(frozen=True)
class Options:
    tta: bool = False
    threshold: float | None = None
    allow_empty: bool = False
    thumbnails: bool = False
    bit_depth: int | None = None
    stain_map: dict | None = None
    cells: bool = False


def _either(name: str, query, form):
    if query is not None and form is not None and query != form:
        raise HTTPException(422, f"{name} given twice, as {query} in the query and {form} in the form")
    return form if form is not None else query


TTA = "average over the 8 flips and quarter turns of each image (8x slower)"
THRESHOLD = "one threshold for every class instead of the run's tuned per-class thresholds"
ALLOW_EMPTY = "allow images with no label (default: each image gets at least its most likely class)"
THUMBNAILS = "add each image's thumbnail (a PNG data URL, at most 96 px) to the answer"
CELLS = ("also answer per cell: each cell found by segmentation (nuclei from blue, cells from red), its labels and "
         "probabilities, centroid, area and outline (a polygon in the image's pixels)")
BIT_DEPTH = (f"depth of the images' pixels, {', '.join(map(str, BIT_DEPTHS))} (12 for 12-bit camera data in 16-bit "
             "files), each scaled from its full scale into the run's range (default: the run's bit depth; a run of "
             "8-bit images reads a 16-bit file by its container, 0..65535)")


STAIN_MAP = ("which stain each named channel of an OME-TIFF is, e.g. DAPI=blue,Tubulin=red,GFP=green; NAME=none "
             "leaves a channel out (default: DAPI and Hoechst blue, tubulin red, GFP green, calreticulin yellow)")


def _stain_map(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        return parse_stain_map(text)
    except ValueError as error:
        raise HTTPException(422, f"stain_map: {error}") from None


def _bit_depth(value: int | None) -> int | None:
    if value is not None and value not in BIT_DEPTHS:
        raise HTTPException(422, f"bit_depth {value}: expected one of {', '.join(map(str, BIT_DEPTHS))}")
    return value


def read_options(
    tta: Annotated[bool | None, Query(description=TTA)] = None,
    threshold: Annotated[float | None, Query(gt=0, lt=1, description=THRESHOLD)] = None,
    allow_empty: Annotated[bool | None, Query(description=ALLOW_EMPTY)] = None,
    tta_field: Annotated[bool | None, Form(alias="tta", description=TTA)] = None,
    threshold_field: Annotated[float | None, Form(alias="threshold", gt=0, lt=1, description=THRESHOLD)] = None,
    allow_empty_field: Annotated[bool | None, Form(alias="allow_empty", description=ALLOW_EMPTY)] = None,
    thumbnails: Annotated[bool | None, Query(description=THUMBNAILS)] = None,
    thumbnails_field: Annotated[bool | None, Form(alias="thumbnails", description=THUMBNAILS)] = None,
    bit_depth: Annotated[int | None, Query(description=BIT_DEPTH)] = None,
    bit_depth_field: Annotated[int | None, Form(alias="bit_depth", description=BIT_DEPTH)] = None,
    stain_map: Annotated[str | None, Query(description=STAIN_MAP)] = None,
    stain_map_field: Annotated[str | None, Form(alias="stain_map", description=STAIN_MAP)] = None,
    cells: Annotated[bool | None, Query(description=CELLS)] = None,
    cells_field: Annotated[bool | None, Form(alias="cells", description=CELLS)] = None,
) -> Options:
    return Options(tta=bool(_either("tta", tta, tta_field)),
                   threshold=_either("threshold", threshold, threshold_field),
                   allow_empty=bool(_either("allow_empty", allow_empty, allow_empty_field)),
                   thumbnails=bool(_either("thumbnails", thumbnails, thumbnails_field)),
                   bit_depth=_bit_depth(_either("bit_depth", bit_depth, bit_depth_field)),
                   stain_map=_stain_map(_either("stain_map", stain_map, stain_map_field)),
                   cells=bool(_either("cells", cells, cells_field)))


# ---------------------------------------------------------------- images: files, a stain set, or the body

Files = Annotated[list[UploadFile] | None, File(description="one or more images: PNG, JPEG or TIFF")]
STAIN_HELP = "grayscale image of the {} stain; red, green, blue (and yellow for 4-channel runs) form one image"
Red = Annotated[UploadFile | None, File(description=STAIN_HELP.format("red (microtubules)"))]
Green = Annotated[UploadFile | None, File(description=STAIN_HELP.format("green (protein)"))]
Blue = Annotated[UploadFile | None, File(description=STAIN_HELP.format("blue (nucleus)"))]
Yellow = Annotated[UploadFile | None, File(description=STAIN_HELP.format("yellow (endoplasmic reticulum)"))]


@dataclass
class Upload:
    """One image as sent: a file, or a stain set's files in channel order."""

    name: str
    files: list[tuple[str, bytes]]  # (name for messages, bytes)
    notes: list[str] = field(default_factory=list)  # what of the upload was not used


def _content_type(request: Request) -> str:
    media_type, _parameters = parse_options_header(request.headers.get("content-type"))
    return media_type.decode("latin-1").lower()


def _stain_set_name(files: dict[str, UploadFile]) -> str:
    """The id the stain files share (HPA names them ID_red.png, ID_green.png...), else "stain set"."""
    ids = {re.sub(rf"_{stain}$", "", PurePath(upload.filename or "").stem, flags=re.IGNORECASE)
           for stain, upload in files.items()}
    return ids.pop() if len(ids) == 1 and "" not in ids else "stain set"


async def gather_uploads(request: Request, runtime: Runtime, files: list[UploadFile] | None,
                         stains: dict[str, UploadFile | None]) -> list[Upload]:
    kind = _content_type(request)
    if kind in IMAGE_TYPES:
        return [Upload("image", [("body", await request.body())])]
    if kind not in FORM_TYPES:
        raise HTTPException(415, f"Content-Type {kind or '(none)'}: send multipart/form-data with images in a "
                                 f"field named files, or one image as the body (image/png, image/jpeg, image/tiff)")
    form = await request.form()  # parsed already, for the parameters: the fields as sent, repeats included
    repeated = [f"{stain} ({len(form.getlist(stain))} times)" for stain in STAIN_FIELDS if len(form.getlist(stain)) > 1]
    if repeated:
        raise HTTPException(422, f"stain set: {', '.join(repeated)} given more than once; send one image per stain "
                                 "field (several images go in the field named files)")
    uploads = [Upload(f.filename or f"files[{i}]", [(f.filename or f"files[{i}]", await f.read())])
               for i, f in enumerate(files or [])]
    given = {stain: upload for stain, upload in stains.items() if upload is not None}
    if given:
        missing = [stain for stain in runtime.stains if stain not in given]
        if missing:
            raise HTTPException(422, f"stain set: no {', '.join(missing)} image (this run stacks "
                                     f"{', '.join(runtime.stains)}; send each as a form field of that name)")
        unused = [f"{stain} stain ({given[stain].filename}) not used: this model reads {and_list(runtime.stains)}"
                  for stain in given if stain not in runtime.stains]
        uploads.append(Upload(_stain_set_name(given), [(f"{stain} ({given[stain].filename})", await given[stain].read())
                                                       for stain in runtime.stains], unused))
    if not uploads:
        raise HTTPException(400, "no image: send files in a multipart field named files, a stain set in fields "
                                 f"{', '.join(runtime.stains)}, or one image as the body with its Content-Type "
                                 "(image/png, image/jpeg or image/tiff)")
    if len(uploads) > runtime.limits.max_files:
        raise HTTPException(413, f"{len(uploads)} images in one request; the limit is {runtime.limits.max_files}")
    return uploads


def and_list(words: list[str]) -> str:
    """"red, green and blue"."""
    return ", ".join(words[:-1]) + f" and {words[-1]}" if len(words) > 1 else "".join(words)


def check_channels(name: str, image: np.ndarray, stains: list[str]) -> None:
    """A file with fewer channels than the run's stains is refused in words for people uploading images, naming
    the two ways that work (no option of the command line: the service reads images as they are)."""
    have = image.shape[-1]
    if have >= len(stains):
        return
    what = "a grayscale image (one stain)" if have == 1 else f"an image of {have} channels"
    stem = PurePath(name).stem
    files = ", ".join(f"{stem}_{stain}.png" for stain in stains)
    raise HTTPException(422, f"{name}: {what}, but this model reads {len(stains)} stains stacked ({and_list(stains)}). "
                             f"Send a colour composite, or the stains as a set of one file each: {files}")


async def decode(runtime: Runtime, upload: Upload, options: Options = Options()) -> np.ndarray:
    arrays = []
    for name, data in upload.files:
        try:
            arrays.append(await runtime.decode(data, bit_depth=options.bit_depth, stain_map=options.stain_map))
        except ImageReadError as error:
            raise HTTPException(http_status(error), f"{name}: {error}") from None
    if len(arrays) == 1:
        check_channels(upload.name, arrays[0], runtime.stains)
        return arrays[0]
    try:
        return compose_stains(arrays)
    except ImageReadError as error:
        raise HTTPException(http_status(error), f"{upload.name}: {error}") from None


async def predict_uploads(runtime: Runtime, uploads: list[Upload],
                          options: Options) -> tuple[np.ndarray, list[float | None], list[str | None]]:
    """(N, C) probabilities, each image's outlier score (None for a run without them), and its thumbnail data URL
    when options ask for it (else None). Each image joins the batching queue as soon as it is decoded, so decoding
    the next one overlaps the model's work on this one."""
    pending: list[asyncio.Future] = []
    pictures: list[str | None] = []
    loop = asyncio.get_running_loop()
    try:
        for upload in uploads:
            image = await decode(runtime, upload, options)
            pending.append(asyncio.ensure_future(runtime.batching.predict(image, tta=options.tta)))
            pictures.append(data_url(await loop.run_in_executor(runtime.decoders, thumbnail_png, image))
                            if options.thumbnails else None)
        answers = await asyncio.gather(*pending)
        return (np.stack([probabilities for probabilities, _ in answers]), [score for _, score in answers], pictures)
    finally:
        for task in pending:
            task.cancel()  # no-op for finished ones; drops the rest when one image failed


def image_result(upload: Upload, probabilities: np.ndarray, decided: np.ndarray, label_names: list[str],
                 thumbnail: str | None = None, outlier_score: float | None = None,
                 outlier_threshold: float | None = None) -> ImageResult:
    classes = [int(i) for i in np.flatnonzero(decided)]
    flagged = None if outlier_score is None or outlier_threshold is None else bool(outlier_score > outlier_threshold)
    return ImageResult(name=upload.name, labels=[label_names[i] for i in classes], classes=classes,
                       probabilities={label: float(p) for label, p in zip(label_names, probabilities)},
                       notes=upload.notes, thumbnail=thumbnail,
                       outlier_score=outlier_score if flagged is not None else None, outlier=flagged)


# ---------------------------------------------------------------- routes


@router.get("/health", response_model=Health)
async def health(runtime: Annotated[Runtime, Depends(get_runtime)]) -> Health:
    """The run being served and the service's limits."""
    return runtime.health()


@router.post("/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=RAW_IMAGE_BODY)
async def predict(request: Request, runtime: Annotated[Runtime, Depends(get_runtime)],
                  options: Annotated[Options, Depends(read_options)], files: Files = None,
                  red: Red = None, green: Green = None, blue: Blue = None, yellow: Yellow = None) -> PredictResponse:
    """Labels and per-class probabilities for each image, as `protloc predict` gives them."""
    stains = dict(zip(STAIN_FIELDS, (red, green, blue, yellow)))
    uploads = await gather_uploads(request, runtime, files, stains)
    probabilities, scores, thumbnails = await predict_uploads(runtime, uploads, options)
    predictor = runtime.predictor
    decided = predictor.decide(probabilities, threshold=options.threshold, allow_empty=options.allow_empty)
    names = predictor.label_names
    thresholds = predictor.config.thresholds if options.threshold is None else [options.threshold] * len(names)
    images = [image_result(upload, p, d, names, thumbnail, score, predictor.outlier_threshold)
              for upload, p, d, thumbnail, score in zip(uploads, probabilities, decided, thumbnails, scores)]
    if options.cells:
        for upload, result, p in zip(uploads, images, probabilities):
            await add_cells(runtime, upload, result, p, options)
    return PredictResponse(images=images, thresholds={name: float(t) for name, t in zip(names, thresholds)})


async def add_cells(runtime: Runtime, upload: Upload, result: ImageResult, probabilities: np.ndarray,
                    options: Options) -> None:
    """The image's cells into its result; an image without nuclei is a 422 naming it."""
    from protloc.errors import DataError

    image = await decode(runtime, upload, options)
    try:
        result.cells = await runtime.cells(image, probabilities, upload.name, options.threshold)
    except DataError as error:
        raise HTTPException(422, error.lines[0]) from None
    result.size = [int(image.shape[1]), int(image.shape[0])]


def resolve_classes(requested: list[str], label_names: list[str], decided: np.ndarray) -> list[str]:
    """Class names, numbers, "predicted" or "all" -> class names, in the run's order."""
    lowered = {name.lower(): name for name in label_names}
    chosen = set()
    for token in (item.strip() for item in requested or ["predicted"]):
        if token == "predicted":
            chosen.update(label_names[i] for i in np.flatnonzero(decided))
        elif token == "all":
            chosen.update(label_names)
        elif token.isdigit() and int(token) < len(label_names):
            chosen.add(label_names[int(token)])
        elif token.lower() in lowered:
            chosen.add(lowered[token.lower()])
        else:
            raise HTTPException(422, f"class {token!r} is not a class of this run (expected a name from /health's "
                                     f"labels, a number 0..{len(label_names) - 1}, predicted or all)")
    return [name for name in label_names if name in chosen]


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


CLASSES = "classes to explain: names or numbers, or predicted (the default) or all"


@router.post("/explain", response_model=ExplainResponse, responses=ERRORS, openapi_extra=RAW_IMAGE_BODY)
async def explain(request: Request, runtime: Annotated[Runtime, Depends(get_runtime)],
                  options: Annotated[Options, Depends(read_options)],
                  classes: Annotated[list[str] | None, Query(description=CLASSES)] = None,
                  classes_field: Annotated[list[str] | None, Form(alias="classes", description=CLASSES)] = None,
                  files: Files = None, red: Red = None, green: Green = None, blue: Blue = None,
                  yellow: Yellow = None) -> ExplainResponse:
    """Class-activation maps (HiResCAM, a Grad-CAM variant): where in one image (or stain set) the model found each
    class, as `protloc explain` draws them, and each map alone on a colour scale."""
    from protloc.map_figures import MAP_MASS_SHARES  # loaded with the maps' code, not for /predict

    uploads = await gather_uploads(request, runtime, files, dict(zip(STAIN_FIELDS, (red, green, blue, yellow))))
    if len(uploads) != 1:
        raise HTTPException(422, f"explain takes one image or one stain set, not {len(uploads)}")
    image = await decode(runtime, uploads[0], options)
    probabilities, score = await runtime.batching.predict(image, tta=options.tta)
    predictor = runtime.predictor
    decided = predictor.decide(probabilities[None], threshold=options.threshold, allow_empty=options.allow_empty)[0]
    names = predictor.label_names
    targets = resolve_classes((classes or []) + (classes_field or []), names, decided)
    overlays, composite, green_channel = await runtime.explain(image, targets)
    numbers = [names.index(name) for name in targets]
    explanations = [ClassExplanation(label=names[i], number=i, probability=float(probabilities[i]),
                                     predicted=bool(decided[i]), overlay=data_url(overlays[names[i]][0]),
                                     heatmap=data_url(overlays[names[i]][1])) for i in numbers]
    return ExplainResponse(image=image_result(uploads[0], probabilities, decided, names, None, score,
                                              predictor.outlier_threshold),
                           composite=data_url(composite), green=data_url(green_channel), explanations=explanations,
                           about=await runtime.maps_about(), outline_shares=list(MAP_MASS_SHARES))
