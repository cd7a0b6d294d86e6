"""`make benchmark`: protloc's speed table on this machine (bench_pipeline.py; its options pass through).

    python benchmarks/run_all.py [--n 128] [--scale 4] [--rounds 3] [...]   the table, about 15 minutes
    python benchmarks/run_all.py --all [...]                               then bench_precision.py and bench_service.py
"""
import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
arguments = [argument for argument in sys.argv[1:] if argument != "--all"]
subprocess.run([sys.executable, str(here / "bench_pipeline.py"), *arguments], check=True)
if "--all" in sys.argv[1:]:
    for name in ("bench_precision.py", "bench_service.py"):
        print(f"\n== {name}", flush=True)
        subprocess.run([sys.executable, str(here / name)], check=True)
