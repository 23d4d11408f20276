"""`optimorph report` on damaged, foreign and read-only run directories: one line, exit status 2.

Each damaged input is made from a real run directory (write_run of the conftest result), and
every file is checked by its one validator in optimorph.results.schema when it is read.
"""

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from optimorph import cli
from optimorph.results import store, write_run
from optimorph.results.rundir import read_final_params


@pytest.fixture(scope="module")
def pristine(result, stub_problem, tmp_path_factory):
    problem = stub_problem
    return write_run(result, tmp_path_factory.mktemp("pristine") / "run", problem=problem)


@pytest.fixture
def run(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "run")


def _edit_json(name, edit):
    def damage(run):
        path = run / name
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))

    return damage


def _without(key):
    return lambda doc: {k: v for k, v in doc.items() if k != key}


def _edit_table(edit):
    def damage(run):
        path = run / "metrics.parquet"
        pq.write_table(edit(pq.read_table(path)), path)

    return damage


def _set_column(name, convert):
    def edit(table):
        i = table.column_names.index(name)
        return table.set_column(i, name, convert(table.column(name)))

    return edit


def _truncate(run):
    data = (run / "metrics.parquet").read_bytes()
    (run / "metrics.parquet").write_bytes(data[: len(data) // 2])


def _hessian_without_top(run):
    entry = {"optimizer": "adam(lr=1e-3)", "optimizer_index": 0, "seed": 0, "bottom": [-1.0],
             "trace": 1.0, "trace_se": 0.1, "layers": {"w": 1.0},
             "density": {"grid": [0.0], "values": [1.0]}}  # fmt: skip
    doc = {"examples": 8, "dtype": "float64", "k": 1, "lanczos_steps": 2, "samples": 3,
           "params_sha256": None, "entries": [entry]}  # fmt: skip
    (run / "hessian.json").write_text(json.dumps(doc))


DAMAGED = [
    # The tester's inputs.
    ("config without eval_keys", _edit_json("config.json", _without("eval_keys")),
     "config.json", "field 'eval_keys' is missing; this directory was not written by optimorph "
     "train (or by an older version): rerun the training"),
    ("format_version an object", _edit_json("config.json", lambda d: {**d, "format_version": {}}),
     "config.json", "field 'format_version' is an object, expected an integer"),
    ("renamed column", _edit_table(lambda t: t.rename_columns(
        ["part" if c == "split" else c for c in t.column_names])),
     "metrics.parquet", "column 'split' is missing (columns: optimizer, optimizer_index, seed, "
     "step, part, metric, value); this directory was not written"),
    ("summary a JSON string", lambda r: (r / "summary.json").write_text('"done"'),
     "summary.json", "the top level is the string 'done', expected an object"),
    # More of what a disk, a copy or another tool leaves.
    ("empty config", lambda r: (r / "config.json").write_text(""), "config.json", "is damaged"),
    ("empty summary", lambda r: (r / "summary.json").write_bytes(b""), "summary.json",
     "is damaged"),
    ("empty parquet", lambda r: (r / "metrics.parquet").write_bytes(b""), "metrics.parquet",
     "is damaged"),
    ("truncated parquet", _truncate, "metrics.parquet", "is damaged"),
    ("config a list", _edit_json("config.json", lambda d: [d]), "config.json",
     "the top level is a list, expected an object; this directory was not written by optimorph "
     "train"),
    ("value column of strings",
     _edit_table(_set_column("value", lambda c: pc.cast(c, pa.string()))),
     "metrics.parquet", "column 'value' has type string, expected double"),
    ("seed column of floats", _edit_table(_set_column("seed", lambda c: pc.cast(c, pa.float64()))),
     "metrics.parquet", "column 'seed' has type double, expected int64"),
    ("missing metrics", lambda r: (r / "metrics.parquet").unlink(), "metrics.parquet",
     "is missing"),
    ("null steps", _edit_table(_set_column("step", lambda c: pa.nulls(len(c), pa.int64()))),
     "metrics.parquet", "column 'step' has"),
    ("a seed the config does not list",
     _edit_json("config.json", lambda d: {**d, "seeds": [0, 1, 2]}),
     "metrics.parquet", "column 'seed' holds seed 7, which config.json does not list"),
    ("diverged_at of another shape",
     _edit_json("config.json", lambda d: {**d, "diverged_at": [[-1]]}),
     "config.json", "field 'diverged_at' has rows of lengths [1], expected 2 rows of 3"),
    ("state bytes of another length", _edit_json("config.json", lambda d: {
        **d, "config": {**d["config"], "state_bytes_per_param": [8.0]}}),
     "config.json", "field 'config.state_bytes_per_param' has 1 values, expected 2 (one per "
     "optimizer)"),
    ("state bytes of strings", _edit_json("config.json", lambda d: {
        **d, "config": {**d["config"], "state_bytes_per_param": ["8", "2"]}}),
     "config.json", "field 'config.state_bytes_per_param[0]' is the string '8', expected a number"),
    ("optimizers a string", _edit_json("config.json", lambda d: {**d, "optimizers": "adam"}),
     "config.json", "field 'optimizers' is the string 'adam', expected a list"),
    ("a newer format", _edit_json("config.json", lambda d: {**d, "format_version": 99}),
     "config.json", "field 'format_version' is 99; this optimorph reads format 1: upgrade"),
    ("summary without a final", _edit_json("summary.json", lambda d: {
        **d, "optimizers": [_without("final")(o) for o in d["optimizers"]]}),
     "summary.json", "field 'optimizers[0].final' is missing"),
    ("a stat of the wrong type", _edit_json("summary.json", lambda d: {
        **d, "optimizers": [{**o, "final": {"test/loss": {**o["final"]["test/loss"], "n": "3"}}}
                            for o in d["optimizers"]]}),
     "summary.json", "field 'optimizers[0].final.test/loss.n' is the string '3', expected an "
     "integer"),
    ("hessian entry without top", _hessian_without_top, "hessian.json",
     "field 'entries[0].top' is missing; delete it and run optimorph hessian"),
]  # fmt: skip


@pytest.mark.parametrize("damage, name, message", [d[1:] for d in DAMAGED],
                         ids=[d[0] for d in DAMAGED])  # fmt: skip
def test_a_damaged_run_directory_gets_one_line_naming_the_file(run, damage, name, message, capsys):
    damage(run)
    code = cli.main(["report", str(run)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("optimorph: error: "), lines
    assert str(run / name) in lines[0] and message in lines[0], lines[0]


def test_the_undamaged_copy_reports(run, capsys):
    """The damaged inputs above differ from this run by their damage only."""
    assert cli.main(["report", str(run)]) == 0
    assert (run / "report.html").exists() and (run / "loss_curves.png").exists()


def test_final_params_are_validated_when_read(result, tmp_path):
    from optimorph.engine.result import TrainResult

    params = [{"w": np.ones((3, 2), np.float32)}, {"w": np.zeros((3, 2), np.float32)}]
    out = write_run(TrainResult(**{**vars(result), "final_params": params}), tmp_path / "p")
    template = {"w": np.zeros(2, np.float32)}
    assert read_final_params(out, template, 1).keys() == {"w"}
    path = out / "final_params.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(store.RunDirError, match="final_params.npz is damaged"):
        read_final_params(out, template)
    np.savez(path, **{"opt0['w']": np.array(["a", "b", "c"])})
    with pytest.raises(store.RunDirError, match=r"entry \"opt0\['w'\]\" is a <U1 array"):
        read_final_params(out, template)
    np.savez(path, w=np.ones((3, 2)))
    with pytest.raises(store.RunDirError, match="entry 'w' is not named opt<i>"):
        read_final_params(out, template)


# A read-only run directory. Root writes through permission bits, and the tests may run as root,
# so the probe itself is tested where even root cannot create a file (under a regular file), and
# the report's handling with the probe saying what a read-only mount would say.


def test_the_writability_probe_creates_and_deletes_a_file(tmp_path):
    assert store.probe_writable(tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # the probe's file is gone
    (tmp_path / "file").write_text("")
    assert store.probe_writable(tmp_path / "file") == "Not a directory"
    assert store.probe_writable(tmp_path / "nothing") == "No such file or directory"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores mode bits")
def test_the_probe_sees_a_directory_without_write_permission(tmp_path):
    tmp_path.chmod(0o555)
    try:
        assert store.probe_writable(tmp_path) == "Permission denied"
    finally:
        tmp_path.chmod(0o755)


@pytest.fixture
def read_only(run, monkeypatch):
    """``run`` as the probe would find it on a read-only mount; other directories as they are."""
    real = store.probe_writable
    probed = []

    def probe(directory):
        probed.append(directory)
        same = os.path.realpath(directory) == os.path.realpath(run)
        return "Read-only file system" if same else real(directory)

    monkeypatch.setattr(store, "probe_writable", probe)
    return probed


def _snapshot(directory):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


def test_a_read_only_run_directory_is_refused_before_drawing(run, read_only, capsys):
    before = _snapshot(run)
    assert cli.main(["report", str(run)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"optimorph: error: {run} is not writable (Read-only file system); "
                    "give --out DIR to draw the figures and report.html in another directory")
    assert read_only and _snapshot(run) == before  # not one figure drawn


def test_out_draws_a_read_only_run_elsewhere(run, read_only, tmp_path, capsys):
    before = _snapshot(run)
    out = tmp_path / "figures" / "x"
    assert cli.main(["report", str(run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    assert _snapshot(run) == before
    page = (out / "report.html").read_text()
    assert (out / "loss_curves.png").exists() and page.count("data:image/png;base64,") >= 3
    assert f"optimorph run {run.name}" in page  # the run's title, not the output directory's


def test_out_is_refused_where_it_cannot_hold_a_report(run, pristine, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    refused = [
        (str(pristine), "holds a run of its own"),
        (str(tmp_path / "file" / "x"), "cannot create it (Not a directory)"),
    ]
    for out, message in refused:
        assert cli.main(["report", str(run), "--out", out]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert message in line
    (tmp_path / "cmp").mkdir()
    store.write_config(tmp_path / "cmp", "compare", {})  # a kind whose page is drawn in place
    assert cli.main(["report", str(tmp_path / "cmp"), "--out", str(tmp_path / "o")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "only a train run is drawn elsewhere" in line and not (tmp_path / "o").exists()
