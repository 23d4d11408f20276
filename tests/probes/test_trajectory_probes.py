"""Trajectory probes against exact values: quadratics, convex logistic regression, random scaling."""

import jax
import numpy as np
import pytest

import optimorph
from optimorph.precision import FP32
from optimorph.probes.trajectory import make_probes
from optimorph.spec import SpecError


def test_on_a_quadratic_gap_smoothness_and_sharpness_are_exact():
    dim, kappa = 8, 10.0
    lam = np.geomspace(1.0, kappa, dim).astype(np.float32).astype(np.float64)  # the problem's A
    r = optimorph.train(f"quadratic(dim={dim}, kappa={kappa})", "sgd(lr=0.1)", steps=30,
                        eval_every=1, precision="fp64", record_params=True,
                        probes=make_probes("gap,smooth,sharpness", every=1), progress=False)  # fmt: skip
    x = r.trajectory[0, 0]  # x_0 .. x_30
    dx = np.diff(x, axis=0)
    expected_gap = -0.5 * np.sum(lam * dx**2, axis=1)  # f quadratic: the gap is -1/2 dx^T A dx
    np.testing.assert_allclose(r.probes["inst_gap"][0, 0], expected_gap, rtol=1e-9, atol=1e-14)
    smooth = r.probes["inst_smooth"][0, 0]
    assert np.all((smooth >= lam.min() * (1 - 1e-12)) & (smooth <= lam.max() * (1 + 1e-12)))
    np.testing.assert_allclose(r.probes["sharpness"][0, 0], lam.max(), rtol=1e-8)
    np.testing.assert_allclose(r.probes["sharpness_lr"][0, 0], 0.1)
    assert np.all(r.probes["max_smooth"][0, 0] == np.maximum.accumulate(smooth))


@pytest.mark.parametrize("bias_correction", [True, False])
def test_preconditioned_sharpness_of_adam_on_a_quadratic(bias_correction):
    """On f = 1/2 x^T A x with A diagonal, P^-1/2 A P^-1/2 is diagonal: the preconditioned
    sharpness after step t is max_i lam_i / P_i with P = (1 - b1^t)(sqrt(v_hat) + eps), v
    replayed from the trajectory (g = A x). SGD has none (NaN)."""
    dim, kappa, b1, b2, eps = 6, 10.0, 0.9, 0.99, 1e-8
    lam = np.geomspace(1.0, kappa, dim).astype(np.float32).astype(np.float64)
    spec = f"adam(lr=0.05, b1={b1}, b2={b2}, eps={eps}, bias_correction={bias_correction})"
    r = optimorph.train(f"quadratic(dim={dim}, kappa={kappa})", [spec, "sgd(lr=0.1)"],
                        steps=12, eval_every=1, precision="fp64", record_params=True,
                        probes=make_probes("sharpness", every=1), progress=False)  # fmt: skip
    x = r.trajectory[0, 0]
    v = np.zeros(dim)
    expected = []
    for t in range(12):  # the probe at step t sees the state after it: count t + 1
        v = b2 * v + (1 - b2) * (lam * x[t]) ** 2
        n = t + 1
        if bias_correction:
            p = (1 - b1**n) * (np.sqrt(v / (1 - b2**n)) + eps)
        else:
            p = np.sqrt(v) + eps
        expected.append(np.max(lam / p))
    np.testing.assert_allclose(r.probes["precond_sharpness"][0, 0], expected, rtol=1e-7)
    np.testing.assert_allclose(r.probes["sharpness"][0, 0], lam.max(), rtol=1e-8)
    assert np.isnan(r.probes["precond_sharpness"][1]).all()


