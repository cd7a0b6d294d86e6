"""Writing outputs so that an interrupted command never leaves a half-written one, and checking an output path
before a command starts its work.

Every write goes to a temporary file (or folder) beside its target, named `.NAME.PID-HOST-RANDOM.part`, and is
renamed into place when complete. A write killed before the rename leaves its temporary behind; the next process
that writes into the same folder removes those whose process is gone.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from protloc.errors import ProtlocError
from protloc.run_names import (CHECKPOINT_DIR, CONFIG_FILE, CURVES_FILE, ENSEMBLE_FILE, FOLDS_FILE, LR_FILE, LR_PLOT_FILE,
                               METRICS_FILE, OUT_OF_FOLD_FILE, RECIPE_FILE, WEIGHTS_FILE, fold_number)

TEMP_SUFFIX = ".part"
# Which machine wrote a temporary: a process id means something only on the machine that gave it out.
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
# Folders this process has cleared of stale temporaries: once each, as a folder of 30,000 images written one by
# one must not be listed 30,000 times.
_CLEARED: set[str] = set()


def check_output_path(path: str | Path, *, folder: bool = False, option: str = "--out", inputs=(),
                      makes_run: bool = False, replaces_run_file: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written or must not be replaced: a folder where a file
    is expected or a file where a folder is, a path under a regular file, or a place this user cannot write; a
    symbolic link, a device or other special file (see docs/security.md: outputs never write through a link);
    one of the files `inputs` names, or a path inside an input folder; a run folder, or one of the files and
    folders that make a run (config.json, model.safetensors, checkpoints/...), unless the command makes that run
    (`makes_run`: train) or rewrites its config (`replaces_run_file`: tune). Missing parent folders are fine (they
    are made); nothing is created here. Returns `path` as a Path."""
    path = Path(path)
    _refuse_links_and_special_files(path, option)
    if folder and path.exists() and not path.is_dir():
        raise ProtlocError(f"{option} {path}: is a file (expected a folder, or a path where one can be made)")
    if not folder and path.is_dir():
        raise ProtlocError(f"{option} {path}: is a folder (expected a file name)")
    parent = Path(os.path.abspath(path)).parent
    while not os.path.lexists(parent):
        parent = parent.parent
    if not parent.is_dir():
        raise ProtlocError(f"{option} {path}: {parent} is a file, so nothing can be written under it")
    _refuse_inputs(path, inputs, option)
    if not replaces_run_file:
        _refuse_run_parts(path, option, makes_run=makes_run)
    _check_writable(parent, path, option)
    if folder and path.is_dir():
        _check_writable(path, path, option)
    return path


