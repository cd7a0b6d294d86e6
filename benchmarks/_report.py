"""The markdown table of bench_pipeline.py, and the done-criteria it checks."""
from __future__ import annotations

import os
import platform

import torch

ZERO_TO_GANS_TRAIN = 19_236


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def print_machine() -> None:
    flags = cpu_flags()
    bf16 = "native bf16 (avx512_bf16/amx)" if flags & {"avx512_bf16", "amx_bf16"} else "no native bf16: fp32"
    simd = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {simd}, {bf16}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def row(name: str, protloc, limit: float | None = None, limit_name: str = "", seed=None) -> str:
    """A table row; `protloc` and `seed` are one figure or (median, spread) of repeated ones."""
    protloc, spread = protloc if isinstance(protloc, tuple) else (protloc, None)
    seed = seed[0] if isinstance(seed, tuple) else seed
    protloc_cell = f"{protloc:.1f}" + (f" ± {spread:.1f}" if spread is not None else "")
    limit_cell = f"{limit:.1f} ({limit_name})" if limit else "-"
    seed_cell = f"{seed:.1f}" if seed else "-"
    return (f"| {name} | {protloc_cell} | {limit_cell} | {ratio(protloc, limit) if limit else '-'} | {seed_cell} | "
            f"{ratio(protloc, seed) if seed else '-'} |")


def training_speeds(training) -> dict:
    """Epoch speeds (images/s), each (median, spread): fine-tuning (epoch 3) and the frozen epochs (1 and 2) of the
    warm runs; the cold runs' first frozen epoch and fine-tuning (their pre-training check filled the cache)."""
    from _runs import median_and_spread

    warm = [metrics.set_index("epoch")["images_per_second"] for metrics in training["warm_metrics"]]
    cold = [metrics.set_index("epoch")["images_per_second"] for metrics in training["cold_metrics"]]
    return {"finetune": median_and_spread([epochs[3] for epochs in warm]),
            "frozen": median_and_spread([epochs[epoch] for epochs in warm for epoch in (1, 2)]),
            "cold_frozen": median_and_spread([epochs[1] for epochs in cold]),
            "cold_finetune": median_and_spread([epochs[3] for epochs in cold])}


def head_only_rate(training) -> tuple[float, float]:
    """The --head-only-features runs' frozen-phase speed, (median, spread)."""
    from _runs import median_and_spread

    return median_and_spread([float(metrics.loc[metrics["phase"] == "frozen", "images_per_second"].mean())
                              for metrics in training["head_only_metrics"]])


def median_seconds(measured) -> float:
    import statistics

    return statistics.median(m.seconds for m in measured)


def combined(*rates: float) -> float:
    """Throughput of steps done one after another on the same cores: 1 / (sum of seconds per image)."""
    return 1.0 / sum(1.0 / r for r in rates)


def final_f1(run_dir) -> tuple[float, float]:
    """(macro F1 of the last epoch at 0.5, of the kept model with tuned thresholds)."""
    import pandas as pd

    from protloc.runs import load_config

    metrics = pd.read_csv(run_dir / "metrics.csv")
    return float(metrics["val_f1_macro"].iloc[-1]), float(load_config(run_dir).training.val_tuned["f1_macro"])