def test_on_a_quadratic_the_gap_against_x_star_is_minus_half_the_a_norm():
    """f = 1/2 x^T A x: f(x) - f(x*) - <A x, x - x*> = -1/2 (x - x*)^T A (x - x*), every step."""
    from optimorph.probes.trajectory import reference_gap

    dim, kappa = 8, 10.0
    lam = np.geomspace(1.0, kappa, dim).astype(np.float32).astype(np.float64)
    prob = optimorph.problem(f"quadratic(dim={dim}, kappa={kappa})")
    x_star = jax.tree.map(lambda a: np.linspace(-1.0, 1.0, a.size).reshape(a.shape),
                          prob.init(jax.random.key(5)))  # fmt: skip
    r = optimorph.train(prob, "sgd(lr=0.1)", steps=30, eval_every=1, precision="fp64",
                        record_params=True, probes=[reference_gap(x_star, beta=0.9)],
                        progress=False)  # fmt: skip
    d = r.trajectory[0, 0][:-1] - np.concatenate(jax.tree.leaves(x_star))[None]  # x_0 .. x_29
    want = -0.5 * np.sum(lam * d**2, axis=1)
    np.testing.assert_allclose(r.probes["ref_gap"][0, 0], want, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(r.probes["avg_ref_gap"][0, 0],
                               np.cumsum(want) / np.arange(1, 31), rtol=1e-9)  # fmt: skip


def test_spectrum_probe_on_a_quadratic_is_its_known_spectrum():
    """A = diag(lam): the top three and the smallest eigenvalue by Lanczos, and the trace by
    Hutchinson, exact (z^T A z = sum lam for every Rademacher z), measured every 5 steps."""
    dim, kappa = 8, 10.0
    lam = np.geomspace(1.0, kappa, dim).astype(np.float32).astype(np.float64)
    r = optimorph.train(f"quadratic(dim={dim}, kappa={kappa})", "sgd(lr=0.1)", steps=20,
                        precision="fp64", probes=make_probes("spectrum", every=5),
                        progress=False)  # fmt: skip
    p = {k: v[0, 0] for k, v in r.probes.items()}
    at = np.arange(0, 20, 5)
    assert np.isnan(p["eig_top1"][1:5]).all()
    for i in range(3):
        np.testing.assert_allclose(p[f"eig_top{i + 1}"][at], lam[::-1][i], rtol=1e-9)
    np.testing.assert_allclose(p["eig_min"][at], lam.min(), rtol=1e-9)
    np.testing.assert_allclose(p["hess_trace"][at], lam.sum(), rtol=1e-12)
    np.testing.assert_allclose(p["hess_trace_se"][at], 0.0, atol=1e-9)
    assert "spectrum" not in [q.name for q in make_probes("all")]
    assert [q.name for q in make_probes("all,spectrum")][-1] == "spectrum"


def test_convex_logistic_regression_has_no_positive_gap_beyond_rounding():
    prob = optimorph.problem("logistic(dataset=breast_cancer)")
    reference = optimorph.train(prob, "adam(lr=0.05)", steps=600, precision="fp32",
                                progress=False).final_params[0]  # fmt: skip
    x_star = jax.tree.map(lambda a: a[0], reference)
    r = optimorph.train(prob, "sgd(lr=0.1)", steps=300, batch_size=32, precision="fp32",
                        probes=make_probes("gap,ratio", reference=x_star), progress=False)  # fmt: skip
    gap = r.probes["inst_gap"][0, 0]
    loss = r.train_loss[0, 0]
    # Rounding allowance of three float32 losses/inner products of size ~loss: 8 u |f| + tiny.
    allowance = 8 * FP32.unit_roundoff * (np.abs(loss) + 1e-6)
    assert np.all(gap <= allowance), (gap.max(), allowance[np.argmax(gap)])
    assert np.mean(gap < 0) > 0.9  # strictly convex: the gaps are negative
    ratio = r.probes["convexity_ratio"][0, 0, -1]
    assert ratio >= 1 - 1e-4, ratio
    ref_gap = r.probes["ref_gap"][0, 0]  # against x*: the same convexity, a longer chord
    assert np.all(ref_gap <= allowance), (ref_gap.max(), allowance[np.argmax(ref_gap)])
    assert np.mean(ref_gap < 0) > 0.9


def test_random_scaling_makes_the_update_correlation_track_the_loss_difference():
    prob = optimorph.problem("least-squares(n=200, d=10, hetero=10)")
    kw = dict(steps=3000, batch_size=10, precision="fp64", probes=make_probes("corr"),
              seeds=3, progress=False)  # fmt: skip
    rs = optimorph.train(prob, "random-scaling(inner='adam(lr=0.01)')", **kw).probes
    gap = np.abs(rs["cum_rs_corr"][0, :, -1] / rs["cum_loss_diff"][0, :, -1] - 1)
    assert np.all(gap < 0.1), gap  # measured: 0.1%, 2.6%, 6.1%
    plain = optimorph.train(prob, "sgd(lr=0.02)", **kw).probes  # no random scaling:
    assert np.all(np.isnan(plain["cum_rs_corr"]))
    corr, diff = plain["cum_update_corr"][0, :, -1], plain["cum_loss_diff"][0, :, -1]
    assert np.all(np.sign(corr) != np.sign(diff))  # the update correlation need not track it


def test_probe_names_are_checked():
    with pytest.raises(SpecError, match="unknown probe 'gapp'; valid: gap, smooth"):
        make_probes("gapp")
    with pytest.raises(SpecError, match="needs a reference point"):
        make_probes("ratio")
    assert [p.name for p in make_probes("all")] == ["gap+smooth", "corr", "noise", "sharpness"]


def test_cli_probes_are_stored_read_back_and_drawn(tmp_path, check_page):
    from optimorph import cli
    from optimorph.results import read_run

    out = tmp_path / "run"
    argv = ["train", "--problem", "two-moons(n=64, activation=tanh)", "--optimizer", "sgd(lr=0.1)",
            "--seeds", "2", "--steps", "60", "--batch-size", "16", "--probe", "gap,smooth",
            "--probe", "corr,noise,sharpness", "--probe-every", "20", "--quiet", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    back = read_run(out)
    assert {"inst_gap", "inst_smooth", "cum_update_corr", "grad_noise", "sharpness"} <= set(
        back.probes
    )
    assert back.probes["inst_gap"].shape == (1, 2, 60)
    sharp = back.probes["sharpness"][0, 0]
    assert np.isfinite(sharp[[0, 20, 40]]).all() and np.isnan(sharp[[1, 21]]).all()
    ref = out / "ref"
    assert cli.main([*argv[:-1], str(ref)]) == 0
    argv_ratio = [*argv[:-1], str(tmp_path / "r2"), "--probe", "ratio", "--probe-reference",
                  str(ref)]  # fmt: skip
    assert cli.main(argv_ratio) == 0
    assert "convexity_ratio" in read_run(tmp_path / "r2").probes
    assert (out / "probes.png").exists()
    assert check_page(out / "report.html")["images"] >= 4
