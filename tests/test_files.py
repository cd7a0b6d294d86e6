"""Outputs are written whole or not at all, with the usual permissions, and their paths are checked before work."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from protloc.errors import ProtlocError
from protloc.files import HOST_TAG, TEMP_SUFFIX, atomic_dir, atomic_path, check_output_path, write_text


def usual_mode(directory: bool = False) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def leftover_of_a_dead_process(folder: Path, name: str, *, directory: bool = False) -> Path:
    """The temporary a write to folder/name leaves when a kill stops it: made by a process that has exited."""
    code = ("import sys, tempfile; from pathlib import Path; from protloc.files import temporary_prefix, TEMP_SUFFIX; "
            "make = tempfile.mkdtemp if sys.argv[3] == 'dir' else tempfile.mkstemp; "
            "made = make(prefix=temporary_prefix(Path(sys.argv[1]) / sys.argv[2]), suffix=TEMP_SUFFIX, dir=sys.argv[1]); "
            "print(made if isinstance(made, str) else made[1])")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    result = subprocess.run([sys.executable, "-c", code, str(folder), name, "dir" if directory else "file"],
                            capture_output=True, text=True, check=True, env=env)
    return Path(result.stdout.strip())


def test_atomic_path_replaces_only_when_the_block_finishes(tmp_path):
    target = tmp_path / "new" / "deeper" / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temp:
            temp.write_text("half")
            raise RuntimeError("killed half way")
    assert not (tmp_path / "new").exists()  # nor the folders it made for it
    write_text(target, "whole")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temp:
            temp.write_text("half")
            raise RuntimeError
    assert target.read_text() == "whole" and os.listdir(target.parent) == ["out.csv"]


def test_every_output_gets_the_usual_permissions_even_from_writers_that_make_private_files(tmp_path):
    import torch
    from safetensors.torch import save_file

    with atomic_path(tmp_path / "model.safetensors") as temp:
        save_file({"w": torch.zeros(2)}, str(temp))  # writes its file owner-only
    write_text(tmp_path / "config.json", "{}")
    modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()}
    assert modes == {"model.safetensors": usual_mode(), "config.json": usual_mode()}


def test_a_killed_writers_temporaries_are_removed_by_the_next_write_there_and_a_running_ones_are_kept(tmp_path):
    stale = [leftover_of_a_dead_process(tmp_path, name) for name in ("metrics.csv", "lr.csv")]
    running = tmp_path / f".metrics.csv.{os.getpid()}-{HOST_TAG}-abc{TEMP_SUFFIX}"  # this process's: alive
    elsewhere = tmp_path / f".metrics.csv.1-00000000-abc{TEMP_SUFFIX}"  # another machine's process 1
    not_ours = tmp_path / f".notes.txt.backup{TEMP_SUFFIX}"
    for path in (running, elsewhere, not_ours):
        path.write_text("keep")
    assert stale[0].name.startswith(".metrics.csv.") and all(path.exists() for path in stale)
    write_text(tmp_path / "metrics.csv", "epoch\n1\n")
    assert sorted(os.listdir(tmp_path)) == sorted(["metrics.csv", running.name, elsewhere.name, not_ours.name])


def test_atomic_dir_renames_a_new_folder_into_place_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "explain"
    with pytest.raises(ValueError):
        with atomic_dir(target) as temp:
            (temp / "a.png").write_bytes(b"png")
            raise ValueError("the third image is unreadable")
    assert not (tmp_path / "sub").exists()
    with atomic_dir(target) as temp:
        (temp / "a.png").write_bytes(b"png")
        (temp / "deeper").mkdir()
        (temp / "deeper" / "b.png").write_bytes(b"png")
    assert sorted(os.listdir(tmp_path / "sub")) == ["explain"]
    assert (target / "deeper" / "b.png").read_bytes() == b"png"
    assert target.stat().st_mode & 0o777 == usual_mode(directory=True)
    assert (target / "deeper").stat().st_mode & 0o777 == usual_mode(directory=True)


def test_atomic_dir_into_an_existing_folder_replaces_its_own_files_and_keeps_the_others(tmp_path):
    target = tmp_path / "evaluation"
    (target / "samples").mkdir(parents=True)
    (target / "index.html").write_text("old page")
    (target / "samples" / "old.png").write_text("old figure")
    (target / "notes.txt").write_text("the user's")
    with pytest.raises(KeyError):
        with atomic_dir(target) as temp:
            (temp / "index.html").write_text("new page")
            raise KeyError
    assert (target / "index.html").read_text() == "old page"
    with atomic_dir(target) as temp:
        (temp / "index.html").write_text("new page")
        (temp / "samples").mkdir()
        (temp / "samples" / "new.png").write_text("new figure")
    assert (target / "index.html").read_text() == "new page"
    assert sorted(os.listdir(target / "samples")) == ["new.png", "old.png"]
    assert (target / "notes.txt").read_text() == "the user's"
    assert sorted(os.listdir(tmp_path)) == ["evaluation"]


def test_atomic_dir_removes_a_killed_writers_temporary_folder(tmp_path):
    stale = leftover_of_a_dead_process(tmp_path, "explore", directory=True)
    (stale / "class_frequency.png").write_bytes(b"half of an exploration")
    with atomic_dir(tmp_path / "explore") as temp:
        (temp / "index.html").write_text("page")
    assert sorted(os.listdir(tmp_path)) == ["explore"]


@pytest.mark.parametrize("make, out, folder, expected", [
    ("dir", "taken", False, "is a folder (expected a file name)"),
    ("file", "taken", True, "is a file (expected a folder"),
    ("file", "taken/below/out.csv", False, "is a file, so nothing can be written under it"),
    ("file", "taken/below", True, "is a file, so nothing can be written under it"),
    (None, "/proc/protloc/out.csv", False, "cannot write in /proc"),
    (None, "/proc/protloc", True, "cannot write in /proc"),
])
def test_output_paths_that_cannot_be_written_are_refused_before_any_work(tmp_path, make, out, folder, expected):
    taken = tmp_path / "taken"
    if make == "dir":
        taken.mkdir()
    elif make == "file":
        taken.write_text("keep")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ProtlocError, match="^--out .*" + expected.replace("(", r"\(").replace(")", r"\)")):
        check_output_path(tmp_path / out if not out.startswith("/") else out, folder=folder)
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="file modes do not bind root")
def test_a_folder_the_user_cannot_write_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(ProtlocError, match="cannot write in"):
        check_output_path(locked / "new" / "out.csv")


def test_writable_outputs_pass_and_nothing_is_made(tmp_path):
    (tmp_path / "run").mkdir()
    assert check_output_path(tmp_path / "run", folder=True) == tmp_path / "run"
    assert check_output_path(tmp_path / "a" / "b" / "out.csv") == tmp_path / "a" / "b" / "out.csv"
    assert sorted(os.listdir(tmp_path)) == ["run"] and os.listdir(tmp_path / "run") == []
