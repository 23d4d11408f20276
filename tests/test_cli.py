"""The optimorph command, run in-process: listings, a training run, the demo, and bad input."""

import json
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest

from optimorph import cli, demo
from optimorph.optimizers import REGISTRY
from optimorph.problems import list_problems


def test_list_optimizers_prints_every_registered_one(capsys):
    assert cli.main(["list", "optimizers"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert f"\n{name} " in "\n" + out
    assert "form='pytorch' one of heavy_ball|pytorch|ema" in out


def test_list_problems_prints_every_problem(capsys):
    assert cli.main(["list", "problems"]) == 0
    out = capsys.readouterr().out
    assert all(info.name in out for info in list_problems())
    # One parameter a line, as optimizers' hyperparameters are, never a tuple's repr.
    assert "Param(" not in out
    assert "\n    n: int = 500\n" in out and "\n    widths: list[int] = [64, 64]\n" in out


def _subcommands(parser, prog="optimorph"):
    """(prog, parser) for the command and every subcommand, recursively."""
    import argparse

    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, f"{prog} {name}")


def test_every_option_of_every_command_has_help_and_shows_its_default():
    parser = cli.build_parser()
    checked = 0
    for prog, sub in _subcommands(parser):
        formatter = sub._get_formatter()
        for action in sub._actions:
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"{prog} {name} has no help text"
            shown = formatter._get_help_string(action)
            has_default = action.default not in (None, False, [], "==SUPPRESS==")
            if has_default and (action.option_strings or action.nargs == "?"):
                assert "default" in shown, f"{prog} {name}: default {action.default!r} not shown"
            checked += 1
    assert checked > 60  # every subcommand was walked
    help_text = next(s for p, s in _subcommands(parser) if p == "optimorph train").format_help()
    assert "--steps STEPS         training steps (default: 1000)" in help_text


def test_run_help_lists_every_registered_recipe(capsys):
    from optimorph.experiments.recipes import RECIPES

    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for recipe in RECIPES.values():
        assert f"{recipe.name} {' '.join(recipe.summary.split())}" in out


def test_a_precision_warning_prints_once_in_one_line(tmp_path, capsys):
    import warnings

    argv = ["train", "--problem", "two-moons(n=64)", "--optimizer", "adamw(lr=1e-3)",
            "--optimizer", "adamw(lr=2e-3)", "--precision", "bf16", "--steps", "2", "--quiet",
            "--out", str(tmp_path / "run")]  # fmt: skip
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # Python's own filter would show both
        assert cli.main(argv) == 0
    assert warnings.showwarning is before  # the command's display does not outlive it
    err = capsys.readouterr().err
    shown = [line for line in err.splitlines() if "stored as" in line and "diverged" not in line]
    assert shown == [
        "optimorph: warning: b2=0.999 is stored as 1.0 in bf16: keep hyperparameters wide with "
        "`hparams=fp32` (e.g. --precision 'bf16,hparams=fp32'), or choose b2 <= 0.996"
    ]
    assert ".py:" not in err and "warn_hparams" not in err  # no source path, no code line
    assert "PrecisionWarning" not in err


def test_warnings_turned_into_errors_still_raise_through_the_command(tmp_path):
    import warnings

    from optimorph.precision import PrecisionWarning

    argv = ["train", "--problem", "two-moons(n=64)", "--optimizer", "adamw", "--precision",
            "bf16", "--steps", "2", "--quiet", "--out", str(tmp_path / "run")]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        with pytest.raises(PrecisionWarning, match="b2=0.999 is stored as 1.0"):
            cli.main(argv)


def test_a_demo_recipe_without_its_dataset_is_skipped_with_the_whole_message(
    tmp_path, monkeypatch, capsys
):
    from optimorph.problems import datasets

    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("OPTIMORPH_DATA", str(empty))
    monkeypatch.setattr(datasets, "DEBIAN_DIR", empty / "debian")
    assert "linear-weights" in demo.RECIPES
    pages, skipped = demo.run_recipes(tmp_path, ["linear-weights"], print)
    out = capsys.readouterr().out
    assert pages == [] and [title for title, _ in skipped] == ["Recipe linear-weights (quick)"]
    assert "skipped linear-weights: fashion-mnist not found. Looked in:" in out
    for part in (f"{empty}: no IDX files", "apt-get install dataset-fashion-mnist", "path=<dir>"):
        assert part in out and part in skipped[0][1]
    html = demo.index_page(tmp_path, pages, 1.0, skipped).read_text()
    assert "<h2>Skipped</h2>" in html and "Recipe linear-weights (quick): not run" in html
    assert "apt-get install dataset-fashion-mnist" in html


def test_train_writes_a_complete_run_directory(tmp_path, capsys, monkeypatch):
    # A user's own optimizer, named by package.module:attribute, without touching optimorph.
    (tmp_path / "my_opts.py").write_text(
        textwrap.dedent(
            """
            import optax
            def clipped_sgd(lr=0.1, clip=1.0):
                return optax.chain(optax.clip(clip), optax.sgd(lr))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    argv = [
        "--allow-import",  # my_opts:clipped_sgd is a user factory: opt-in
        "train",
        "--problem",
        "two-moons(n=100)",
        "--optimizer",
        "sgd(lr=0.1)",
        "--optimizer",
        "my_opts:clipped_sgd(lr=0.05)",
        "--seeds",
        "2",
        "--steps",
        "40",
        "--batch-size",
        "10",
        "--eval-every",
        "10",
        "--out",
        str(out),
        "--quiet",
    ]
    assert cli.main(argv) == 0
    for name in ("config.json", "metrics.parquet", "summary.json", "loss_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "checkpoints").exists(), "a finished run leaves no checkpoint behind"
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["optimizers"] == ["sgd(lr=0.1)", "my_opts:clipped_sgd(lr=0.05)"]
    table = pq.read_table(out / "metrics.parquet").to_pylist()
    steps = [r for r in table if r["split"] == "train_step" and r["optimizer_index"] == 1]
    assert len(steps) == 2 * 40 and all(np.isfinite(r["value"]) for r in steps)
    assert "test/accuracy" in capsys.readouterr().out


def test_demo_writes_a_report(tmp_path):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--steps", "80", "--seeds", "1", "--zoo-only"]
    assert cli.main(argv) == 0
    html = (out / "zoo" / "report.html").read_text()
    assert "data:image/png;base64" in html and "lion" in html
    assert "Hessian at the final parameters" in html and (out / "zoo" / "hessian.png").exists()
    assert "zoo/report.html" in (out / "index.html").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--problem", "two-moonz", "--optimizer", "sgd"], "unknown problem 'two-moonz'"),
        (["--problem", "two-moons", "--optimizer", "adamm"], "unknown optimizer 'adamm'"),
        (["--problem", "two-moons", "--optimizer", "adam(b1=2)"], "b1=2.0 is out of range"),
        (["--problem", "two-moons", "--optimizer", "adam(lr=)"], "cannot parse"),
        (["--problem", "two-moons", "--optimizer", "sgd", "--precision", "fp13"], "fp13"),
        (
            ["--problem", "fashion-mnist(path='/nonexistent')", "--optimizer", "sgd"],
            "dataset-fashion-mnist",
        ),
        (
            ["--problem", "two-moons", "--optimizer", "sgd", "--steps", "0"],
            "--steps: must be an integer >= 1",
        ),
    ],
)
def test_bad_input_gets_one_clear_line(argv, message, tmp_path, capsys):
    code = cli.main(["train", *argv, "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("optimorph: error:") and message in err
    assert "Traceback" not in err


def test_phase_diagram_command_writes_figure_and_table(tmp_path, capsys):
    out = tmp_path / "phase"
    argv = [
        "phase-diagram",
        "--pairs",
        "sgd(lr=0.01)|signsgd(lr=0.01)",
        "adam(lr=0.01, b1=0, b2=0, eps=0)|signsgd(lr=0.01)",
        "--mantissa-bits",
        "7,23,52",
        "--heterogeneity",
        "1,100",
        "--steps",
        "40",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--json",
    ]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert len(doc["cells"]) == 2 * 3 * 2
    # The terminal grid: heterogeneity labels over their columns, a legend for the symbols.
    lines = captured.err.splitlines()
    header = next(line for line in lines if line.strip().startswith("heterogeneity:"))
    assert header.split(":")[1].split() == ["1", "100"]
    row = next(line for line in lines if line.strip().startswith("mantissa 52:"))
    for label in ("1", "100"):  # each mark ends where its column's label ends
        end = header.index(f" {label}", len("  heterogeneity:")) + len(label)
        assert row[end] in "#."
    assert any(line.strip().startswith("legend: # equivalent") and ". different" in line
               for line in lines)  # fmt: skip
    sign = [c for c in doc["cells"] if c["a"].startswith("adam")]
    assert all(c["equivalent"] for c in sign)
    assert (out / "phase_diagram.png").stat().st_size > 1000
    assert json.loads((out / "phase_diagram.json").read_text())["cells"] == doc["cells"]


def test_precision_lists_with_roles_and_stagnation_in_the_run_directory(tmp_path):
    from optimorph.results import read_run

    assert cli.precision_specs("fp16,fp32") == ["fp16", "fp32"]
    assert cli.precision_specs("fp16;params=bf16,state=fp32") == ["fp16", "params=bf16,state=fp32"]
    out = tmp_path / "run"
    argv = [
        "train",
        "--problem",
        "quadratic(dim=8, kappa=10)",
        "--optimizer",
        "sgd(lr=1e-4)",
        "--precision",
        "bf16",
        "--steps",
        "40",
        "--track-stalled",
        "--out",
        str(out),
        "--quiet",
    ]
    assert cli.main(argv) == 0
    back = read_run(out)
    assert back.stalled.shape == (1, 1, 40)
    assert back.stalled[0, 0, -1] > 0.5, "bf16 absorbs most of these tiny updates"


def test_a_running_train_can_be_watched_with_report(tmp_path):
    """Every checkpoint but the last writes the metrics so far; `optimorph report DIR` then
    draws the curves so far under a banner, and the finished run replaces them."""
    from optimorph.engine import train
    from optimorph.results import read_run, write_run

    out = tmp_path / "run"
    pages = []

    def watch(partial):
        write_run(partial, out)
        assert cli.main(["report", str(out)]) == 0
        pages.append((partial.config["progress"], (out / "report.html").read_text()))
        seen = read_run(out)
        done, running = partial.config["progress"]["done"], partial.config["progress"]["group"] - 1
        assert np.isfinite(seen.train_loss[:running]).all()  # programs done: complete
        assert np.isfinite(seen.train_loss[running, :, :done]).all()
        assert np.isnan(seen.train_loss[running, :, done:]).all()
        assert np.isnan(seen.train_loss[running + 1 :]).all()  # programs to come: NaN

    result = train("two-moons(n=100)", ["sgd(lr=0.1)", "adam(lr=1e-3)"], steps=60, seeds=2,
                   chunk_steps=20, eval_every=20, checkpoint_dir=tmp_path / "ckpt",
                   on_checkpoint=watch, progress=False)  # fmt: skip
    assert [p for p, _ in pages][:2] == [{"done": 20, "steps": 60, "group": 1, "groups": 2},
                                         {"done": 40, "steps": 60, "group": 1, "groups": 2}]
    assert len(pages) == 4  # two per program: the last checkpoint of each is the result itself
    assert all("Still running: step" in page and "loss_curves.png" in page for _, page in pages)
    write_run(result, out)
    assert cli.main(["report", str(out)]) == 0
    assert "Still running" not in (out / "report.html").read_text()


def test_classes_prints_the_stall_warning_its_report_shows(tmp_path, capsys):
    """Steps of 1e-6 vanish in bf16: two stalled runs look alike without being one algorithm."""
    pair = ["sgd(lr=1e-6)", "momentum(lr=1e-6, beta=0)"]
    argv = ["classes", "--optimizers", ",".join(pair), "--problem", "least-squares(n=32, d=4)",
            "--precision", "bf16", "--seeds", "2", "--steps", "20", "--quiet",
            "--out", str(tmp_path / "classes")]  # fmt: skip
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "mostly stalled" in line]
    assert line.strip().startswith(f"WARNING: {pair[0]} | {pair[1]}: both runs mostly stalled")
    assert "a collapse by stagnation, not evidence of one algorithm" in line
    report = (tmp_path / "classes" / "report.html").read_text()
    assert line.split(": ", 2)[2] in report  # the same words as the report's verdict table


def test_classes_diagnose_prints_where_a_different_pair_parts(capsys):
    pair = ["rmsprop(lr=1e-3)", "rmsprop(lr=1e-3, eps_inside=true)"]
    argv = ["classes", "--optimizers", ",".join(pair), "--problem", "least-squares(n=32, d=4)",
            "--precision", "fp32", "--seeds", "2", "--steps", "20", "--quiet", "--diagnose"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.strip().startswith("different:")]
    assert f"{pair[0]} | {pair[1]}" in line and "likely cause [eps-sqrt]" in line
