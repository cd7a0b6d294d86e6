"""protloc itself, for bench_pipeline.py: whole CLI runs with their memory, and prediction's steady state."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from protloc.inference.predictor import OnnxEngine, Predictor, TorchEngine


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as file:
                    if int(file.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _tree(pid: int) -> list[int]:
    pids, frontier = [pid], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in _children(parent)]
        pids += frontier
    return pids


def _memory_kb(pid: int) -> dict[str, int]:
    """Rss, Pss, and Private/Shared (clean + dirty) of a process, in kB."""
    fields = {"Rss": "Rss", "Pss": "Pss", "Private_Clean": "Private", "Private_Dirty": "Private",
              "Shared_Clean": "Shared", "Shared_Dirty": "Shared"}
    values = dict.fromkeys(("Rss", "Pss", "Private", "Shared"), 0)
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                key, _, rest = line.partition(":")
                if key in fields:
                    values[fields[key]] += int(rest.split()[0])
    except OSError:
        pass
    return values


def tree_memory_kb(pid: int) -> tuple[int, int, int]:
    """(own, PSS, RSS) of a process tree in kB. own: every process's private pages plus the largest shared set
    once (the libraries and the pages forked workers share with their parent): the memory the tree needs, not
    counting other programs that map the same libraries, as PSS does, nor counting shared pages per process, as
    summed RSS does."""
    processes = [_memory_kb(member) for member in _tree(pid)]
    if not processes:
        return 0, 0, 0
    own = sum(p["Private"] for p in processes) + max(p["Shared"] for p in processes)
    return own, sum(p["Pss"] for p in processes), sum(p["Rss"] for p in processes)


KIB_PER_GIB = 1024 ** 2  # /proc reports kB, which are KiB


def compaction_stalls() -> int:
    """The kernel's count of direct memory compactions a page fault waited for (/proc/vmstat compact_stall), 0 where
    unknown. With transparent huge pages on request and defrag "madvise", the huge pages `protloc train` asks for
    are compacted for at fault time when free memory is fragmented: a suspect for runs of one code whose
    fine-tuning speeds differ by up to a factor of two (benchmarks/RESULTS.md)."""
    try:
        with open("/proc/vmstat") as file:
            return next((int(line.split()[1]) for line in file if line.startswith("compact_stall ")), 0)
    except OSError:
        return 0


@dataclass
class Measured:
    seconds: float
    peak_gib: float  # see tree_memory_kb
    peak_pss_gib: float
    peak_rss_gib: float
    compaction_stalls: int = 0  # machine-wide, while the command ran
    user_s: float = 0.0  # CPU seconds of the command's process (and the children it waited for), in user space
    system_s: float = 0.0  # ... in the kernel: page faults, and direct compaction for huge pages among them
    load: float = 0.0  # the machine's 1-minute load average as the command ended: other work beside it

    @property
    def system_share(self) -> float:
        return self.system_s / max(self.user_s + self.system_s, 1e-9)


def run_measured(command: list[str], log: Path, *, sample_memory: bool = True) -> Measured:
    """Run `command`, sampling the memory of its whole process tree (loader workers included) once a second.

    Sampling is not free: reading a process's page maps takes its memory lock, and at 5 samples a second it
    slowed fine-tuning by a third (measured). Runs whose speed is reported run without it (`sample_memory`)."""
    peak = [0, 0, 0]
    stalls = compaction_stalls()
    start = time.perf_counter()
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample():
            while sample_memory and not done.wait(1.0):
                peak[:] = [max(old, new) for old, new in zip(peak, tree_memory_kb(process.pid))]

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)  # the command's own CPU time, apart from this process's
        process.returncode = code = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    seconds = time.perf_counter() - start
    if code != 0:
        sys.exit(f"benchmark: {' '.join(command)} failed (exit {code}); see {log}")
    return Measured(seconds, *(kib / KIB_PER_GIB for kib in peak), compaction_stalls=compaction_stalls() - stalls,
                    user_s=usage.ru_utime, system_s=usage.ru_stime, load=os.getloadavg()[0])


def protloc_command(*arguments) -> list[str]:
    return [sys.executable, "-m", "protloc", *map(str, arguments)]


def train_run(data: Path, out: Path, cache_dir: Path, *, image_size: int, batch_size: int, epochs_frozen: int,
              epochs: int, extra: tuple = (), sample_memory: bool = False,
              precision: str = "fp32") -> tuple[Measured, pd.DataFrame]:
    """`protloc train`, in `precision`: fp32 for the CPU table, whose limits and seed-style loop are fp32 (what
    "auto" gives on the CPU, named so that the table stays comparable if that changes)."""
    command = protloc_command("train", data, "--out", out, "--image-size", image_size, "--batch-size", batch_size,
                              "--epochs-frozen", epochs_frozen, "--epochs", epochs, "--cache-dir", cache_dir,
                              "--precision", precision, *extra)
    measured = run_measured(command, out.with_suffix(".log"), sample_memory=sample_memory)
    return measured, pd.read_csv(out / "metrics.csv")


class TimedTorchEngine(TorchEngine):
    """Records when each batch's probabilities (and outlier scores) are ready, for the steady state after the first
    batch. `scored` is what Predictor.predict_table calls."""

    stamps: list

    def scored(self, images):
        result = super().scored(images)
        self.stamps.append((time.perf_counter(), len(images)))
        return result


class TimedOnnxEngine(OnnxEngine):
    stamps: list

    def scored(self, images):
        result = super().scored(images)
        self.stamps.append((time.perf_counter(), len(images)))
        return result


def steady_rate(stamps, skip: int) -> float:
    """Images per second from the end of batch `skip` to the last's: loader start-up, warm-up and the batches the
    workers had ready in advance (prefetched while the first ran) left out."""
    skip = min(skip, len(stamps) - 2)
    (first, _), (last, _) = stamps[skip], stamps[-1]
    return sum(count for _, count in stamps[skip + 1:]) / (last - first)


def predict_rate(engine, table, config, cache, *, batch_size: int, workers: int) -> float:
    """Steady-state images per second of `Predictor.predict_table`, as `protloc predict` runs it."""
    engine.stamps = []
    Predictor(config, engine, cache=cache).predict_table(table, batch_size=batch_size, workers=workers)
    return steady_rate(engine.stamps, skip=max(1, 2 * workers))  # DataLoader's prefetch_factor is 2


def median_and_spread(values) -> tuple[float, float]:
    """(median, half the range) of repeated measurements of one figure."""
    values = list(values)
    return statistics.median(values), (max(values) - min(values)) / 2


def medians(measurements: list[dict]) -> dict:
    """{key: (median, half the range)} over repeated measurements of the same figures."""
    return {key: median_and_spread(m[key] for m in measurements) for key in measurements[0]}
