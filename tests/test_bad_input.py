"""Bad input gets one clear error naming the input and the fix; optax loops work with the zoo."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimorph
from optimorph import cli, spec
from optimorph.spec import SpecError


@pytest.mark.parametrize(
    "text, message",
    [
        ("sgd(lr=0.01)(lr=50)", "expected one name"),
        ("sgd(lr=0.01, lr=50)", "lr is given twice"),
        ("sgd(lr='fast')", "lr must be a number or a schedule"),
        ("adam(b1='x')", "b1 must be a number"),
        ("os:system('echo hi')", "user factories are off by default"),
        ("sgd(lr=nan)", "must be finite"),
        ("nosuch(lr=1)", "unknown optimizer 'nosuch'"),
        ("optax.adamw(1e-3)", "write 'optax:adamw"),
    ],
)
def test_malformed_specs_are_refused_before_anything_runs(text, message):
    with pytest.raises(SpecError, match=message):
        optimorph.resolve(text)


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    argv = ["train", "--problem", "quadratic(dim=3)", "--optimizer", "sgd(lr=0.01)(lr=50)",
            "--steps", "5", "--out", str(tmp_path / "r")]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("optimorph: error:") and "expected one name" in err[0]
    )
    assert cli.main(["train", "--problem", "os:getcwd", "--optimizer", "sgd", "--out",
                     str(tmp_path / "s")]) == 2  # fmt: skip
    assert "--allow-import" in capsys.readouterr().err


def test_a_user_factory_that_raises_is_reported_in_one_line(monkeypatch, tmp_path):
    (tmp_path / "badmod.py").write_text("def make():\n    raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    previous = spec.allow_imports(True)
    try:
        with pytest.raises(SpecError, match="badmod:make raised RuntimeError: boom"):
            optimorph.problem("badmod:make")
    finally:
        spec.allow_imports(previous)


@pytest.mark.parametrize("name", sorted(optimorph.optimizers.REGISTRY))
def test_inject_hyperparams_and_extra_args_work_for_every_optimizer(name):
    entry = optimorph.optimizers.REGISTRY[name]
    if not any(h.name == "lr" for h in entry.hparams):
        pytest.skip(f"{name} has no learning rate to inject")
    tx = optax.inject_hyperparams(lambda lr: optimorph.optimizer(name, lr=lr))(lr=0.01)
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    state = tx.init(params)
    grads = jax.tree.map(lambda p: 0.5 * p, params)
    needed = {}  # what the registry entry says the update needs (Newton: the loss)
    if "value_fn" in entry.needs:
        needed["value_fn"] = lambda p: 0.25 * sum(jnp.sum(x**2) for x in jax.tree.leaves(p))
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, **needed))
    updates, state = step(grads, state, params)  # a traced lr: no range check
    assert all(np.isfinite(np.asarray(u)).all() for u in jax.tree.leaves(updates))
    plain = optimorph.optimizer(name, lr=0.01)
    extra, _ = plain.update(grads, plain.init(params), params, value=jnp.asarray(1.0), **needed)
    same, _ = plain.update(grads, plain.init(params), params, **needed)
    for a, b in zip(jax.tree.leaves(extra), jax.tree.leaves(same), strict=True):
        np.testing.assert_array_equal(a, b)  # extra arguments are accepted and ignored


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "adagrad"])
def test_complex_parameters_square_as_optax_does(name):
    params = {"w": jnp.ones(2, jnp.complex128)}
    grads = {"w": jnp.asarray([1j, 2j])}
    tx = optimorph.optimizer(f"{name}(lr=0.1)")
    u, _ = tx.update(grads, tx.init(params), params)
    # The update is along the gradient (purely imaginary here), never rotated to a real number.
    assert np.allclose(np.real(u["w"]) + (0.1 * 0.01 if name == "adamw" else 0.0), 0.0)
    assert np.all(np.imag(u["w"]) < 0)


# Every numeric option has a stated range, checked before any work starts; every refusal is one
# line naming the input and the fix, with exit status 2.
BAD_COMMAND_LINES = [
    (["train", "--problem", "quadratic(dim=3)", "--optimizer", "sgd", "--out", ""],
     "--out: is empty"),
    (["train", "--problem", "quadratic(dim=3)", "--optimizer", "sgd", "--seeds", "0", "--out",
      "{tmp}/a"], "--seeds: must be an integer >= 1, got 0"),
    (["train", "--problem", "quadratic(dim=3)", "--optimizer", "sgd", "--batch-size", "-2",
      "--out", "{tmp}/a"], "--batch-size: must be an integer >= 1"),
    (["train", "--problem", "quadratic(dim=3)", "--optimizer", "sgd", "--probe", "sharpness",
      "--probe-every", "0", "--out", "{tmp}/a"], "--probe-every: must be an integer >= 1"),
    (["train", "--problem", "quadratic(dim=3)", "--optimizer", "sgd", "--steps", "1.5", "--out",
      "{tmp}/a"], "--steps: must be an integer >= 1, got '1.5'"),
    (["train", "--problem", "quadratic(dim=3)", "--optimizer", "sgd", "--checkpoint-every",
      "nan", "--out", "{tmp}/a"], "--checkpoint-every: must be a finite number >= 0"),
    (["train", "--problem", "quadratic(dim=3)", "--optimizer", "sgd", "--out", "{tmp}/file"],
     "is a file, not a directory"),
    (["train", "--problem", "quadratic(dim=3)", "--optimizer", "sgd", "--out", "{tmp}/file/x"],
     "is a file, not a directory"),
    (["compare", "sgd", "signsgd", "--problem", "quadratic(dim=3)", "--C", "-1"],
     "--C: must be a finite number > 0"),
    (["compare", "sgd", "signsgd", "--problem", "quadratic(dim=3)", "--C", "nan"],
     "--C: must be a finite number > 0"),
    (["compare", "sgd", "signsgd", "--problem", "quadratic(dim=3)", "--precision", ","],
     "--precision: give at least one precision"),
    (["compare", "sgd", "signsgd", "--problem", "quadratic(dim=3)", "--steps", "0"],
     "--steps: must be an integer >= 1"),
    (["phase-diagram", "--pairs", "sgd|signsgd", "--mantissa-bits", "99", "--out", "{tmp}/p"],
     "each mantissa width must be an integer in 1..52, got 99"),
    (["phase-diagram", "--pairs", "sgd|signsgd", "--mantissa-bits", "x", "--out", "{tmp}/p"],
     "each mantissa width must be an integer in 1..52, got 'x'"),
    (["phase-diagram", "--pairs", "sgd|signsgd", "--heterogeneity", "-1", "--out", "{tmp}/p"],
     "each heterogeneity must be a finite number >= 1"),
    (["phase-diagram", "--pairs", "sgd|signsgd", "--steps", "0", "--out", "{tmp}/p"],
     "--steps: must be an integer >= 1"),
    (["phase-diagram", "--pairs", "sgd|signsgd", "--seeds", "0", "--out", "{tmp}/p"],
     "--seeds: must be an integer >= 1"),
    (["phase-diagram", "--pairs", "sgd", "--out", "{tmp}/p"], "a pair is 'A|B'"),
    (["which-norm", "sgd", "--samples", "0"], "--samples: must be an integer >= 1"),
    (["run", "batch-size", "--set", "steps=-1", "--out", "{tmp}/r"],
     "--set steps=-1: must be finite and > 0"),
    (["run", "batch-size", "--set", "batch_sizes=[4, 0]", "--out", "{tmp}/r"],
     "--set batch_sizes=0: must be finite and > 0"),
    (["run", "batch-size", "--set", "steps=1.5", "--out", "{tmp}/r"], "give an integer like"),
    (["run", "batch-size", "--set", "batch_sizes=4", "--out", "{tmp}/r"], "non-empty list"),
    # Settings whose default is None are checked against their annotated type.
    (["run", "batch-size", "--set", "workers=0", "--out", "{tmp}/r"],
     "--set workers=0: must be finite and > 0"),
    (["run", "linear-weights", "--set", "n_train=2.5", "--out", "{tmp}/r"],
     "give an integer like"),
    (["run", "linear-weights", "--set", "path=3", "--out", "{tmp}/r"], "give a string"),
    (["run", "nosuch"], "unknown recipe 'nosuch'; registered: batch-size"),
    (["report", "{tmp}/nothing"], "holds no optimorph run"),
    (["list", "nothing"], "invalid choice: 'nothing'"),
]  # fmt: skip


@pytest.mark.parametrize("argv, message", BAD_COMMAND_LINES, ids=lambda x: " ".join(x)[:60])
def test_bad_command_lines_get_one_line_and_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    code = cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("optimorph: error:"), err
    assert message in err[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "seeds, message",
    [([0, 0], "must be distinct"), ([-1], r"0\.\.2\^32-1"), ([0.5], "list of integers"), (0, "one")],
)
def test_bad_seeds_are_refused_before_training(seeds, message):
    with pytest.raises(optimorph.engine.trainer.TrainingError, match=message):
        optimorph.train("quadratic(dim=3)", "sgd", seeds=seeds, steps=2, progress=False)


@pytest.mark.parametrize(
    "optimizer, fmt, rounded, fix",
    [  # default Adam at fp16: eps = 1e-8 is stored as 0; default AdamW at bf16: b2 as 1
        ("adam", "fp16", "eps=1e-08 is stored as 0.0 in fp16", "or choose eps >= 6.104e-05"),
        ("adamw", "bf16", "b2=0.999 is stored as 1.0 in bf16", "or choose b2 <= 0.996"),
    ],
)
def test_a_divergence_names_the_hyperparameter_its_format_rounded_and_its_fix(
    optimizer, fmt, rounded, fix
):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optimorph.PrecisionWarning)
        r = optimorph.train("two-moons(n=64)", optimizer, seeds=1, steps=4, precision=fmt,
                            progress=False)  # fmt: skip
    (line,) = r.divergence_messages()
    assert "at step 1" in line and f"{rounded}: keep hyperparameters wide" in line
    assert f"(e.g. --precision '{fmt},hparams=fp32')" in line and line.endswith(fix)
    other = {"fp16": "bf16", "bf16": "fp16"}[fmt]
    assert other not in line  # the fix is about the format and hyperparameter that failed


# Random spec and precision strings: only the documented error (SpecError / ValueError) escapes.
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SPEC_ALPHABET = "abcdegilmnoprstuvwxy_=(),.[]'\" 0123456789e-+:|;"
_NAMES = ["sgd", "adam", "momentum", "power_law", "nosuch", "os:system", "fp16", "bf16", "e5m2"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(_SPEC_ALPHABET, max_size=30),
    st.builds(lambda n, t: n + t, st.sampled_from(_NAMES), st.text(_SPEC_ALPHABET, max_size=24)),
))  # fmt: skip
def test_random_specs_raise_only_spec_errors(text):
    try:
        optimorph.resolve(text)
    except SpecError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text("efpbm0123456789,=;_ abcdghiklnorstuvwxz", max_size=30),
    st.builds(lambda n, t: n + t, st.sampled_from(["fp16", "bf16", "e5m2", "fp64", "e8m3"]),
              st.text(",=;_ mpsvtaegcdhknrx0123456789", max_size=24)),
))  # fmt: skip
def test_random_precisions_raise_only_value_errors(text):
    from optimorph.precision import precision

    try:
        precision(text)
    except ValueError:
        pass


def test_damaged_run_files_and_checkpoints_name_the_file_and_the_fix(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--problem", "quadratic(dim=3)", "--optimizer", "sgd", "--steps", "20",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    capsys.readouterr()
    (out / "metrics.parquet").write_bytes(b"PAR1 truncated")
    assert cli.main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.parquet is damaged" in err[0] and "--overwrite" in err[0]
    (out / "metrics.parquet").unlink()
    assert cli.main(["report", str(out)]) == 2
    assert "metrics.parquet is missing" in capsys.readouterr().err
    # A truncated checkpoint: every rerun would fail the same way, so say which file to delete.
    ckpt = tmp_path / "ckpt"
    optimorph.train("quadratic(dim=3)", "sgd", steps=20, checkpoint_dir=ckpt, progress=False)
    (path,) = ckpt.glob("*.npz")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(optimorph.engine.trainer.TrainingError, match="delete it"):
        optimorph.train("quadratic(dim=3)", "sgd", steps=20, checkpoint_dir=ckpt, progress=False)
