"""The IDX file format of MNIST and Fashion-MNIST: a validated reader and a writer (for tests).

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 dimensions, then the array in C order, big-endian. The files are often gzipped; the reader
recognises gzip by its own magic bytes, not by the file name.

>>> import os, tempfile, numpy as np
>>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte.gz")
>>> write_idx(path, np.array([3, 1, 4], np.uint8))
>>> read_idx(path)
array([3, 1, 4], dtype=uint8)
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

__all__ = ["IdxError", "read_idx", "write_idx"]

# dtype code -> big-endian NumPy dtype (the IDX specification's six types).
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxError(ValueError):
    """A file is not a well-formed IDX file; the message says which file and what is wrong."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzipped) into a NumPy array in native byte order.

    Args:
      path: the file; gzip compression is detected from the content.

    Returns:
      The array, with the file's dtype (uint8 for MNIST) and shape.

    Raises:
      IdxError: bad magic number, unknown dtype code, or a size that does not match the header.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IdxError(
            f"{os.fspath(path)!r} is not an IDX file: its magic number {raw[:4].hex()!r} does not "
            "start with two zero bytes (expected e.g. 00000803 for images, 00000801 for labels)"
        )
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _DTYPES)
        raise IdxError(f"{os.fspath(path)!r}: unknown IDX dtype code 0x{code:02X} (known: {known})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"{os.fspath(path)!r}: truncated header ({len(raw)} bytes for {ndim} dims)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise IdxError(
            f"{os.fspath(path)!r}: header says shape {shape} ({expected} bytes in all), "
            f"file has {len(raw)} bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``.

    Args:
      path: destination file.
      array: any array whose dtype is one of the IDX types (uint8, int8, int16, int32, float32,
        float64).
    """
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): c for c, dt in _DTYPES.items()}
    if array.dtype not in codes:
        valid = ", ".join(str(dt) for dt in codes)
        raise IdxError(f"IDX cannot store dtype {array.dtype} (valid: {valid})")
    big = array.astype(array.dtype.newbyteorder(">"))
    raw = bytes([0, 0, codes[array.dtype], array.ndim])
    raw += struct.pack(f">{array.ndim}I", *array.shape) + big.tobytes(order="C")
    if os.fspath(path).endswith(".gz"):
        raw = gzip.compress(raw)
    with open(path, "wb") as f:
        f.write(raw)
