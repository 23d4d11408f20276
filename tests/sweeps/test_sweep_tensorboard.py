"""A sweep store exported as TensorBoard event files (``optimorph export --tensorboard``), read
back record by record with TensorBoard's own protocol buffers."""

import shutil
import struct

import numpy as np
import pyarrow.parquet as pq
import pytest

from optimorph import cli
from optimorph.results.sweep_results import cells_table
from optimorph.results.tensorboard import export_tensorboard, run_name

pytest.importorskip("tensorboardX")
from tensorboardX.proto import event_pb2  # noqa: E402


def scalars(run_dir):
    """{tag: [(step, value), ...]} of every event file in a run directory (TFRecord framing:
    length, its CRC, the Event proto, its CRC)."""
    out = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_every_finished_cell_is_a_run_with_every_metric(reference, tmp_path):
    store, _ = reference
    written, kept = export_tensorboard(store, tmp_path / "tb")
    rows = cells_table(store).to_pylist()
    assert (written, kept) == (8, 0)
    for row in rows:
        run = tmp_path / "tb" / run_name(row)
        got = scalars(run)
        table = pq.read_table(store / "cells" / row["cell"] / "metrics.parquet").to_pylist()
        want = {}
        for x in table:
            want.setdefault(f"{x['split']}/{x['metric']}", []).append((x["step"], x["value"]))
        assert set(got) == set(want) and "test/loss" in got
        for tag, series in want.items():  # event files hold float32 values
            steps, values = zip(*sorted(series), strict=True)
            got_steps, got_values = zip(*sorted(got[tag]), strict=True)
            assert got_steps == steps
            np.testing.assert_array_equal(np.float32(got_values), np.float32(values))
    assert not list((tmp_path / "tb").rglob("*.partial"))


def test_a_rerun_exports_only_what_is_missing(reference, tmp_path):
    store, _ = reference
    logdir = tmp_path / "tb"
    export_tensorboard(store, logdir)
    victim = logdir / run_name(cells_table(store).to_pylist()[0])
    shutil.rmtree(victim)
    (victim.parent / f".{victim.name}.partial").mkdir()  # an interrupted export's leftover
    assert export_tensorboard(store, logdir) == (1, 7)
    assert scalars(victim) and not (victim.parent / f".{victim.name}.partial").exists()


def test_the_command_line_exports_and_says_where(reference, tmp_path, capsys):
    store, _ = reference
    assert cli.main(["export", str(store), "--tensorboard", "--logdir", str(tmp_path / "tb")]) == 0
    out = capsys.readouterr().out
    assert "8 runs written" in out and "tensorboard --logdir" in out
    assert cli.main(["export", str(store)]) == 2
    assert "--tensorboard" in capsys.readouterr().err
