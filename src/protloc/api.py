"""The Python door to a trained run (the CLI is the other; both use inference/predictor.py).

    import protloc
    predictor = protloc.load("runs/demo")
    result = predictor.predict(["cell.png", numpy_array, pil_image], tta=True)
    result.probabilities  # (N, classes)
    result.labels         # class names per image
    result.to_frame()     # pandas: id, labels, one probability column per class
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protloc.inference.predictor import Predictor


def load(run: str | Path, *, device: str = "auto", engine: str = "torch", onnx: str | Path | None = None,
         precision: str = "auto") -> "Predictor":
    """A Predictor on a run folder. engine="onnx" uses ONNX Runtime on the run's export (or the file `onnx`).

    device: "auto" (a CUDA GPU if there is one, else the CPU), "cpu", "cuda" or "cuda:N".
    precision: "auto" (fp32 on the CPU; bf16, or fp16 where bf16 is missing, on a GPU), "fp32", "bf16" or "fp16".
    """
    # Imported here so that `import protloc` does not import torch.
    from protloc.inference.predictor import load_predictor

    return load_predictor(run, device=device, engine=engine, onnx_path=onnx, precision=precision)
