"""Sweep files: what a valid one expands to, and one message with the file and line for each
kind of mistake, before any cell runs."""

from pathlib import Path

import pytest

from optimorph.cli import main
from optimorph.sweeps import SweepFileError, load, loads

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sweep.toml"
BASE = """\
problems = ["quadratic(dim=4)"]
seeds = 2

[settings]
steps = 20

[[optimizers]]
spec = "adam"
lr = [1e-3, 1e-2]
"""


def error(text: str) -> str:
    with pytest.raises(SweepFileError) as caught:
        loads(text, "s.toml")
    return str(caught.value)


def test_the_example_file_expands_to_its_grid():
    sweep = load(EXAMPLE)
    assert len(sweep.cells) == 2 * 3 * (5 + 4 * 2)  # precisions x seeds x optimizer points
    assert len(sweep.batches) == 4  # (sgd, adam) x 2 precisions: one program each
    adam = {c.canonical for c in sweep.cells if c.canonical.startswith("adam")}
    assert "adam(lr=0.0316, b1=0.9, b2=0.99, eps=1e-08, bias_correction=True)" not in adam
    assert "adam(lr=0.001, b1=0.9, b2=0.999, eps=1e-08, bias_correction=True)" in adam
    assert "adam(lr=0.1, b1=0.9, b2=0.99, eps=1e-08, bias_correction=True)" in adam
    sgd = sorted({c.optimizer for c in sweep.cells if c.optimizer.startswith("sgd")})
    assert sgd == [f"sgd(lr={x})" for x in (0.01, 0.0316, 0.1, 0.316, 1.0)]
    assert sorted(c for b in sweep.batches for c in b.cell_ids) == sorted(c.id for c in sweep.cells)


def test_batches_hold_at_most_max_lanes_and_every_cell_once():
    sweep = loads(BASE.replace("steps = 20", "steps = 20\nmax_lanes = 4")
                  .replace("[1e-3, 1e-2]", "{ log = [1e-4, 1], n = 5 }"))  # fmt: skip
    assert [b.lanes for b in sweep.batches] == [4, 4, 2]
    assert sorted(c for b in sweep.batches for c in b.cell_ids) == sorted(c.id for c in sweep.cells)


def test_ranges_one_minus_beta_and_spec_values():
    sweep = loads(BASE.replace(
        "lr = [1e-3, 1e-2]",
        'lr = "power_law(0.1, tau=50)"\nb2 = { log = [1e-3, 1e-1], n = 3, one_minus_beta = true }',
    ))  # fmt: skip
    b2 = sorted({c.optimizer for c in sweep.cells})
    assert b2 == [f"adam(lr=power_law(0.1, tau=50), b2={x})" for x in (0.9, 0.99, 0.999)]


