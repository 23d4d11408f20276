"""write_run / read_run round trip, the Parquet layout, summary numbers and DuckDB queries."""

import json
import os

import ml_dtypes
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from optimorph.report.figures import save_figures

from optimorph.engine.result import TrainResult
from optimorph.report import redraw
from optimorph.results import metrics_table, query, read_config, read_run, read_summary, write_run
from optimorph.results.rundir import METRICS_SCHEMA

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(result, stub_problem, tmp_path_factory):
    problem = stub_problem
    out = write_run(result, tmp_path_factory.mktemp("run") / "a", problem=problem)
    save_figures(result, out)  # the report layer draws; results only store
    return out


def test_round_trip_is_exact(result, run_dir):
    back = read_run(run_dir)
    assert back.optimizers == result.optimizers
    assert back.seeds == result.seeds
    assert back.wall_time == result.wall_time
    assert back.config == result.config
    for name in ("steps", "train_loss", "eval_steps", "diverged_at"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name), err_msg=name)
    assert list(back.evals) == list(result.evals)
    for key, values in result.evals.items():
        np.testing.assert_array_equal(back.evals[key], values, err_msg=key)
    assert np.isinf(back.train_loss).sum() == 1 and np.isnan(back.train_loss).sum() == 27


def test_parquet_columns_and_rows(result, run_dir):
    table = pq.read_table(run_dir / "metrics.parquet")
    assert table.schema.equals(METRICS_SCHEMA)
    o, s, t = result.train_loss.shape
    assert table.num_rows == o * s * (t + 3 * result.eval_steps.size)
    rows = table.to_pylist()
    assert {(r["split"], r["metric"]) for r in rows} == {
        ("train_step", "loss"),
        ("train", "loss"),
        ("test", "loss"),
        ("test", "accuracy"),
    }
    matches = [
        r
        for r in rows
        if (r["split"], r["metric"], r["optimizer_index"], r["seed"], r["step"])
        == ("test", "accuracy", 1, 7, 40)
    ]
    assert len(matches) == 1
    row = matches[0]
    assert row["optimizer"] == result.optimizers[1]
    assert row["value"] == result.evals["test/accuracy"][1, 2, 4]


def test_summary_matches_numpy(result, run_dir):
    summary = read_summary(run_dir)
    assert summary["wall_time"] == result.wall_time
    assert summary["last_eval_step"] == 50
    assert summary["train_window"] == [46, 50]  # the last 10% of 50 steps
    finals = {"train_step/loss": result.train_loss[:, :, -5:].astype(np.float64).mean(axis=-1)}
    finals.update({k: v[:, :, -1] for k, v in result.evals.items()})
    for i, entry in enumerate(summary["optimizers"]):
        assert (entry["optimizer"], entry["index"]) == (result.optimizers[i], i)
        ok = result.diverged_at[i] < 0
        assert list(entry["final"]) == list(finals)
        for key, values in finals.items():
            v = values[i][ok]
            assert entry["final"][key] == {
                "mean": v.mean(),
                "std": v.std(ddof=1),
                "min": v.min(),
                "max": v.max(),
                "n": int(ok.sum()),
            }, key


def test_diverged_runs_listed(result, run_dir):
    summary = read_summary(run_dir)
    assert [o["n_diverged"] for o in summary["optimizers"]] == [0, 1]
    assert summary["optimizers"][0]["diverged"] == []
    assert summary["optimizers"][1]["diverged"] == [{"seed": 1, "step": 23}]
    assert result.diverged() == [(result.optimizers[1], 1, 23)]


def test_config_records_run_and_environment(result, run_dir):
    config = read_config(run_dir)
    assert config["config"] == result.config
    assert config["problem"]["name"] == "two-moons(n=500)"
    assert config["problem"]["evals"] == {"test": 4}
    env = config["environment"]
    for key in ("python", "jax", "jaxlib", "optax", "numpy", "backend", "hostname", "written_at"):
        assert env[key], key
    assert env["devices"] and all(isinstance(d, str) for d in env["devices"])
    # XLA compiles for the widest vector instructions the CPU has, and a float32 run's last
    # bits can follow them: the run says which, and which XLA flags were set.
    assert env["cpu"] and env["vector_isa"] in ("AVX-512", "AVX2", "AVX", "SSE4.2", "NEON",
                                                "unknown")  # fmt: skip
    assert env["xla_flags"] == os.environ.get("XLA_FLAGS", "")
    # Strict JSON: NaN/inf never reach the files.
    for name in ("config.json", "summary.json"):
        json.loads((run_dir / name).read_text(), parse_constant=pytest.fail)


def test_figures_are_pngs(run_dir):
    for name in ("loss_curves.png", "eval_curves.png", "final_metrics.png"):
        data = (run_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 10_000, name


def test_redraw_regenerates_figures(run_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "metrics.parquet", "summary.json"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    written = redraw(copy)
    assert sorted(p.name for p in written) == [
        "eval_curves.png",
        "final_metrics.png",
        "loss_curves.png",
    ]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in written)


def test_query_two_runs(result, scaled_result, run_dir, tmp_path):
    other = write_run(scaled_result, tmp_path / "b")
    runs = [str(run_dir), str(other)]
    table = query(
        runs,
        "select run, optimizer_index, avg(value) as mean, count(*) as n from metrics "
        "where split = 'test' and metric = 'loss' and step = 10 group by all",
    )
    assert isinstance(table, pa.Table)
    got = {(r["run"], r["optimizer_index"]): (r["mean"], r["n"]) for r in table.to_pylist()}
    assert len(got) == 4
    for run, res in zip(runs, (result, scaled_result)):
        for i in range(len(res.optimizers)):
            mean, n = got[(run, i)]
            assert n == len(res.seeds)
            # Summation order may differ between DuckDB and NumPy: allow n roundings.
            expected = res.evals["test/loss"][i, :, 1].mean()
            np.testing.assert_allclose(mean, expected, rtol=n * np.finfo(np.float64).eps, atol=0)


def test_final_params_npz(result, tmp_path):
    params = [
        {"w": np.arange(12, dtype=np.float32).reshape(3, 2, 2), "b": np.ones((3, 2), np.float32)},
        {"w": np.ones((3, 2, 2), ml_dtypes.bfloat16), "b": np.zeros((3, 2), np.float32)},
    ]
    with_params = TrainResult(**{**vars(result), "final_params": params})
    out = write_run(with_params, tmp_path / "p")
    with np.load(out / "final_params.npz") as npz:
        assert sorted(npz.files) == ["opt0['b']", "opt0['w']", "opt1['b']", "opt1['w']"]
        np.testing.assert_array_equal(npz["opt0['w']"], params[0]["w"])
        assert npz["opt1['w']"].dtype == np.float32
        np.testing.assert_array_equal(npz["opt1['w']"], np.ones((3, 2, 2), np.float32))


def test_bad_shapes_and_keys_raise(result):
    bad = TrainResult(**{**vars(result), "train_loss": result.train_loss[:, :2]})
    with pytest.raises(ValueError, match="train_loss has shape"):
        metrics_table(bad)
    for key in ("accuracy", "train_step/loss", "/loss"):
        renamed = TrainResult(**{**vars(result), "evals": {key: result.evals["test/loss"]}})
        with pytest.raises(ValueError, match="split/metric"):
            metrics_table(renamed)
