"""`protloc serve`: its options and its one-line errors (the running server it starts: test_server.py)."""
from __future__ import annotations

import socket

import pytest

from protloc.cli import main
from protloc.service.server import default_allowed_hosts


def test_help_lists_the_engine_limit_and_access_options(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for option in ("--host", "--port", "--engine", "--device", "--precision", "--batch-size", "--workers",
                   "--max-bytes", "--max-pixels", "--max-connections", "--timeout", "--allowed-host", "--cors-origin"):
        assert option in text


def test_a_missing_run_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "absent"), "--port", "0", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == f"protloc: error: {tmp_path / 'absent'}: no such run folder " \
                                              "(expected the --out folder of protloc train)"


def test_a_port_in_use_is_a_one_line_error(run_dir, capsys):
    from protloc.inference.onnx_export import run_onnx_session
    from protloc.runs import load_config

    # The CPU engine exports the run's model.onnx on first use, with a line of its own: done here first, so that
    # serve's output is its error alone whichever tests (or none) used this run before.
    run_onnx_session(run_dir, load_config(run_dir))
    capsys.readouterr()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(run_dir), "--port", str(port), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"protloc: error: cannot listen on 127.0.0.1:{port}") and error.count("\n") == 1


@pytest.mark.parametrize("option", ["--max-bytes=0", "--max-connections=-1", "--timeout=0", "--port=70000"])
def test_out_of_range_options_are_refused(run_dir, option, capsys):
    try:
        code = main(["serve", str(run_dir), option, "--device", "cpu"])
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    assert "error" in capsys.readouterr().err


def test_hosts_allowed_by_default_are_the_addresses_served_on():
    assert default_allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "::1"]
    assert default_allowed_hosts("192.0.2.7") == ["192.0.2.7"]
    everywhere = default_allowed_hosts("0.0.0.0")
    assert {"127.0.0.1", "localhost", socket.gethostname()} <= set(everywhere) and "*" not in everywhere