def _refuse_links_and_special_files(path: Path, option: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except OSError:  # missing, or under a file: check_output_path says which
        return
    if stat.S_ISLNK(mode):
        raise ProtlocError(f"{option} {path}: is a symbolic link; outputs never write through links, give the path "
                           f"it points to ({os.path.realpath(path)}) or a new name")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ProtlocError(f"{option} {path}: is a device or other special file (expected a regular file or folder)")


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _refuse_inputs(path: Path, inputs, option: str) -> None:
    """An output may not be one of the command's input files, nor lie in (or be) an input folder: a dataset is
    read, never written into."""
    target = os.path.realpath(path)
    for source in inputs:
        if source is None:
            continue
        real = os.path.realpath(source)
        if os.path.isdir(real) and _inside(target, real):
            raise ProtlocError(f"{option} {path}: lies in the input folder {source}; write outputs outside the "
                               "data a command reads")
        if os.path.isfile(real) and target == real:
            raise ProtlocError(f"{option} {path}: is one of the input files; write the output under another name")


def _refuse_run_parts(path: Path, option: str, *, makes_run: bool) -> None:
    """A run folder is made by train (and its config rewritten by tune) only: no other output may replace it or
    one of its parts. Other new names inside it (an evaluation folder, a report) are fine."""
    absolute = Path(os.path.abspath(path))
    if not makes_run and is_run_folder(absolute):
        raise ProtlocError(f"{option} {path}: is a run folder; write outputs to a new name (inside it or beside it)")
    for above in absolute.parents:
        if is_run_folder(above):
            part = absolute.relative_to(above).parts[0]
            if is_run_part(part):
                raise ProtlocError(f"{option} {path}: would replace {part} of the run {above}; write outputs to "
                                   "a new name")


def _check_writable(folder: Path, path: Path, option: str) -> None:
    """Try it: permission bits do not tell (root, read-only file systems, /proc)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".protloc-write-test-", dir=folder)
    except OSError as error:
        raise ProtlocError(f"{option} {path}: cannot write in {folder} ({error.strerror or error})") from None
    os.close(handle)
    os.unlink(probe)


def make_folders(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; returns the folders made, deepest first."""
    made, current = [], Path(folder)
    while not os.path.lexists(current):
        made.append(current)
        current = current.parent
    Path(folder).mkdir(parents=True, exist_ok=True)
    return made


def remove_empty_folders(folders: list[Path]) -> None:
    """Undo make_folders after a failed write: a command that fails leaves no new empty folders behind."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # something else was written there meanwhile
            return


def temporary_prefix(path: Path) -> str:
    """How this process begins the names of its temporaries for `path`: `.NAME.PID-HOST-` (then RANDOM.part)."""
    return f".{path.name}.{os.getpid()}-{HOST_TAG}-"


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def writer_of(temporary_name: str) -> int | None:
    """The process id in a temporary's name `.NAME.PID-HOST-RANDOM.part` when this machine wrote it, else None."""
    if not (temporary_name.startswith(".") and temporary_name.endswith(TEMP_SUFFIX)):
        return None
    fields = temporary_name[:-len(TEMP_SUFFIX)].rpartition(".")[2].split("-")
    if len(fields) != 3 or not fields[0].isdigit() or fields[1] != HOST_TAG:
        return None
    return int(fields[0])


def remove_stale_temporaries(path: str | Path) -> None:
    """The temporary files and folders beside `path` of writes that were killed before they finished: those
    written on this machine by a process that no longer runs. Each folder is cleared once per process."""
    folder = os.path.abspath(Path(path).parent)
    if folder in _CLEARED:
        return
    _CLEARED.add(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        pid = writer_of(entry.name)
        if pid is None or _is_alive(pid):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)


def _usual_mode(directory: bool = False) -> int:
    """What the umask allows: mkstemp and mkdtemp make owner-only files and folders, outputs get the usual."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    _refuse_links_and_special_files(path, "output")
    made = make_folders(path.parent)
    remove_stale_temporaries(path)
    handle, temp_name = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(handle)
    temp = Path(temp_name)
    os.chmod(temp, _usual_mode())
    try:
        yield temp
        # Writers that replace the file (rather than write into it) may have made it owner-only again.
        os.chmod(temp, _usual_mode())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        remove_empty_folders(made)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path` to write a multi-file output into; when the block finishes,
    its contents become `path`'s. A failure (or a kill) before then leaves `path` as it was.

    A `path` that does not exist, or is an empty folder, is replaced by the temporary folder in one rename. Into an
    existing folder the entries are moved one by one, replacing those of the same name: files of its own that the
    new output does not have are kept, never deleted.
    """
    path = Path(path)
    _refuse_links_and_special_files(path, "output")
    made = make_folders(path.parent)
    remove_stale_temporaries(path)
    temp = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        yield temp
        _set_usual_modes(temp)
        _move_into(temp, path)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        remove_empty_folders(made)
        raise
    shutil.rmtree(temp, ignore_errors=True)


def _set_usual_modes(folder: Path) -> None:
    os.chmod(folder, _usual_mode(directory=True))
    for parent, folders, _files in os.walk(folder):
        for name in folders:
            os.chmod(os.path.join(parent, name), _usual_mode(directory=True))


def _move_into(source: Path, target: Path) -> None:
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        target.rmdir()
    if not os.path.lexists(target):
        os.rename(source, target)
        return
    for entry in source.iterdir():
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir():
            _move_into(entry, destination)
        elif destination.is_dir() or (entry.is_dir() and os.path.lexists(destination)):
            wanted = "folder" if entry.is_dir() else "file"
            raise ProtlocError(f"{destination}: in the way of the output, which writes a {wanted} there; move it away "
                               "and run again")
        else:
            os.replace(entry, destination)


# ---------------------------------------------------------------- digests beside files (docs/security.md)

DIGEST_SUFFIX = ".sha256"  # FILE.sha256 beside FILE, in sha256sum's format: `sha256sum -c FILE.sha256` checks it


def digest_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def write_digest(path: str | Path) -> str:
    """Record `path`'s SHA-256 beside it (written after the file itself: a crash between leaves a digest that no
    longer matches, never a file taken for checked); returns the digest."""
    digest = file_sha256(path)
    write_text(digest_path(path), f"{digest}  {Path(path).name}\n")
    return digest


def recorded_digest(path: str | Path) -> str | None:
    """The SHA-256 recorded beside `path`, or None when there is none (files written before digests were)."""
    try:
        text = digest_path(path).read_text(encoding="ascii").split()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    except OSError as error:
        raise ProtlocError(f"{digest_path(path)}: cannot be read ({error.strerror or error})") from None
    return text[0].lower() if text else ""


def check_digest(path: str | Path) -> None:
    """Raise ProtlocError when `path` no longer has the SHA-256 recorded beside it (changed or damaged since it
    was written); nothing when none is recorded."""
    recorded = recorded_digest(path)
    if recorded is not None and file_sha256(path) != recorded:
        raise ProtlocError(f"{path}: its content differs from the SHA-256 in {digest_path(path).name}, written "
                           "with it (changed or damaged since)")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path: str | Path, frame) -> None:
    """A pandas DataFrame as CSV, without its index."""
    with atomic_path(path) as temp:
        frame.to_csv(temp, index=False)


def save_figure(path: str | Path, figure) -> None:
    """A free-standing matplotlib Figure (protloc.plots) as PNG, drawn by the Agg canvas whatever backend the
    process has chosen."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=110, bbox_inches="tight")


def is_run_part(name: str) -> bool:
    """Whether `name` inside a run folder (or a K-fold folder) is one of the files and folders that make it: only
    train writes them, and tune rewrites the config."""
    parts = {CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, LR_FILE, CURVES_FILE, LR_PLOT_FILE, CHECKPOINT_DIR, FOLDS_FILE,
             ENSEMBLE_FILE, OUT_OF_FOLD_FILE, WEIGHTS_FILE + DIGEST_SUFFIX}
    return name in parts or fold_number(name) is not None


def is_run_folder(folder: str | Path) -> bool:
    """A folder that train wrote, or is writing: its config.json, ensemble.json or checkpoints' recipe is there."""
    folder = Path(folder)
    return any(os.path.isfile(folder / name) for name in (CONFIG_FILE, ENSEMBLE_FILE, f"{CHECKPOINT_DIR}/{RECIPE_FILE}"))
