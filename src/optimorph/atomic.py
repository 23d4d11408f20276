"""Atomic file writes: a reader sees the old file or the complete new one, never a half-written one.

Each write goes to a temporary file in the destination's directory (so the final rename stays on
one filesystem, where ``os.replace`` is atomic), is flushed to disk with ``fsync``, and is then
renamed over the destination. If the writer fails, the temporary file is removed and whatever was
at the destination before is left untouched.

>>> import tempfile, pathlib
>>> tmp = tempfile.TemporaryDirectory()
>>> write_json_atomic(pathlib.Path(tmp.name, "a.json"), {"x": 1})
>>> pathlib.Path(tmp.name, "a.json").read_text()
'{\\n  "x": 1\\n}\\n'
>>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_path", "write_bytes_atomic", "write_text_atomic", "write_json_atomic",
           "fsync_file", "fsync_dir", "fsync_tree"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; rename it to ``path`` on success, remove it on failure.

    For libraries that want a file name rather than bytes (``pyarrow.parquet.write_table``,
    ``Figure.savefig``, ``np.savez``). The temporary name keeps ``path``'s suffix because some of
    them (``np.savez``) append their own suffix otherwise.

    Args:
      path: the destination; its directory must exist.

    Yields:
      A fresh, empty file's path in the same directory.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with atomic_path(pathlib.Path(d, "b.txt")) as tmp:
    ...         _ = tmp.write_text("hello")
    ...     print(pathlib.Path(d, "b.txt").read_text(), [p.name for p in pathlib.Path(d).iterdir()])
    hello ['b.txt']
    """
    path = Path(path)
    # A dot-prefixed random name: hidden from globs like "*.png" that readers use to find results.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")
    # O_EXCL guards against clobbering a concurrent writer's temp file; mode 0o666 (less the umask)
    # gives the same permissions as a normal open(), unlike tempfile.mkstemp's 0o600.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically, encoded as ``encoding``."""
    write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON to ``path`` atomically.

    NumPy scalars and arrays are converted to Python numbers and lists. NaN and infinity raise
    ``ValueError``: they are not JSON, and other tools reject files containing them; callers
    store them as ``null``.
    """
    text = json.dumps(obj, indent=2, allow_nan=False, default=_numpy_to_python)
    write_text_atomic(path, text + "\n")


def _numpy_to_python(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable: {value!r}")


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data to disk (a write or a library's file may not have)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a directory's entries to disk: a rename into it is durable only then (POSIX).
    Windows cannot open directories, and its MoveFileEx is already durable."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: str | os.PathLike) -> None:
    """Flush the files directly in ``directory``, then its entries (before renaming it into
    place: the directory arrives whole)."""
    for child in Path(directory).iterdir():
        if child.is_file():
            fsync_file(child)
    fsync_dir(directory)
