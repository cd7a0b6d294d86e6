"""Where and in what precision a model runs: the one place that turns the user's --device and --precision
(auto, cpu, cuda, cuda:N; auto, fp32, bf16, fp16) into concrete settings, for training and inference alike."""
from __future__ import annotations

from protloc.errors import ProtlocError


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
    """"auto" -> bf16 on a GPU that has it (else fp16), fp32 on the CPU: CPU results then agree on every
    machine, with or without native bf16. An explicit choice is kept; fp16 needs a GPU."""
    if precision == "auto":
        if device.startswith("cuda"):
            return "bf16" if bf16_is_native(device) else "fp16"
        return "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        raise ProtlocError("--precision fp16: needs a CUDA device (on the CPU use fp32, or bf16)")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ProtlocError(f"--precision {precision}: expected auto, fp32, bf16 or fp16")
    return precision
