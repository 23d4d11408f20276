"""Probes plug into the compiled step: they see exactly what the step computed."""

import jax.numpy as jnp
import numpy as np
import pytest

import optimorph
from optimorph.engine import TrainingError, train
from optimorph.probes import Probe, global_norm, tree_dot, tree_sub


def _values_probe():
    """Records, per step, quantities a plain loop can recompute: the step's loss, the lr, the
    squared step length, <g, x_{t+1} - x_t> and the running count of steps seen."""

    def update(v, count):
        dx = tree_sub(v.new_params, v.params)
        return count + 1, {
            "seen": (count + 1).astype(jnp.float64),
            "step_loss": v.loss,
            "lr_t": v.lr,
            "dx2": tree_dot(dx, dx),
            "g_dot_dx": tree_dot(v.grads, dx),
            "gnorm": global_norm(v.grads),
            "eval_size": jnp.asarray(v.eval_batch[0].shape[0], jnp.float64),
        }

    outputs = ("seen", "step_loss", "lr_t", "dx2", "g_dot_dx", "gnorm", "eval_size")
    return Probe("values", init=lambda p: jnp.zeros((), jnp.int32), update=update, outputs=outputs)


def test_a_probe_sees_the_steps_values_inside_the_scan():
    prob = optimorph.problem("quadratic(dim=5, kappa=10)")
    spec = "sgd(lr=power_law(0.1, tau=10, alpha=1))"
    r = train(prob, spec, steps=20, eval_every=10, precision="fp64", probes=[_values_probe()],
              progress=False)  # fmt: skip
    p = r.probes
    np.testing.assert_array_equal(p["seen"][0, 0], np.arange(1, 21))  # state carried
    np.testing.assert_array_equal(p["step_loss"][0, 0], r.train_loss[0, 0])
    lr = 0.1 / (1 + np.arange(1, 21) / 10)  # optimizers count steps from 1
    np.testing.assert_allclose(p["lr_t"][0, 0], lr, rtol=1e-15)
    # SGD: dx = -lr g, so <g, dx> = -lr |g|^2 and |dx|^2 = lr^2 |g|^2 (float64 rounding).
    np.testing.assert_allclose(p["g_dot_dx"][0, 0], -lr * p["gnorm"][0, 0] ** 2, rtol=1e-12)
    np.testing.assert_allclose(p["dx2"][0, 0], (lr * p["gnorm"][0, 0]) ** 2, rtol=1e-12)
    assert (p["eval_size"] == prob.n_train).all()


def test_probe_outputs_are_reduced_per_log_window_by_the_probes_rule():
    prob = optimorph.problem("quadratic(dim=3)")
    counter = {
        "mean": Probe("c_mean", lambda p: jnp.zeros(()), lambda v, s: (s + 1, {"c_mean": s + 1})),
        "max": Probe("c_max", lambda p: jnp.zeros(()), lambda v, s: (s + 1, {"c_max": s + 1}),
                     reduce="max"),
        "last": Probe("c_last", lambda p: jnp.zeros(()), lambda v, s: (s + 1, {"c_last": s + 1}),
                      reduce="last"),
    }  # fmt: skip
    r = train(prob, "sgd(lr=0.1)", steps=12, eval_every=4, log_every=4,
              probes=list(counter.values()), progress=False)  # fmt: skip
    np.testing.assert_array_equal(r.probes["c_mean"][0, 0], [2.5, 6.5, 10.5])
    np.testing.assert_array_equal(r.probes["c_max"][0, 0], [4, 8, 12])
    np.testing.assert_array_equal(r.probes["c_last"][0, 0], [4, 8, 12])


def test_stagnation_is_a_probe_and_matches_the_recorded_trajectory():
    prob = optimorph.problem("quadratic(dim=200, kappa=1000)")
    r = train(prob, "sgd(lr=1e-3)", steps=3, eval_every=1, precision="bf16",
              track_stalled=True, record_params=True, progress=False)  # fmt: skip
    assert r.config["probes"] == ["stalled", "trajectory"]
    traj = r.trajectory[0, 0]  # x_0 .. x_3; every gradient coordinate is nonzero here
    unmoved = (traj[1:] == traj[:-1]).mean(axis=1)
    assert 0 < unmoved[0] < 1
    np.testing.assert_allclose(r.stalled[0, 0], unmoved, rtol=1e-6)


def test_probes_are_checked():
    prob = optimorph.problem("quadratic(dim=3)")
    twice = Probe("loss", lambda p: (), lambda v, s: (s, {"loss": v.loss}))
    with pytest.raises(TrainingError, match="outputs \\['loss'\\] twice"):
        train(prob, "sgd", steps=4, probes=[twice], progress=False)
    with pytest.raises(TrainingError, match="Probe objects"):
        train(prob, "sgd", steps=4, probes=["gap"], progress=False)
    with pytest.raises(ValueError, match="reduce must be one of"):
        Probe("x", lambda p: (), lambda v, s: (s, {}), reduce="median")


def test_probes_by_name_compile_once_for_repeated_calls(monkeypatch):
    """Named probes are one object per arguments, so a sweep or a benchmark calling train again
    with the same probes reuses its compiled programs (new probe objects made new programs)."""
    from optimorph.engine import trainer
    from optimorph.probes.trajectory import make_probes

    builds = []
    original = trainer._build_programs
    monkeypatch.setattr(trainer, "_build_programs", lambda *a: builds.append(1) or original(*a))
    prob = optimorph.problem("two-moons(n=100)")
    kw = dict(seeds=2, steps=20, batch_size=10, progress=False)
    first = train(prob, "sgd(lr=0.1)", probes=make_probes("gap,smooth,corr,noise"), **kw)
    second = train(prob, "sgd(lr=0.1)", probes=make_probes("gap,smooth,corr,noise"), **kw)
    assert len(builds) == 1
    other = train(prob, "sgd(lr=0.1)", probes=make_probes("gap", beta=0.9), **kw)
    assert len(builds) == 2 and "inst_gap" in other.probes  # other arguments: another program
    for key, values in first.probes.items():
        np.testing.assert_array_equal(values, second.probes[key])
