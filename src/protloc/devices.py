"""Where and in what precision a model runs: the one place for the words of --device (auto, cpu, cuda, cuda:N) and
--precision (auto, fp32, bf16, fp16), and for what "auto" means, for prediction and for training alike.

The two "auto" policies differ on purpose. Prediction's is fp32 on every CPU, so that CPU probabilities are the
same on every machine, with or without native bf16. Training's is bf16 on CPUs that compute it natively, where
it is faster, since a run's weights are its own anyway. On a GPU both are bf16 where it is native, else fp16.
torch is imported inside the functions that need it, so the command line can offer the choices without it.
"""
from __future__ import annotations

from protloc.errors import ProtlocError

DEVICE_KINDS = ("auto", "cpu", "cuda")  # and cuda:N
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Lightning's names for the precisions (fp32 is plain, the others mixed: autocast with fp32 weights).
LIGHTNING_PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


def check_device_name(text: str) -> str:
    """`text` when it is auto, cpu, cuda or cuda:N; a ValueError otherwise (the command line's type check)."""
    kind, _, index = text.partition(":")
    if kind not in DEVICE_KINDS or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"{text}: expected auto, cpu, cuda or cuda:N")
    return text


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; an explicit CUDA device must exist."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ProtlocError(f"--device {device}: no CUDA GPU is visible to torch (use --device cpu)")
        index = device.partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            raise ProtlocError(f"--device {device}: torch sees {torch.cuda.device_count()} GPU(s), numbered from 0")
    elif device != "cpu":
        raise ProtlocError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    return device


def bf16_is_native(device: str) -> bool:
    """Whether `device` computes bfloat16 in hardware (CUDA GPUs that support it; CPUs with AVX512-BF16 or AMX)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private oneDNN query that older or CPU-limited builds may lack
        return False


def resolve_precision(precision: str, device: str) -> str:
    """For prediction: "auto" -> bf16 on a GPU that has it (else fp16), fp32 on the CPU: CPU results then agree on
    every machine, with or without native bf16. An explicit choice is kept; fp16 needs a GPU."""
    if precision == "auto":
        if device.startswith("cuda"):
            return "bf16" if bf16_is_native(device) else "fp16"
        return "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        raise ProtlocError("--precision fp16: needs a CUDA device (on the CPU use fp32, or bf16)")
    if precision not in PRECISIONS:
        raise ProtlocError(f"--precision {precision}: expected {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}")
    return precision


def resolve_training_precision(precision: str, device: str) -> str:
    """For training: "auto" -> mixed precision where the hardware computes in it natively, i.e. bf16 on GPUs that
    have it (else fp16) and on CPUs with native bf16 (AVX512-BF16 or AMX); elsewhere bf16 is emulated, several
    times slower than fp32, so auto means fp32 there. An explicit choice is checked as for prediction."""
    if precision == "auto":
        if device.startswith("cuda"):
            return "bf16" if bf16_is_native(device) else "fp16"
        return "bf16" if bf16_is_native("cpu") else "fp32"
    return resolve_precision(precision, device)


def autocast_dtype(precision: str):
    """The torch dtype autocast computes in for a resolved precision; None for fp32 (no autocast)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
