"""Atomic writes: a failing writer leaves the old file intact and no temporary file behind."""

import math

import pytest

from optimorph.atomic import (
    atomic_path,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.parquet"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".parquet"
            tmp.write_text("half-written")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_failure_creates_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new.png") as tmp:
            tmp.write_bytes(b"\x89PNG")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_success_replaces(tmp_path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "one")
    write_bytes_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    with atomic_path(target) as tmp:
        tmp.write_text("three")
    assert target.read_text() == "three"
    assert list(tmp_path.iterdir()) == [target]


def test_json_refuses_nan_and_keeps_old_file(tmp_path):
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"x": 1})
    with pytest.raises(ValueError):
        write_json_atomic(target, {"x": math.nan})
    assert target.read_text() == '{\n  "x": 1\n}\n'
    assert list(tmp_path.iterdir()) == [target]
