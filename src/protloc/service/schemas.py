"""The JSON the service answers with, as pydantic models: they are the schemas in /openapi.json."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: Literal["ok"]
    run: str = Field(description="name of the run folder")
    backbone: str
    engine: Literal["torch", "onnx"]
    labels: list[str] = Field(description="class names; a class's number is its position here")
    thresholds: dict[str, float] = Field(description="the run's tuned threshold per class")
    image_size: int = Field(description="side in pixels the model sees; uploads are resized to it")
    stains: list[str] = Field(description="the stain files a stain set needs, in the run's channel order")
    csv_columns: list[str] = Field(description="columns of the run's Kaggle submission format: id, labels")
    max_upload_bytes: int
    max_pixels: int
    max_files: int
    trained_on: str = Field(description="what the model learned from, in one line (config.json's training_data)")
    training_data: dict | None = Field(description="config.json's record of the training data: folder, kind (demo or "
                                                   "real), images, classes, bit depth, date, protloc version")
    outlier_threshold: float | None = Field(description="outlier score above which an image is flagged as unlike "
                                                        "the training images; null for a run without outlier scores")


class CellResult(BaseModel):
    cell: int = Field(description="the cell's number in the image's mask, 1..K")
    labels: list[str] = Field(description="the cell's predicted class names (may be none)")
    classes: list[int]
    probabilities: dict[str, float] = Field(description="the cell's score per class: its image's probability times "
                                                        "the cell's own evidence (0..1; docs/cells.md)")
    centroid: list[float] = Field(description="[x, y] in the image's pixels")
    area: int = Field(description="pixels")
    touches_border: bool
    outline: list[list[float]] = Field(description="the cell's boundary, [x, y] points in the image's pixels, a "
                                                   "closed polygon")


class ImageResult(BaseModel):
    name: str = Field(description="the uploaded file's name; for a stain set, the common id of its files")
    labels: list[str] = Field(description="predicted class names")
    classes: list[int] = Field(description="predicted class numbers, as in Kaggle submission files")
    probabilities: dict[str, float] = Field(description="probability per class name")
    notes: list[str] = Field(default_factory=list,
                             description="what was left out of the upload, e.g. a yellow stain a 3-channel run does not read")
    thumbnail: str | None = Field(default=None, description="PNG data URL, at most 96 px: the image as a colour "
                                                            "composite; only when the request asks for thumbnails")
    outlier_score: float | None = Field(None, description="how unlike the training images this image is (higher: "
                                                          "less like them); null for a run without outlier scores")
    outlier: bool | None = Field(None, description="outlier_score above the run's threshold: the image is unlike "
                                                   "what the model learned from, so its labels deserve doubt")
    size: list[int] | None = Field(default=None, description="[width, height] of the image in pixels; with cells")
    cells: list[CellResult] | None = Field(default=None, description="one per cell, found by segmentation; only when "
                                                                     "the request asks for cells")


class PredictResponse(BaseModel):
    images: list[ImageResult] = Field(description="one per uploaded image or stain set, in upload order")
    thresholds: dict[str, float] = Field(description="the threshold each class was decided with")


class ClassExplanation(BaseModel):
    label: str
    number: int
    probability: float
    predicted: bool
    overlay: str = Field(description="PNG data URL: the class-activation map (HiResCAM) over the image as the model "
                                     "saw it: its hottest areas outlined, the stains left visible")
    heatmap: str = Field(description="PNG data URL: the same map alone, on a colour scale (dark: none, pale yellow: "
                                     "the peak of the image's strongest map; an image's maps share one scale, each weighed by "
                                     "its class's probability)")


class ExplainResponse(BaseModel):
    image: ImageResult
    composite: str = Field(description="PNG data URL: the uploaded image (colour composite), at most 512 px")
    green: str = Field(description="PNG data URL: the green (protein) channel alone, in grey")
    explanations: list[ClassExplanation]
    about: str = Field(description="how the maps were made and how to read them")
    outline_shares: list[float] = Field(description="the overlays' outlines, grey then white: each surrounds the "
                                                    "hottest pixels holding this share of the map")


class Problem(BaseModel):
    detail: str
