"""Several `protloc` commands in a row in each of two processes, started once:
`python -m tests.inference.commands_in_two_processes PLAN.json`, PLAN.json holding {"outputs": FOLDER,
"commands": [argv, ...]}, each argv with --devices 2.

The first command starts the second process through Lightning's launcher, as `python -m protloc ... --devices 2`
does: the launcher runs this command line again, so both processes run the same commands. The launch's
environment (LOCAL_RANK, MASTER_ADDR, MASTER_PORT, WORLD_SIZE) then stays in both, as a launcher such as torchrun
sets it, and the later commands find their processes already started and their process group made (a script run
as one process per device, as inference/distributed.py allows). One start of two processes, each importing torch
and Lightning, instead of one per command.

Each command's standard output goes to FOLDER/rank-R-command-N.txt and its exit code to FOLDER/rank-R-command-N.code;
the first command that fails ends the process with its code.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path


def run_plan(plan_file: str) -> int:
    from protloc.cli import main

    plan = json.loads(Path(plan_file).read_text())
    outputs = Path(plan["outputs"])
    rank = os.environ.get("LOCAL_RANK", "0")  # the second process is started with it; the first sets it on launching
    for number, argv in enumerate(plan["commands"]):
        stem = outputs / f"rank-{rank}-command-{number}"
        with open(stem.with_suffix(".txt"), "w") as output, contextlib.redirect_stdout(output):
            code = main(argv)
        stem.with_suffix(".code").write_text(str(code))
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run_plan(sys.argv[1]))
