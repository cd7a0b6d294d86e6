"""`make benchmark`: protloc's speed table on this machine (bench_pipeline.py; its options pass through).

    python benchmarks/run_all.py [--n 128] [--scale 4] [...]      the table, a few minutes
    python benchmarks/run_all.py --all [...]                       then every other bench_*.py too
"""
import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
arguments = [argument for argument in sys.argv[1:] if argument != "--all"]
subprocess.run([sys.executable, str(here / "bench_pipeline.py"), *arguments], check=True)
if "--all" in sys.argv[1:]:
    for script in sorted(here.glob("bench_*.py")):
        if script.name != "bench_pipeline.py":
            print(f"\n== {script.name}", flush=True)
            subprocess.run([sys.executable, str(script)], check=True)
