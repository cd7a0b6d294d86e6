"""The shape the code keeps: short modules and functions, each run-folder file name typed once, and imports that
run one way, from the command line down to the run-folder format, without a cycle."""
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


def test_each_run_folder_name_is_a_literal_in_run_names_py_alone():
    assert {"config.json", "model.safetensors", "metrics.csv", "checkpoints"} <= set(RUN_FOLDER_NAMES)
    modules_by_name: dict[str, set[str]] = {name: set() for name in RUN_FOLDER_NAMES}
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in modules_by_name:
                modules_by_name[node.value].add(str(path.relative_to(SOURCE)))
    # torch.hub keeps downloaded weights in its own "checkpoints" folder: the same word, not the run folder's.
    modules_by_name["checkpoints"].discard("models/backbones/weights.py")
    assert {name: sorted(modules) for name, modules in modules_by_name.items() if modules != {"run_names.py"}} == {}


# The packages and top-level modules of protloc, lowest first: a module imports from its own layer or lower ones,
# never from a higher one (lazy imports inside functions count too). A new top-level module or package goes into
# the layer of what it needs and of what needs it.
LAYERS = (
    {"errors", "run_names"},  # run_names: a run folder's names, without imports
    # vocabulary and plain tools; figures without pyplot (map_figures: class maps drawn, for inference's Explanation)
    {"files", "labels", "devices", "allocator", "plots", "map_figures", "progress", "lightning_quiet"},
    {"data"},  # files to tables and tensors
    {"runs", "training_outcome", "training_data", "cells"},  # the run-folder format and its records; cells
    {"models"},  # networks, their weights and ensembles
    {"inference"},  # a run's probabilities and labels
    {"metrics", "tuning"},  # scores of labels, thresholds as deployed; retuning a run's thresholds
    {"training"},
    {"reports"},
    {"service"},
    {"commands", "cli", "api", "__main__", "__init__"},  # the doors: the command line and protloc.load
)


def module_name(path: Path) -> str:
    parts = ["protloc", *path.relative_to(SOURCE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The protloc modules `path` imports anywhere in its code (a package's __init__ for `from package import`)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
    # `from protloc import __version__` reads the package's version, not a layer's code.
    return {module for module in found if module in modules and module not in (name, "protloc")}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in python_files()}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(index for index, layer in enumerate(LAYERS) if top in layer)


def test_every_top_level_module_has_a_layer():
    tops = {name.split(".")[1] if "." in name else "__init__" for name in import_graph()}
    assert sorted(tops - set().union(*LAYERS)) == []


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{module} -> {target}" for module, targets in import_graph().items() for target in sorted(targets)
              if layer_of(target) > layer_of(module)]
    assert upward == []


def test_imports_have_no_cycle():
    graph = import_graph()
    cycles, state = [], {}  # state: 1 while a module's imports are walked, 2 when done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [module, target]) if target in path
                              else f"{module} -> {target}")
            elif target not in state:
                walk(target, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [])
    assert cycles == []


def test_runs_py_imports_neither_inference_nor_training():
    assert not {target for target in import_graph()["protloc.runs"]
                if target.startswith(("protloc.inference.", "protloc.training."))}


def test_benchmarks_hold_at_most_ten_python_files():
    # What `make benchmark` runs and what the README quotes; one-off checks live in tools/.
    benchmarks = SOURCE.parents[1] / "benchmarks"
    assert len(sorted(benchmarks.glob("*.py"))) <= 10
