"""Synthetic HPA-like images: the embedded default dataset of the demo, the tests and the benchmarks.

Images imitate the Kaggle "Zero to GANs - Human Protein Classification" RGB composites: a black
field of cells with blue nuclei (textured, darker nucleoli), a red microtubule network of fine
filaments in the cytoplasm and a green protein channel that is the sum of the patterns of the
image's hpa10 labels (see ``HPA10_NAMES``), each in its compartment, in every cell of the image.

Everything is a function of the random generator passed in, so a dataset written with the same
seed is byte-identical whatever the number of worker processes.

Modules, in the order an image is made: ``label_sets`` (which labels), ``field`` (cells, nuclei,
nucleoli), ``stains`` (red and blue), ``patterns`` (green: one registered function per class
name), ``render`` (the channels through the microscope), ``writer`` (a dataset on disk);
``drawing`` holds the primitives they share.
"""
from __future__ import annotations

from protloc.data.synthetic.label_sets import sample_label_sets
from protloc.data.synthetic.patterns import MASK_MASS_SHARE, PATTERNS, pattern, pattern_mask
from protloc.data.synthetic.render import (
    render_field_with_masks,
    render_image,
    render_image_with_masks,
)
from protloc.data.synthetic.writer import write_demo_dataset

__all__ = [
    "MASK_MASS_SHARE",
    "PATTERNS",
    "pattern",
    "pattern_mask",
    "sample_label_sets",
    "render_image",
    "render_image_with_masks",
    "render_field_with_masks",
    "write_demo_dataset",
]
