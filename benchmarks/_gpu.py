"""The GPU section of bench_pipeline.py, run when torch sees CUDA: the same rows on the device, in bf16 (fp16 where
bf16 is missing) with channels_last, as `--precision auto` trains and predicts there.

On a GPU an epoch of a few hundred images takes about a second, so loader start-up weighs on these rows:
use a larger --n (e.g. --n 2048) for steady-state numbers.
"""
from __future__ import annotations

import os

import torch

import _limits as limits
import _report as report
import _runs as runs


def run_gpu_section(args, large, work) -> None:
    from protloc.data.cache import open_image_cache
    from protloc.data.readers import read_dataset
    from protloc.models.run_weights import load_run

    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    print(f"\nGPU: {torch.cuda.get_device_name(0)}, {str(dtype).removeprefix('torch.')} autocast, channels_last", flush=True)
    gpu = measure_gpu_limits(args, dtype)
    settings = dict(image_size=args.image_size, batch_size=args.batch_size, epochs_frozen=2, epochs=1)
    # The CPU section's large run filled this cache: these epochs read decoded images, as later epochs do.
    measured, metrics = runs.train_run(large, work / "run-gpu", work / "cache-large", **settings,
                                       extra=("--device", "cuda", "--workers", str(min(8, os.cpu_count() or 1))),
                                       precision="auto")
    speed = metrics.set_index("epoch")["images_per_second"]
    config, model = load_run(work / "run-gpu")
    engine = runs.TimedTorchEngine(model, device="cuda", precision="auto")
    table = read_dataset(large, split="train")
    predict = runs.predict_rate(engine, table, config, open_image_cache(work / "cache-large"),
                                batch_size=args.batch_size, workers=min(8, os.cpu_count() or 1))
    print("\n".join([
        "",
        "| step | protloc | limit (what) | protloc / limit | seed-style loop | protloc / seed-style |",
        "|---|---|---|---|---|---|",
        report.row("fine-tune epoch (cache warm)", speed[3], gpu["finetune"], "compute only"),
        report.row("frozen-backbone epoch, augmented (cache warm)", speed[2], gpu["forward"], "forward only"),
        report.row("predict steady state, warm cache", predict, gpu["forward"], "forward only"),
    ]))
    print(f"GPU run wall time {measured.seconds:.1f} s; device memory peak {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB in this process")


def measure_gpu_limits(args, dtype) -> dict:
    batches = limits.memory_batches(4, args.batch_size, args.image_size, 10, "cuda")
    model = limits.fresh_model(args.backbone, 10, "cuda")
    forward = limits.forward_limit(model, batches, steps=50, device="cuda", dtype=dtype)
    model = limits.fresh_model(args.backbone, 10, "cuda")
    finetune = limits.train_step_limit(model, batches, frozen=False, steps=30, device="cuda", dtype=dtype)
    return {"forward": forward, "finetune": finetune}