def print_cpu_table(args, cpu, seed, training, features, predict, load_before, load_after) -> None:
    """`cpu`: limits for the training rows ("train"), for the prediction rows ("predict"), and each measurement."""
    speeds = training_speeds(training)
    head_rate = head_only_rate(training)
    train, infer = cpu["train"], cpu["predict"]
    decode_forward = combined(predict["decode"], infer["forward"])
    rounds = args.rounds
    lines = [
        "",
        f"### CPU: {args.backbone} at {args.image_size} px, batch {args.batch_size}, fp32 (images/s; median of "
        f"{rounds} ± half the range)",
        "",
        "| step | protloc | limit (what) | protloc / limit | seed-style loop | protloc / seed-style |",
        "|---|---|---|---|---|---|",
        row(f"fine-tune epoch (cache warm; {rounds} runs)", speeds["finetune"], train["finetune"],
            "compute-only epoch", seed["finetune"]),
        row(f"frozen-backbone epoch, augmented (cache warm; {2 * rounds} epochs of {rounds} runs)", speeds["frozen"],
            train["forward"], "forward only", seed["frozen"]),
        row(f"cold runs: first frozen epoch (the pre-training check filled the cache; {rounds} runs)",
            speeds["cold_frozen"], train["forward"], "forward only", seed["frozen"]),
        row("cold runs: their fine-tune epoch", speeds["cold_finetune"], train["finetune"], "compute-only epoch",
            seed["finetune"]),
        row(f"frozen epoch, --head-only-features (head on features; {rounds} runs)", head_rate, None, "", seed["frozen"]),
        row("  its one-off feature pass (images from the cache)", features, train["forward"], "forward only"),
        row("predict steady state, torch, cold cache", predict["torch_cold"], decode_forward, "decode + forward"),
        row("predict steady state, torch, warm cache", predict["torch_warm"], infer["forward"], "forward only"),
    ]
    if "onnx_cold" in predict:
        decode_onnx = combined(predict["decode"], predict["onnx_forward"])
        lines += [
            row("predict steady state, ONNX Runtime, cold cache", predict["onnx_cold"], decode_onnx, "decode + ORT forward"),
            row("predict steady state, ONNX Runtime, warm cache", predict["onnx_warm"], predict["onnx_forward"],
                "ORT forward"),
        ]
    print("\n".join(lines))
    print_summary(args, cpu, seed, training, features, predict, head_rate[0])
    print(f"\nload average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")


def print_training_runs(training) -> None:
    """Each training run's fine-tune speed beside what else moved while it ran."""
    print("  each scale*N training run: fine-tune images/s; direct compactions the kernel stalled for; share of its "
          "CPU time in the kernel; load average at its end:")
    for kind in ("cold", "warm"):
        for measured, metrics in zip(training[kind], training[f"{kind}_metrics"]):
            print(f"    {kind}: {metrics.set_index('epoch')['images_per_second'][3]:.1f}; {measured.compaction_stalls}; "
                  f"{measured.system_share:.0%}; {measured.load:.2f}")


