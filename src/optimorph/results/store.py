"""Run directories of every kind: claiming one, and the files a recipe's results live in.

Every kind of work (``train``, recipes, ...) writes a directory with ``config.json`` holding
``kind`` and ``format_version``; arrays go to ``.npz`` files, tables to Parquet, findings and
verdicts to JSON, all written atomically. :func:`claim` refuses a directory that holds another run
unless asked to resume or overwrite it, and a lock file stops two processes writing one directory.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
>>> with claim(out, "demo") as d:
...     _ = write_arrays(d, "curve", {"y": [1.0, 2.0]})
...     write_config(d, "demo", {"steps": 2})
>>> read_arrays(out, "curve")["y"].tolist(), read_kind(out)
([1.0, 2.0], 'demo')
>>> with claim(out, "demo"):
...     pass
Traceback (most recent call last):
optimorph.results.store.RunDirError: ... already holds a demo run; pass --resume ... or --overwrite ...
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from optimorph.atomic import atomic_path, write_bytes_atomic, write_json_atomic

__all__ = [
    "FORMAT_VERSION",
    "RunDirError",
    "claim",
    "write_config",
    "read_kind",
    "write_arrays",
    "read_arrays",
    "write_json",
    "read_json",
    "read_file",
]

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"


class RunDirError(ValueError):
    """A run directory cannot be used as asked; the message names the fix."""


@contextlib.contextmanager
def claim(
    out: str | os.PathLike, kind: str, *, resume: bool = False, overwrite: bool = False
) -> Iterator[Path]:
    """Hold ``out`` for a run of ``kind`` while the block runs.

    Refused: an empty path, a path that is a file or lies under one, a directory that cannot be
    written, a directory holding a finished or started run unless ``resume`` (same kind) or
    ``overwrite`` (its contents are removed), and a directory another live process holds.
    """
    if str(out).strip() == "":
        raise RunDirError("the output directory is empty; give --out DIR")
    out = Path(out)
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise RunDirError(f"--out {out}: {parent} is a file, not a directory; choose another")
    if overwrite and resume:
        raise RunDirError("give --resume or --overwrite, not both")
    _check_lock(out)
    existing = _existing_kind(out)
    if existing is not None:
        if overwrite:
            shutil.rmtree(out)
        elif not resume:
            raise RunDirError(
                f"{out} already holds a {existing} run; pass --resume to continue it or "
                "--overwrite to replace it, or choose another --out"
            )
        elif existing not in (kind, UNFINISHED):
            raise RunDirError(f"{out} holds a {existing} run, not {kind}; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create {out}: {err.strerror}; choose another --out") from None
    if not os.access(out, os.W_OK):
        raise RunDirError(f"{out} is not writable; choose another --out")
    lock = out / LOCK_FILE
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        raise RunDirError(
            f"{out} is being written by another process; wait or choose another --out"
        )
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield out
    finally:
        lock.unlink(missing_ok=True)


UNFINISHED = "unfinished"


def _existing_kind(out: Path) -> str | None:
    """The kind of run ``out`` holds (``'train'`` for directories of the first format,
    ``'unfinished'`` for checkpoints without a config), or None when it holds nothing of ours."""
    config = out / CONFIG_FILE
    if not config.exists():
        checkpoints = out / "checkpoints"
        return UNFINISHED if checkpoints.is_dir() and any(checkpoints.iterdir()) else None
    try:
        return json.loads(config.read_text()).get("kind", "train")
    except (OSError, ValueError):
        return "unreadable"


def _check_lock(out: Path) -> None:
    """Refuse a directory a live process holds; clear the lock of a dead one."""
    lock = out / LOCK_FILE
    if not lock.exists():
        return
    try:
        pid = int(lock.read_text().strip() or -1)
    except (OSError, ValueError):
        pid = -1
    alive = pid > 0
    if alive:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
    if alive:
        raise RunDirError(
            f"{out} is being written by process {pid}; wait for it or choose another --out"
        )
    lock.unlink(missing_ok=True)  # left by a process that died


def write_config(out: Path, kind: str, config: Mapping[str, Any], **extra: Any) -> None:
    """``config.json``: the kind, the format version, the run's settings and the environment."""
    from optimorph.results.rundir import environment

    doc = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "config": dict(config),
        **extra,
        "environment": environment(),
    }
    write_json_atomic(Path(out) / CONFIG_FILE, doc)


def read_kind(out: str | os.PathLike) -> str:
    """The kind of run a directory holds."""
    kind = _existing_kind(Path(out))
    if kind is None:
        raise RunDirError(f"{out} holds no optimorph run (no {CONFIG_FILE})")
    return kind


def write_arrays(out: Path, name: str, arrays: Mapping[str, Any]) -> Path:
    """``<name>.npz`` with the given arrays, atomically (``name`` may hold a subdirectory)."""
    path = Path(out) / f"{name}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    write_bytes_atomic(path, buffer.getvalue())
    return path


def read_arrays(out: str | os.PathLike, name: str) -> dict[str, np.ndarray]:
    """The arrays of ``<name>.npz``; a missing or damaged file names itself and the fix."""
    path = Path(out) / f"{name}.npz"
    try:
        with open(path, "rb") as f, np.load(f) as z:  # our handle: np.load leaks on bad zips
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing; rerun the command that made {out}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise RunDirError(f"{path} is damaged ({err}); delete it and rerun with --resume") from None


def write_json(out: Path, name: str, obj: Any) -> Path:
    path = Path(out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, obj)
    return path


def read_json(out: str | os.PathLike, name: str) -> Any:
    return read_file(Path(out) / f"{name}.json", lambda p: json.loads(p.read_text()))


def read_file(path: str | os.PathLike, reader: Any) -> Any:
    """``reader(path)``; a missing or damaged file becomes one RunDirError naming the file and
    the fix (never a bare ``[Errno 2]`` or a decoder message without a file name)."""
    path = Path(path)
    try:
        return reader(path)
    except FileNotFoundError:
        raise RunDirError(
            f"{path} is missing; the run directory {path.parent} is incomplete: rerun the "
            "command that made it (--resume continues an interrupted run)"
        ) from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # pyarrow: ValueError
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RunDirError(
            f"{path} is damaged ({first}); delete it and rerun the command that made "
            f"{path.parent} (with --overwrite)"
        ) from None
