"""The shape the code keeps: short modules and functions, and each run-folder file name typed once."""
from __future__ import annotations

import ast
from pathlib import Path

import protloc
from protloc import runs

SOURCE = Path(protloc.__file__).parent
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
RUN_FOLDER_NAMES = [value for name, value in vars(runs).items()
                    if name.endswith(("_FILE", "_DIR", "_CHECKPOINT", "_PREFIX")) and isinstance(value, str)]


def python_files() -> list[Path]:
    return sorted(SOURCE.rglob("*.py"))


def test_no_module_is_longer_than_the_limit():
    long = [f"{path.relative_to(SOURCE)}: {lines}" for path in python_files()
            if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES]
    assert long == []


def test_no_function_is_longer_than_the_limit():
    long = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SOURCE)}:{node.lineno} {node.name}: {lines}")
    assert long == []


def test_each_run_folder_name_is_a_literal_in_runs_py_alone():
    assert {"config.json", "model.safetensors", "metrics.csv", "checkpoints"} <= set(RUN_FOLDER_NAMES)
    modules_by_name: dict[str, set[str]] = {name: set() for name in RUN_FOLDER_NAMES}
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in modules_by_name:
                modules_by_name[node.value].add(str(path.relative_to(SOURCE)))
    # torch.hub keeps downloaded weights in its own "checkpoints" folder: the same word, not the run folder's.
    modules_by_name["checkpoints"].discard("models/backbones/weights.py")
    assert {name: sorted(modules) for name, modules in modules_by_name.items() if modules != {"runs.py"}} == {}
