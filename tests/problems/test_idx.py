"""The IDX reader and writer: round trips, gzip detection, and clear errors on bad files."""

import gzip

import numpy as np
import pytest

from optimorph.problems.idx import IdxError, read_idx, write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_images_and_labels(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    write_idx(tmp_path / f"images{suffix}", images)
    write_idx(tmp_path / f"labels{suffix}", labels)
    for name, expected in (("images", images), ("labels", labels)):
        got = read_idx(tmp_path / f"{name}{suffix}")
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "float32", "float64"])
def test_round_trip_other_dtypes_in_native_byte_order(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 12).astype(dtype)
    write_idx(tmp_path / "a.gz", array)
    got = read_idx(tmp_path / "a.gz")
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


def test_header_is_big_endian_mnist_layout(tmp_path):
    write_idx(tmp_path / "x", np.zeros((60000, 28, 28), np.uint8))
    header = (tmp_path / "x").read_bytes()[:16]
    assert header == bytes.fromhex("000008030000ea600000001c0000001c")


def test_gzip_is_detected_by_content_not_name(tmp_path):
    labels = np.arange(5, dtype=np.uint8)
    write_idx(tmp_path / "plain", labels)
    (tmp_path / "compressed-without-suffix").write_bytes(
        gzip.compress((tmp_path / "plain").read_bytes())
    )
    np.testing.assert_array_equal(read_idx(tmp_path / "compressed-without-suffix"), labels)


def test_bad_magic_is_a_clear_error(tmp_path):
    (tmp_path / "bad").write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(IdxError, match=r"not an IDX file.*magic number '504b0304'"):
        read_idx(tmp_path / "bad")


def test_unknown_dtype_code(tmp_path):
    (tmp_path / "bad").write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(IdxError, match="unknown IDX dtype code 0x07"):
        read_idx(tmp_path / "bad")


def test_truncated_data(tmp_path):
    write_idx(tmp_path / "x", np.zeros((4, 4), np.uint8))
    (tmp_path / "cut").write_bytes((tmp_path / "x").read_bytes()[:-3])
    with pytest.raises(IdxError, match=r"shape \(4, 4\) \(28 bytes in all\), file has 25 bytes"):
        read_idx(tmp_path / "cut")


def test_write_rejects_types_idx_cannot_store(tmp_path):
    with pytest.raises(IdxError, match="cannot store dtype int64"):
        write_idx(tmp_path / "x", np.zeros(3, np.int64))
