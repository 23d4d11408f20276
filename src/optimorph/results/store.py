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
import tempfile
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
    "probe_writable",
    "drawing_dir",
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
        doc = json.loads(config.read_text())
    except (OSError, ValueError):
        return "unreadable"
    kind = doc.get("kind", "train") if isinstance(doc, dict) else None
    return kind if isinstance(kind, str) else "unreadable"  # the reader's schema says what is wrong


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


def probe_writable(directory: str | os.PathLike) -> str | None:
    """None when a file can be created in ``directory``, else the reason (the system's words).

    Tried, not asked: ``os.access`` answers from permission bits, which root ignores, and says
    nothing of a read-only mount's or a network file system's own refusals.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=".probe-", dir=directory)
    except OSError as err:
        return err.strerror or type(err).__name__
    os.close(fd)
    os.unlink(name)
    return None


def drawing_dir(
    run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, movable: bool = True
) -> Path:
    """Where ``optimorph report`` draws a run's figures and page: ``out`` (created if missing)
    or the run directory itself, checked writable before any drawing starts.

    Args:
      run_dir: the run directory, read only.
      out: another directory for the figures and ``report.html``; None for ``run_dir``.
      movable: whether this kind of run can be drawn elsewhere (train runs can); otherwise
        ``out`` is refused and a read-only run directory's fix is to copy it.

    Raises:
      RunDirError: the directory cannot be written, or ``out`` holds another run.
    """
    run_dir = Path(run_dir)
    if out is None or Path(out).resolve() == run_dir.resolve():
        reason = probe_writable(run_dir)
        if reason is None:
            return run_dir
        fix = ("give --out DIR to draw the figures and report.html in another directory" if movable
               else f"copy it (cp -r {run_dir} DIR) and run optimorph report DIR")  # fmt: skip
        raise RunDirError(f"{run_dir} is not writable ({reason}); {fix}")
    out = Path(out)
    if not movable:
        raise RunDirError(f"--out {out}: only a train run is drawn elsewhere; copy {run_dir} "
                          f"(cp -r {run_dir} DIR) and run optimorph report DIR")  # fmt: skip
    if (out / CONFIG_FILE).exists():
        raise RunDirError(f"--out {out} holds a run of its own; choose a new or empty directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror
        raise RunDirError(f"--out {out}: cannot create it ({reason}); choose another") from None
    reason = probe_writable(out)
    if reason is not None:
        raise RunDirError(f"--out {out} is not writable ({reason}); choose another")
    return out


def write_config(out: Path, kind: str, config: Mapping[str, Any], **extra: Any) -> None:
    """``config.json``: the kind, the format version, the run's settings and the environment."""
    from optimorph.results.environment import environment  # imports JAX: only when writing

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
