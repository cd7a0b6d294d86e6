"""Several `protloc` commands in a row in each of two processes, started once:
`python -m tests.commands_in_two_processes PLAN.json`, PLAN.json holding {"outputs": FOLDER,
"first_alone": [argv, ...], "commands": [argv, ...]}, each of "commands" with --devices 2.

The "first_alone" commands run in the first process before anything is launched (commands that must refuse to
start; the second process skips them). The first of "commands" then starts the second process through
Lightning's launcher, as `python -m protloc ... --devices 2` does: the launcher runs this command line again, so
both processes run the same commands. The launch's environment (LOCAL_RANK, MASTER_ADDR, MASTER_PORT, WORLD_SIZE)
stays in both, as a launcher such as torchrun sets it, and the later commands find their processes started and
their process group made (a script run as one process per device, as inference/distributed.py allows). One
start of two processes, each importing torch and Lightning, instead of one per command.

Each command's standard output and error go to FOLDER/NAME.out and NAME.err, its exit code to NAME.code, where
NAME is alone-N for "first_alone" and rank-R-command-N for "commands". A command of "commands" that fails ends the
process with its code.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path


def run_command(argv: list[str], stem: Path) -> int:
    from protloc.cli import main

    with open(stem.with_suffix(".out"), "w") as out, open(stem.with_suffix(".err"), "w") as err, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    stem.with_suffix(".code").write_text(str(code))
    return code


def run_plan(plan_file: str) -> int:
    plan = json.loads(Path(plan_file).read_text())
    outputs = Path(plan["outputs"])
    rank = os.environ.get("LOCAL_RANK")  # the second process is started with it; the first sets it on launching
    if rank is None:
        for number, argv in enumerate(plan.get("first_alone", [])):
            run_command(argv, outputs / f"alone-{number}")
    for number, argv in enumerate(plan["commands"]):
        code = run_command(argv, outputs / f"rank-{os.environ.get('LOCAL_RANK', '0')}-command-{number}")
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run_plan(sys.argv[1]))