@pytest.mark.parametrize(
    "change, line, words",
    [
        (("seeds = 2", "seeds = 2\ncolour = 'red'"), 3, "unknown key 'colour'; a sweep file has"),
        (('spec = "adam"', 'spec = "adamm"'), 8, "unknown optimizer 'adamm'; registered:"),
        (("lr = [1e-3, 1e-2]", "lr = 1e-3\nb3 = 0.9"), 10, "adam has no hyperparameter 'b3'"),
        (("lr = [1e-3, 1e-2]", "lr = [\n  1e-3,\n  -1.0,\n]"), 11, "must be finite and >= 0"),
        (("[1e-3, 1e-2]", "{ log = [0, 1e-2], n = 3 }"), 9, "logspace needs low, high > 0"),
        (("lr = [1e-3, 1e-2]", "b2 = { values = [0.5, 2.0], one_minus_beta = true }"), 9,
         "one_minus_beta takes gaps 1 - beta in (0, 1]"),
        (("[1e-3, 1e-2]", "[]"), 9, "an axis needs at least one value"),
        (("steps = 20", "steps = 20\nstepz = 3"), 6, "unknown setting 'stepz'; valid: steps"),
        (("steps = 20", 'steps = "ten"'), 5, "steps = 'ten' must be a positive integer"),
        (("steps = 20", "steps = 20\neval_every = 3"), 4, "eval_every=3 must divide steps=20"),
        (("seeds = 2", "seeds = [0, 0]"), 2, "seed 0 is listed twice"),
        (("seeds = 2", 'seeds = 2\nprecisions = ["fp32", "fp12"]'), 3, "unknown format 'fp12'"),
        (("seeds = 2", 'seeds = 2\nprecisions = ["bf16,nu=fp32"]'), 3,
         "adam has no state slot 'nu'; its slots are count, m, v"),
        (("steps = 20", "steps = = 20"), 5, "not valid TOML"),
        (('problems = ["quadratic(dim=4)"]', ""), 1, "problems is missing; add e.g."),
        (('problems = ["quadratic(dim=4)"]', 'problems = ["quadratic(dim=0)"]'), 1,
         "dim=0 is out of range"),
        ((BASE, BASE + '\n[[optimizers]]\nspec = "adam(lr=0.001)"\n'), 11,
         "adam(lr=0.001) is the same cell as adam(lr=0.001) (line 7)"),
        ((BASE, BASE + '\n[statistics]\nreference = "bf16"\n'), 12,
         "reference = 'bf16' is not among the precisions: fp32"),
        ((BASE, BASE + '\n[statistics]\nagainst = "seed"\nreference = "fp32"\n'), 12,
         "against = 'seed': compare cells that differ in precision or in optimizer"),
        ((BASE, BASE + '\n[statistics]\nagainst = "optimizer"\n'), 11,
         'statistics: reference is missing; add the optimizer the others are compared with'),
        ((BASE, BASE + '\n[statistics]\nagainst = "optimizer"\nreference = "sgd(lr=0.1)"\n'),
         13, "reference = 'sgd(lr=0.1)' is not one of the optimizer points"),
        ((BASE, BASE + '\n[statistics]\nreference = "fp32"\nmargin = 0\n'), 13,
         "margin = 0 must be a number in (0, inf)"),
        ((BASE, BASE + '\n[statistics]\nreference = "fp32"\nmetric = "tset_loss"\n'), 13,
         "metric = 'tset_loss': give a final number of each cell"),
        ((BASE, BASE + '\n[statistics]\nreference = "fp32"\ntest = "welch"\n'), 13,
         "unknown statistics key 'test'; valid: against, reference"),
    ],
)
def test_a_mistake_is_one_message_with_its_line(change, line, words):
    message = error(BASE.replace(*change))
    assert message.startswith(f"s.toml:{line}: "), message
    assert words in message, message
    assert "\n" not in message


def test_the_command_prints_the_error_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE.replace('spec = "adam"', 'spec = "adam(lr=1e-3, lr=1e-2)"'))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"optimorph: error: {bad}:8: lr is given twice"), err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_check_lists_the_batches_and_runs_nothing(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text(BASE)
    assert main(["sweep", str(good), "--out", str(tmp_path / "out"), "--check"]) == 0
    captured = capsys.readouterr()
    assert "4 cells in 1 batch" in captured.err
    assert "2 optimizer points x 2 seeds" in captured.out
    assert not (tmp_path / "out").exists()


def test_the_statistics_plan_is_checked_and_recorded_with_the_store():
    text = BASE.replace("quadratic(dim=4)", "two-moons(n=64)").replace(
        "seeds = 2", 'seeds = 2\nprecisions = ["fp32", "bf16,hparams=fp32"]') + (
        '\n[statistics]\nreference = "fp32"\nmetric = "test_loss"\nmargin = 0.1\n')
    plan = loads(text, "s.toml").document()["statistics"]
    assert plan == {"against": "precision", "reference": "fp32", "metric": "test_loss",
                    "margin": 0.1, "alpha": 0.05}  # fmt: skip
    by_optimizer = loads(BASE + '\n[statistics]\nagainst = "optimizer"\nreference = '
                         '"adam(lr=1e-2)"\n', "s.toml").statistics  # fmt: skip
    assert by_optimizer["reference"].startswith("adam(lr=0.01, b1=0.9")  # the canonical spec
    assert loads(BASE, "s.toml").document()["statistics"] is None