def print_summary(args, cpu, seed, training, features, predict, head_rate) -> None:
    speeds = training_speeds(training)
    finetune, frozen = speeds["finetune"][0], speeds["frozen"][0]
    small, big = median_seconds(training["small"]), median_seconds(training["cold"])
    watched = max(training["head_only"], key=lambda measured: measured.peak_gib)
    n_large = args.n * args.scale
    startups = {name: median_seconds(predict[f"cli_{name}"]) - predict["n"] / predict[f"{name}_cold"][0]
                for name in ("torch", "onnx") if f"cli_{name}" in predict}
    print("\nlimits (images/s) measured in a new process just before and after the scale*N training runs and the "
          "feature pass (the training rows use the mean of these two), then in the benchmark's process just before "
          "and after prediction (the prediction rows):")
    for key, name in (("finetune", "compute-only fine-tune epoch (first step included)"),
                      ("finetune_steady", "the same epoch's steps after the first"),
                      ("frozen_step", "frozen step (no_grad backbone)"), ("forward", "forward only")):
        print(f"  {name}: " + ", ".join(f"{m[key]:.1f}" for m in cpu["each"]))
    train = cpu["train"]
    print_training_runs(training)
    print(f"  fine-tune epoch against the steady-state limit (steps after the first): "
          f"{finetune / train['finetune_steady']:.2f}x")
    print(f"  PNG decode + resize on all cores: {predict['decode']:.1f}")
    for name, startup in startups.items():
        print(f"predict start-up, --engine {name} (CLI wall {median_seconds(predict[f'cli_{name}']):.1f} s for "
              f"{predict['n']} new images, less their cold steady-state time; median of {args.rounds}): {startup:.1f} s")
    print(f"training peak memory of the process tree, loader workers included (private pages + shared once; PSS, "
          f"RSS sum in brackets), sampled each second in the --head-only-features runs at {n_large} images, the "
          f"highest of {args.rounds}: {watched.peak_gib:.2f} GiB ({watched.peak_pss_gib:.2f}, "
          f"{watched.peak_rss_gib:.2f}); {watched.peak_gib * 2 ** 30 / 1e9:.2f} GB in powers of ten")
    print(f"cost of `protloc train --epochs-frozen 2 --epochs 1` on a fresh cache (wall, start-up included; median of "
          f"{args.rounds}): {small:.1f} s at N={args.n}, {big:.1f} s at {n_large}: {big / small:.2f}x for "
          f"{args.scale}x the images")
    frozen_seconds = 2 * n_large * 0.9 / frozen
    shortcut_seconds = n_large / features[0] + 2 * n_large * 0.9 / head_rate
    print(f"frozen phase of the {n_large}-image run: augmented ~{frozen_seconds:.1f} s (2 warm epochs), head-only "
          f"~{shortcut_seconds:.1f} s (feature pass + 2 epochs)")
    for name, label in (("run-large", "augmented frozen phase"), ("run-head-only", "--head-only-features")):
        last, tuned = final_f1(training["work"] / name)
        print(f"validation macro F1 after the whole run, {label}: {last:.3f} at 0.5 (last epoch), {tuned:.3f} tuned (kept epoch)")
    print(f"projected Zero-to-GANs epoch ({ZERO_TO_GANS_TRAIN:,} images) on this machine: fine-tune "
          f"{ZERO_TO_GANS_TRAIN / finetune / 60:.1f} min, frozen {ZERO_TO_GANS_TRAIN / frozen / 60:.1f} min "
          f"(plus, once, decoding every image: {ZERO_TO_GANS_TRAIN / predict['decode'] / 60:.1f} min on all cores), "
          f"head-only frozen epoch "
          f"{ZERO_TO_GANS_TRAIN / head_rate:.0f} s after a {ZERO_TO_GANS_TRAIN / features[0] / 60:.1f} min feature pass")
    print_criteria(cpu, seed, finetune, frozen, head_rate, predict, small, big, watched, args)


def print_criteria(cpu, seed, finetune, frozen, head_rate, predict, small, big, watched, args) -> None:
    """The done-criteria on the medians; `small` and `big` are seconds."""
    train, infer = cpu["train"], cpu["predict"]
    checks = [
        ("fine-tune >= 0.95x compute-only", finetune / train["finetune"] >= 0.95),
        ("fine-tune >= 2x seed-style", finetune / seed["finetune"][0] >= 2),
        ("augmented frozen >= 0.75x forward-only", frozen / train["forward"] >= 0.75),
        ("head-only frozen >= 10x seed-style frozen", head_rate / seed["frozen"][0] >= 10),
        ("predict (cold, torch) >= 0.85x decode + forward",
         predict["torch_cold"][0] / combined(predict["decode"], infer["forward"]) >= 0.85),
        *([("predict (cold, ONNX Runtime: predict's default on the CPU) >= 0.85x decode + ORT forward",
            predict["onnx_cold"][0] / combined(predict["decode"], predict["onnx_forward"]) >= 0.85)]
          if "onnx_cold" in predict else []),
        ("training peak memory < 4 GB (powers of ten, so also < 4 GiB)", watched.peak_gib * 2 ** 30 < 4e9),
        (f"cost at {args.scale}N within {1.1 * args.scale:.1f}x of N", big / small <= 1.1 * args.scale),
    ]
    print("\ncriteria: " + "; ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in checks))
