"""devices.py, the one place for --device and --precision: their words, and the one "auto" policy."""
from __future__ import annotations

import pytest

from protloc.devices import (LIGHTNING_PRECISIONS, PRECISIONS, autocast_dtype, check_device_name,
                             resolve_device, resolve_precision)
from protloc.errors import ProtlocError


def test_device_names_are_checked_before_torch_is_asked():
    assert [check_device_name(name) for name in ("auto", "cpu", "cuda", "cuda:1")] == ["auto", "cpu", "cuda", "cuda:1"]
    for bad in ("gpu", "cpu:0", "cuda:x"):
        with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
            check_device_name(bad)
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ProtlocError, match="--device gpu: expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")


def test_auto_is_fp32_on_every_cpu_for_prediction_and_training_alike():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ProtlocError, match="--precision fp16: needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ProtlocError, match="--precision 32-true: expected auto, fp32, bf16 or fp16"):
        resolve_precision("32-true", "cpu")


def test_each_precision_has_lightnings_name_and_an_autocast_dtype():
    import torch

    assert PRECISIONS == ("auto", *LIGHTNING_PRECISIONS)
    assert LIGHTNING_PRECISIONS == {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
    assert [autocast_dtype(name) for name in LIGHTNING_PRECISIONS] == [None, torch.bfloat16, torch.float16]
