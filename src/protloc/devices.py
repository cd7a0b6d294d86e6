"""Where and in what precision a model runs: the one place for the words of --device (auto, cpu, cuda, cuda:N) and
--precision (auto, fp32, bf16, fp16), and for what "auto" means, for prediction and for training alike.

"auto" is one policy: fp32 on every CPU, bf16 on a GPU that has it, else fp16. On the CPU fp32 is what makes
results the same on every machine, with or without native bf16, and it is also not slower for training: on a
2-core CPU with AVX512-BF16 and AMX, efficientnet_lite0's training step ran 1.2x faster in fp32 than under bf16
autocast at 128 px and as fast at 224 px (benchmarks/bench_precision.py; its depthwise convolutions gain nothing
from bf16), so an earlier "bf16 where native" rule for training made runs slower and machine-dependent.
`--precision bf16` still trains or predicts in bf16 on a CPU when asked.
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


def gpu_has_bf16() -> bool:
    """Whether the CUDA GPU computes bfloat16 in hardware (else "auto" takes fp16 there)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(precision: str, device: str) -> str:
    """For prediction and training alike: "auto" -> bf16 on a GPU that has it (else fp16), fp32 on the CPU (see the
    module's docstring for why). An explicit choice is kept; fp16 needs a GPU."""
    if precision == "auto":
        if device.startswith("cuda"):
            return "bf16" if gpu_has_bf16() else "fp16"
        return "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        raise ProtlocError("--precision fp16: needs a CUDA device (on the CPU use fp32, or bf16)")
    if precision not in PRECISIONS:
        raise ProtlocError(f"--precision {precision}: expected {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}")
    return precision


def autocast_dtype(precision: str):
    """The torch dtype autocast computes in for a resolved precision; None for fp32 (no autocast)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
