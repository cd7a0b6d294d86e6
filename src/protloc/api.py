"""The Python door to a trained run (the CLI is the other; both use inference/predictor.py).

    import protloc
    predictor = protloc.load("runs/demo")
    result = predictor.predict(["cell.png", numpy_array, pil_image], tta=True)
    result.probabilities  # (N, classes)
    result.labels         # class names per image
    result.to_frame()     # pandas: id, labels, one probability column per class

    # One image from one grayscale file (or array) per stain: a dict, or a tuple in the run's channel order.
    predictor.predict([{"red": "a_red.png", "green": "a_green.png", "blue": "a_blue.png"}])

    # Where the model found each predicted class: class-activation maps (HiResCAM, a Grad-CAM variant).
    explanation = predictor.explain("cell.png")[0]   # classes="all" or ["Nucleoli", 4] for others
    explanation.maps                  # {class name: (H, W) map in 0..1, at the model's input size}
    explanation.figure().savefig("cell_maps.png")   # as `protloc explain` draws it
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protloc.inference.predictor import Predictor


def load(run: str | Path, *, device: str = "auto", engine: str = "auto", onnx: str | Path | None = None,
         precision: str = "auto", gray_as: str | None = None, bit_depth: int | None = None,
         stain_map: str | dict | None = None) -> "Predictor":
    """A Predictor on a run folder.

    engine: "auto" (ONNX Runtime in fp32 on the CPU; torch on a GPU or with precision "bf16"), "onnx" (the file
    `onnx`, or the run's model.onnx from `protloc export`, else an export made on first use and kept in the cache
    folder, $PROTLOC_CACHE_DIR or ~/.cache/protloc) or "torch". Loading writes nothing into the run folder and
    prints nothing; the process's settings (plotting backend, memory allocator) are left as they were.
    device: "auto" (a CUDA GPU if there is one, else the CPU), "cpu", "cuda" or "cuda:N".
    precision: "auto" (fp32 on the CPU; bf16, or fp16 where bf16 is missing, on a GPU), "fp32", "bf16" or "fp16".
    gray_as: a stain name ("green" for a protein-only image) under which a grayscale image enters a run of 3 or 4
    channels, the others dark; without it such an image is refused.
    bit_depth: the depth of the images' pixels, one of protloc.data.BIT_DEPTHS (12 for 12-bit camera data in 16-bit files),
    where it differs from the run's (its config.json's bit_depth, the default): each image is scaled from its own
    full scale, 2**bit_depth - 1, as the run's training images were from theirs.
    stain_map: which stain each named channel of a microscope file (OME-TIFF, CZI, ND2, LIF) is, for names the
    defaults do not know: "DAPI=blue,Tubulin=red,GFP=green" or {"DAPI": "blue", ...}; None (or "none") leaves a
    channel out. DAPI and Hoechst are blue, tubulin red, GFP green and calreticulin yellow by default.
    """
    # Imported here so that `import protloc` does not import torch.
    from protloc.inference.predictor import load_predictor

    return load_predictor(run, device=device, engine=engine, onnx_path=onnx, precision=precision, gray_as=gray_as,
                          bit_depth=bit_depth, stain_map=stain_map)
