"""The empirical-assumptions recipes measure what the study measured, with exact checks where
the answer is known (convex problems)."""

import numpy as np

from optimorph.experiments import assumptions


def test_convex_problems_show_no_positive_gap_and_a_ratio_above_one():
    """Least squares under GD and logistic regression under AdamW and SGD are convex for every
    minibatch: every claim of the convex recipe must hold, and the stored runs must agree."""
    config = assumptions.ConvexConfig(datasets=("breast_cancer",), epochs=4, reference_steps=300,
                                      seeds=2)  # fmt: skip
    out = assumptions.convex(config)
    decided = [f for f in out["findings"] if f["held"] is not None]
    assert len(decided) == 5 and all(f["held"] for f in decided), decided
    gd = out["results"]["least-squares"]
    # GD on a quadratic: the gap is -1/2 dx^T A dx < 0 and <g_t, x_t - x_{t-1}> < 0 every step.
    assert np.all(gd.probes["inst_gap"] < 0)
    assert np.all(gd.probes["update_corr"][..., 1:] < 0)
    logistic = out["results"]["logistic-breast_cancer"]
    allowance = assumptions.gap_allowance(logistic.train_loss, "fp32")
    assert np.all(logistic.probes["inst_gap"] <= allowance)
    assert np.all(logistic.probes["convexity_ratio"][..., -1] >= 1 - 1e-3)
    assert np.all(logistic.probes["ref_gap"] <= allowance)


def test_gap_allowance_is_derived_from_the_format():
    loss = np.array([1.0, 2.0])
    fp32, bf16 = assumptions.gap_allowance(loss, "fp32"), assumptions.gap_allowance(loss, "bf16")
    np.testing.assert_allclose(fp32, 8 * 2.0**-24 * (loss + 1e-6))
    np.testing.assert_allclose(bf16 / fp32, 2.0**16)


def test_steepest_descent_recipe_tunes_each_norm_and_shampoo_matches_spectral_descent():
    from optimorph.experiments import norms_study

    config = norms_study.NormsLeastSquaresConfig(norms=("l2", "spectral"), lrs=(1e-3, 0.01, 0.1),
                                                 steps=60, seeds=1)  # fmt: skip
    out = norms_study.norms_least_squares(config)
    table = out["tables"]["norms"]
    assert [row["norm"] for row in table] == ["l2", "spectral"]
    assert all(row["best_lr"] in config.lrs for row in table)
    # The best lr is the grid's lowest final loss: the stored tuned runs are those.
    tuned = out["result"]
    np.testing.assert_allclose(tuned.train_loss[:, :, -1].mean(axis=1),
                               [row["final_loss"] for row in table])  # fmt: skip
    shampoo = out["findings"][2]
    assert shampoo["held"], shampoo["measured"]


def test_an_edge_row_without_a_measurement_after_the_skip_is_undecided_not_a_crash():
    """--set steps=40 with adam_skip=50: no preconditioned sharpness to judge; the row says so."""
    config = assumptions.EdgeConfig()
    steps = np.arange(1, 41)
    series = np.full((1, 40), np.nan)
    series[0, ::20] = 1.0
    probes = {"precond_sharpness": series, "sharpness": series, "inst_smooth": series,
              "exp_smooth": series}  # fmt: skip
    row = assumptions._edge_row(config, 1e-3, probes, steps, key="precond_sharpness",
                                factor=38.0, skip=50)  # fmt: skip
    assert row["start"] is None and np.isnan(row["max"]) and np.isnan(row["final"])
    measured = assumptions._edge_row(config, 0.5, probes, steps)  # 2/lr = 4: never reached
    assert measured["max"] == 1.0 and measured["start"] is None
