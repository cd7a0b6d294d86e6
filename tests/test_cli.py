"""The command line speaks one vocabulary: the same device options wherever a model runs, help for every option."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from protloc.cli import build_parser

# Every command that runs a model. train takes the shared device options too once it uses add_device_options.
MODEL_COMMANDS = ("predict", "tune", "evaluate", "explain", "embed", "serve", "report", "train")
NO_DEFAULT_TO_SHOW = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction,
                      argparse._VersionAction)


def commands() -> dict[str, argparse.ArgumentParser]:
    subparsers = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return dict(subparsers.choices)


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((action for action in parser._actions if flag in action.option_strings), None)


def device_vocabulary(parser: argparse.ArgumentParser) -> dict:
    """What --device and --precision accept and default to."""
    device, precision = option(parser, "--device"), option(parser, "--precision")
    return {flag: None if action is None else (action.type, action.choices, action.default)
            for flag, action in (("--device", device), ("--precision", precision))}


def shows_default(action: argparse.Action) -> bool:
    """The help says the default: through %(default)s, or spelt out as "default VALUE"."""
    return "%(default)" in action.help or re.search(rf"default:? {re.escape(str(action.default))}\b", action.help) is not None


def reference_vocabulary() -> dict:
    from protloc.commands._options import add_device_options

    parser = argparse.ArgumentParser()
    add_device_options(parser)
    return device_vocabulary(parser)


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_every_command_that_runs_a_model_takes_the_same_device_and_precision(name):
    parser = commands()[name]
    assert device_vocabulary(parser) == reference_vocabulary()
    for value in ("auto", "cpu", "cuda", "cuda:1"):
        assert option(parser, "--device").type(value) == value
    with pytest.raises(argparse.ArgumentTypeError):
        option(parser, "--device").type("gpu")
    assert option(parser, "--precision").choices == ("auto", "fp32", "bf16", "fp16")


@pytest.mark.parametrize("name", list(commands()))
def test_every_option_has_help_and_shows_its_default(name):
    parser = commands()[name]
    shows_defaults = issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    missing_help, hidden_default = [], []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        where = "/".join(action.option_strings) or action.dest
        if not action.help or action.help == argparse.SUPPRESS:
            missing_help.append(where)
        elif (action.default is not None and not isinstance(action, NO_DEFAULT_TO_SHOW)
              and not shows_defaults and not shows_default(action)):
            hidden_default.append(where)
    assert missing_help == []
    assert hidden_default == []


@pytest.mark.parametrize("argv", [
    ["demo-data", "--out", "D"],
    ["convert", "hpa2018-to-hpa10", "SRC", "--out", "D"],
    ["export", "RUN", "--out", "f.onnx"],
    ["explore", "DATA", "--out", "D", "--subset", "test"],
    ["embed", "RUN", "DATA", "--out", "f.parquet", "--subset", "test"],
])
def test_outputs_are_named_by_out_and_train_or_test_by_subset(argv):
    args = build_parser().parse_args(argv)
    assert args.out in ("D", "f.onnx", "f.parquet")
    if "--subset" in argv:
        assert args.subset == "test"


@pytest.mark.parametrize("argv", [
    ["demo-data", "D"],
    ["convert", "hpa2018-to-hpa10", "SRC", "D"],
    ["export", "RUN", "--onnx", "f.onnx"],
    ["explore", "DATA", "--out", "D", "--split", "test"],
])
def test_the_old_spellings_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_the_installed_command_keeps_exit_codes_and_short_errors(tmp_path):
    """`protloc` as installed (its console script, which calls `run`) and `python -m protloc`, as processes."""
    script = Path(sys.executable).parent / "protloc"
    missing = tmp_path / "no-such-folder"
    for command in ([str(script)], [sys.executable, "-m", "protloc"]):
        result = subprocess.run([*command, "check", str(missing)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and str(missing) in result.stderr and "Traceback" not in result.stderr
        version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
        assert version.returncode == 0 and version.stdout.startswith("protloc ")


def test_positional_arguments_are_named_in_one_vocabulary():
    """RUN, DATA, IMAGE...: upper case in every usage line, and --subset has one default wherever it is."""
    for name, parser in commands().items():
        for action in parser._actions:
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                shown = action.metavar or action.dest
                assert shown.isupper(), f"{name}: positional {shown!r}"
    subsets = {name: option(parser, "--subset").default for name, parser in commands().items() if option(parser, "--subset")}
    assert set(subsets) >= {"explain", "explore", "embed"} and set(subsets.values()) == {"train"}


def test_train_usage_shows_out_as_required():
    usage = commands()["train"].format_usage()
    assert "DATA --out RUN" in usage and "[--out" not in usage and "--resume RUN" in usage


def test_help_imports_no_heavy_library():
    """`protloc COMMAND --help` must answer at once, on a busy machine too: registering the commands imports none of
    the heavy libraries, numpy and pandas included (their import alone takes seconds when the CPU is shared); each
    command imports them when it runs."""
    heavy = ("torch", "lightning", "timm", "torchvision", "matplotlib", "sklearn", "fastapi", "onnxruntime", "umap",
             "pandas", "numpy", "PIL")
    code = ("import sys; from protloc.cli import build_parser; build_parser(); "
            f"print(' '.join(name for name in {heavy!r} if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []
