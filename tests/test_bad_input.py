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
    updates, state = jax.jit(tx.update)(grads, state, params)  # a traced lr: no range check
    assert all(np.isfinite(np.asarray(u)).all() for u in jax.tree.leaves(updates))
    plain = optimorph.optimizer(name, lr=0.01)
    extra, _ = plain.update(grads, plain.init(params), params, value=jnp.asarray(1.0))
    same, _ = plain.update(grads, plain.init(params), params)
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
