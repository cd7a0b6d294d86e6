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


def load(run: str | Path, *, device: str = "cpu", engine: str = "torch", onnx: str | Path | None = None,
         precision: str = "auto") -> "Predictor":
    """A Predictor on a run folder. engine="onnx" uses ONNX Runtime on RUN/model.onnx (or `onnx`).

    precision: "auto" (bfloat16 only where the hardware has it natively), "fp32" or "bf16".
    """
    # Imported here so that `import protloc` does not import torch.
    from protloc.inference.predictor import load_predictor

    return load_predictor(run, device=device, engine=engine, onnx_path=onnx, precision=precision)
