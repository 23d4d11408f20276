"""The noise-floor verdicts on the cases whose answer is known (issue: numerical equivalence)."""

import json

import numpy as np
import pytest

import optimorph
from optimorph import cli
from optimorph.equivalence.compare import classes, compare

PROBLEM = "least-squares(n=64, d=8, hetero=10)"
HETERO = "least-squares(n=64, d=8, hetero=100)"
KW = dict(seeds=3, steps=120, batch_size=16, progress=False)


def test_momentum_forms_are_equivalent_at_fp64_and_fp16():
    c = compare(
        "momentum(lr=0.002, beta=0.9)",
        "momentum(lr=0.002, beta=0.9, form='ema')",
        problem=PROBLEM,
        precision=["fp16", "fp64"],
        **KW,
    )
    for p in ("fp16", "fp64"):
        v = c.pairs[p][0]
        assert v.equivalent, v.reason
        assert 0 < v.distance_ratio <= 10
        assert v.map.startswith("momentum") and abs(v.kappa_phi - 10) < 1e-9
    # The defect sits at the format's rounding level: far below fp16's u at fp64.
    assert c.pairs["fp64"][0].defect_ab < 1e-14 < c.pairs["fp16"][0].defect_ab < 1e-2


def test_adam_without_moments_is_signsgd_at_fp32():
    prob = optimorph.problem(PROBLEM)
    specs = ["adam(lr=0.002, b1=0, b2=0, eps=0)", "signsgd(lr=0.002)"]
    r = optimorph.train(prob, specs, precision="fp32", record_params=True, **KW)
    a, b = r.trajectory[0], r.trajectory[1]
    ulp = np.spacing(np.abs(a).astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(a - b) <= ulp)
    v = compare(*specs, problem=prob, precision="fp32", **KW).pairs["fp32"][0]
    assert v.equivalent and v.defect_ab <= optimorph.precision("fp32").unit_roundoff


def test_signsgd_is_not_sgd_on_a_heterogeneous_problem():
    c = compare(
        "sgd(lr=1e-4)", "signsgd(lr=1e-4)", problem=HETERO, precision=["fp16", "fp32", "fp64"], **KW
    )
    ratios = [c.pairs[p][0].distance_ratio for p in ("fp16", "fp32", "fp64")]
    assert not any(c.pairs[p][0].equivalent for p in c.pairs)
    assert ratios[0] < ratios[1] < ratios[2], "the noise floor shrinks with precision"
    theory = c.pairs["fp64"][0].theory
    assert theory["signsgd_bound_median"] > 1  # ||g|| / min |g_i| on the run's gradients


def test_a_tiny_learning_rate_change_is_visible_at_fp64_not_at_e8m3():
    c = compare(
        "sgd(lr=0.002)", "sgd(lr=0.002002)", problem=PROBLEM, precision=["fp64", "e8m3"], **KW
    )
    assert not c.pairs["fp64"][0].equivalent
    assert c.pairs["e8m3"][0].equivalent, c.pairs["e8m3"][0].reason
    # The paired final difference: the smaller rate ends a little higher on every seed.
    v = c.pairs["fp64"][0]
    low, high = v.final_diff_ci
    assert 0 < low < v.final_diff < high, (v.final_metric, v.final_diff, v.final_diff_ci)
    assert v.summary()["final_diff_ci"] == [low, high]


def test_classes_and_cli_json(capsys):
    c = classes(
        ["sgd(lr=1e-4)", "momentum(lr=1e-4, beta=0)", "signsgd(lr=1e-4)"],
        problem=HETERO,
        precisions=["fp64"],
        **KW,
    )
    assert c.classes["fp64"] == [
        ["sgd(lr=1e-4)", "momentum(lr=1e-4, beta=0)"],
        ["signsgd(lr=1e-4)"],
    ]
    code = cli.main(
        [
            "compare",
            "sgd(lr=0.002)",
            "momentum(lr=0.002, beta=0)",
            "--problem",
            PROBLEM,
            "--precision",
            "fp32",
            "--seeds",
            "2",
            "--steps",
            "40",
            "--json",
            "--quiet",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    fields = {
        "equivalent",
        "distance_ratio",
        "defect_ab",
        "defect_ba",
        "kappa_phi",
        "kappa_psi",
        "map",
        "growth_exponent",
        "p_value",
        "tost_p_value",
    }
    assert fields <= set(doc["precisions"]["fp32"])
    assert doc["precisions"]["fp32"]["equivalent"] is True


def test_an_interrupted_comparison_resumes_from_its_checkpoints(tmp_path,
                                                               interrupt_at_checkpoint):
    specs = ("sgd(lr=0.002)", "momentum(lr=0.002, beta=0)")
    kw = dict(problem=PROBLEM, precision="fp32", seeds=2, steps=40, batch_size=16, progress=False)
    full = compare(*specs, **kw).pairs["fp32"][0]
    disarm = interrupt_at_checkpoint(2)  # during the second group
    with pytest.raises(KeyboardInterrupt):
        compare(*specs, checkpoint_dir=tmp_path, **kw)
    disarm()
    assert list(tmp_path.glob("checkpoint-*.npz"))
    resumed = compare(*specs, checkpoint_dir=tmp_path, **kw).pairs["fp32"][0]
    np.testing.assert_array_equal(resumed.distance, full.distance)
    np.testing.assert_array_equal(resumed.floor_a, full.floor_a)


def test_an_overflowing_fp16_loss_is_not_a_divergence_of_the_parameters():
    """On HETERO the fp16 loss overflows to inf from step 1, but the parameters stay finite and
    identical for sgd and momentum(beta=0): the verdict compares parameters."""
    kw = dict(seeds=2, steps=60, progress=False)  # full batch: the summed errors overflow
    r = optimorph.train(HETERO, "sgd(lr=1e-4)", precision="fp16", record_params=True, **kw)
    assert (r.diverged_at >= 1).any(), "the engine reports the non-finite loss"
    assert np.isfinite(r.trajectory).all()
    c = compare("sgd(lr=1e-4)", "momentum(lr=1e-4, beta=0)", problem=HETERO, precision="fp16", **kw)
    v = c.pairs["fp16"][0]
    assert v.equivalent and v.first_nan_a is None and v.distance_ratio == 0.0, v.reason
    assert "A: loss NaN/inf at step 1 with finite parameters" in v.reason, v.reason


# Issue 16: Adam's eps rounds to 0 at fp16 and SGD's gradient overflows; both are NaN from step 1.
BROKEN = "least-squares(n=200, d=20, hetero=1000)"
ROUNDED_EPS = pytest.mark.filterwarnings("ignore:eps=1e-08 is stored as 0.0:UserWarning")


@ROUNDED_EPS
def test_two_algorithms_broken_at_step_1_are_undecidable_not_identical(tmp_path, capsys):
    argv = ["compare", "adam(lr=0.01)", "sgd(lr=0.01)", "--problem", BROKEN, "--precision",
            "fp16", "--seeds", "2", "--steps", "20", "--json", "--quiet",
            "--out", str(tmp_path / "cmp")]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    v = json.loads(out.out)["precisions"]["fp16"]
    assert v["outcome"] == "undecidable" and v["equivalent"] is False and v["decided"] is False
    assert "identical" not in v["reason"] and "nothing to compare" in v["reason"], v["reason"]
    # Both causes, per optimizer: at which step and why.
    assert "A: NaN/inf at step 1 (2 of 2 seeds diverged; eps=1e-08 is stored as 0.0" in v["reason"]
    assert "B: NaN/inf at step 1 (2 of 2 seeds diverged)" in v["reason"]
    assert v["diverged_b"] == "NaN/inf at step 1 (2 of 2 seeds diverged)"
    assert "fp16: UNDECIDABLE" in out.err and "nothing to compare" in out.err
    # The report draws a run that never had a finite step after step 0, and says why.
    page = (tmp_path / "cmp" / "report.html").read_text()
    assert "undecidable at fp16" in page and "nothing to compare" in page


@ROUNDED_EPS
def test_an_optimizer_against_itself_needs_one_finite_step_to_be_identical():
    kw = dict(seeds=2, steps=20, progress=False)
    broken = compare("adam(lr=0.01)", "adam(lr=0.01)", problem=BROKEN, precision="fp16", **kw)
    v = broken.pairs["fp16"][0]
    assert v.outcome == "undecidable" and "nothing to compare" in v.reason, v.reason
    # SGD with too large a step on a quadratic at fp32: the loss passes 1e4 x its first value at
    # step 4, the parameters overflow to NaN/inf only around step 40; finite evaluations before.
    kw["steps"] = 60
    spec = "sgd(lr=1.0)"
    late = compare(spec, spec, problem="quadratic(dim=4, kappa=10)", precision="fp32", **kw)
    v = late.pairs["fp32"][0]
    assert v.outcome == "equivalent" and v.reason.startswith("identical trajectories"), v.reason
    assert 4 < v.first_nan_a == v.first_nan_b <= 60
    # A loss blow-up is told apart from NaN/inf, and is not reported as the NaN step.
    blowup = "diverged at step 4 (loss above 1e4 x its first value), NaN/inf parameters by step"
    assert v.diverged_a.startswith(blowup) and blowup in v.reason, v.reason
    assert "NaN/inf at step 4" not in v.reason


@ROUNDED_EPS
def test_classes_keep_an_undecidable_pair_apart():
    c = classes(["adam(lr=0.01)", "sgd(lr=0.01)"], problem=BROKEN, precisions="fp16", seeds=2,
                steps=20, progress=False)  # fmt: skip
    assert c.classes["fp16"] == [["adam(lr=0.01)"], ["sgd(lr=0.01)"]]
    assert c.undecidable["fp16"] == [("adam(lr=0.01)", "sgd(lr=0.01)")]


def test_one_seed_says_why_there_are_no_p_values(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "sgd(lr=0.002)", "momentum(lr=0.002, beta=0)", "--problem", PROBLEM,
            "--precision", "fp32", "--seeds", "1", "--steps", "40", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "p=nan tost_p=nan (no paired test: 1 seed; paired tests need >= 2 seeds)" in err, err
    page = (out / "report.html").read_text()
    assert "Blank at fp32: no paired test: 1 seed; paired tests need &gt;= 2 seeds." in page
    assert "diverged" not in page.split("Blank at")[1].split("</p>")[0]  # only what happened


def test_a_different_verdict_names_the_defaults_the_two_specs_leave_apart():
    """optax's adamw decays by 1e-4 by default, optimorph's by 0.01 (as torch.optim.AdamW)."""
    from optimorph.equivalence.compare import _default_mismatch
    from optimorph.optimizers import resolve

    previous = optimorph.spec.allow_imports(True)
    try:
        c = compare("optax:adamw(1e-3)", "adamw(lr=1e-3)", problem="least-squares(n=32, d=4)",
                    precision="fp32", seeds=2, steps=40, progress=False)  # fmt: skip
        v = c.pairs["fp32"][0]
        # Set by the user on either side, a hyperparameter is no default left apart.
        for a, b in [("optax:adamw(1e-3, weight_decay=0.01)", "adamw(lr=1e-3)"),
                     ("optax:adamw(1e-3)", "adamw(lr=1e-3, weight_decay=1e-4)")]:  # fmt: skip
            assert _default_mismatch(resolve(a), resolve(b)) == ""
    finally:
        optimorph.spec.allow_imports(previous)
    assert v.outcome == "different"
    assert "both specs leave weight_decay (A 0.0001, B 0.01) at different defaults" in v.reason
    assert "b1" not in v.reason.split("defaults")[0]  # equal defaults are not named


@pytest.mark.heavy
def test_precisions_judged_in_worker_processes_or_apart_give_the_same_classes(tmp_path,
                                                                              monkeypatch):
    """workers=2 sends each precision to a process; merge_classes joins classes computed apart.
    Both must give the verdicts of one in-process run, number for number. A rerun resumes
    from the checkpoints the worker processes wrote: it trains nothing and says the same."""
    from optimorph.engine import trainer
    from optimorph.equivalence.compare import classes, merge_classes

    opts = ["sgd(lr=0.05)", "momentum(lr=0.05, beta=0)", "signsgd(lr=0.05)"]
    run = dict(problem="least-squares(n=32, d=4, hetero=30)", seeds=2, steps=20, progress=False)
    here = classes(opts, precisions=["fp16", "fp64"], workers=1, **run)
    pooled = classes(opts, precisions=["fp16", "fp64"], workers=2, checkpoint_dir=tmp_path, **run)
    merged = merge_classes([classes(opts, precisions=[p], **run) for p in ("fp16", "fp64")])
    assert len(list(tmp_path.glob("checkpoint-*.npz"))) == 6  # 3 optimizers x 2 precisions
    chunks = []
    programs = trainer._programs

    def counted(*args):
        init, evaluate, chunk = programs(*args)
        return init, evaluate, lambda *a: chunks.append(1) or chunk(*a)

    monkeypatch.setattr(trainer, "_programs", counted)
    resumed = classes(opts, precisions=["fp16", "fp64"], workers=1, checkpoint_dir=tmp_path, **run)
    assert chunks == [], "the rerun trained again instead of resuming the workers' checkpoints"
    assert here.classes["fp64"] == [opts[:2], opts[2:]]
    for other in (pooled, merged, resumed):
        assert other.classes == here.classes
        assert other.comparison.precisions == here.comparison.precisions
        for p, verdicts in here.comparison.pairs.items():
            for v, w in zip(verdicts, other.comparison.pairs[p], strict=True):
                assert json.dumps(v.summary(), sort_keys=True) == json.dumps(
                    w.summary(), sort_keys=True
                )
                np.testing.assert_array_equal(v.distance, w.distance)
    with pytest.raises(ValueError, match="different optimizers"):
        merge_classes([here, classes(opts[:2], precisions=["fp16"], **run)])


def test_further_pairs_ride_on_the_classes_runs_with_compares_verdicts():
    """classes(also=...) trains the further pairs' optimizers alongside, once each, and gives
    for each pair the verdict compare() gives on the same settings, number for number; the
    further optimizers take no part in the classes."""
    from optimorph.equivalence.compare import merge_classes

    opts = ["sgd(lr=0.05)", "signsgd(lr=0.05)"]
    also = [("momentum(lr=0.05, beta=0)", "sgd(lr=0.05)")]
    run = dict(problem="least-squares(n=32, d=4, hetero=30)", seeds=2, steps=20, progress=False)
    c = classes(opts, precisions=["fp64"], also=also, **run)
    assert c.classes["fp64"] == [[opts[0]], [opts[1]]]
    assert c.comparison.optimizers == opts and len(c.comparison.pairs["fp64"]) == 1
    alone = compare(*also[0], precision="fp64", **run).pairs["fp64"][0]
    (v,) = c.also.pairs["fp64"]
    assert (v.a, v.b) == also[0] and v.equivalent
    assert json.dumps(v.summary(), sort_keys=True) == json.dumps(alone.summary(), sort_keys=True)
    np.testing.assert_array_equal(v.distance, alone.distance)
    merged = merge_classes([c, classes(opts, precisions=["fp32"], also=also, **run)])
    assert merged.also.precisions == ["fp64", "fp32"]
    assert merged.also.pairs["fp64"][0] is v


def test_a_progress_tag_prefixes_every_line_of_a_workers_job(capfd):
    """proposal16's jobs run in processes that share one terminal: each line says whose it is."""
    classes(["sgd(lr=0.05)", "signsgd(lr=0.05)"], problem="least-squares(n=32, d=4)",
            precisions="fp64", seeds=2, steps=20, progress="mlp fp64")  # fmt: skip
    err = capfd.readouterr().err
    assert "mlp fp64: train sgd(lr=0.05)" in err and "mlp fp64: pairs at fp64" in err, err


def test_runs_inside_a_wide_floor_whose_final_loss_clearly_differs_are_different():
    # Where training is chaotic at p the noise floor can hold a systematically worse run
    # (MXFP4 backward products rounded to nearest: d/floor 4, final loss 40% higher): the
    # final metric's paired test overrules "equivalent". The runs here are one optimizer twice;
    # only B's final test losses are moved.
    import copy

    from optimorph.equivalence.compare import measure, outcome_differs, trajectory_verdict
    from optimorph.experiments.low_bit_states import verdict_rows

    adam = "adam(lr=0.01, b2=0.99)"
    runs = measure("two-moons(n=64, widths=[8])", [adam, adam], precision="bf16", seeds=3,
                   steps=20, progress=False)  # fmt: skip
    same = trajectory_verdict(runs, 0, runs, 1, "bf16")
    assert same.equivalent and same.distance_ratio == 0
    worse = copy.deepcopy(runs)
    final = worse.result.evals["test/loss"]
    final[1, :, -1] = final[0, :, -1] * 1.4 + np.array([0.0, 0.01, -0.01])
    moved = trajectory_verdict(worse, 0, worse, 1, "bf16")
    assert not moved.equivalent and moved.decided and moved.distance_ratio == 0
    assert "the final metric differs" in moved.reason and "too wide" in moved.reason
    slight = copy.deepcopy(runs)
    slight.result.evals["test/loss"][1, :, -1] *= 1.01  # inside the 5% margin
    assert trajectory_verdict(slight, 0, slight, 1, "bf16").equivalent
    row = verdict_rows(runs, worse, 0, 2.0**-8, 10.0)  # the low-bit recipes' verdict, too
    assert row["outcome"] == "equivalent"  # optimizer 0 of both: the same losses
    worse.result.evals["test/loss"][0] = final[1]
    row = verdict_rows(runs, worse, 0, 2.0**-8, 10.0)
    assert row["d_floor"] == 0 and row["outcome"] == "different (final loss)"
    base = runs.result.evals["test/loss"][0, :, -1]
    assert outcome_differs(final[1, :, -1], base) is not None
    assert outcome_differs(base * 1.01, base) is None


def test_seed_split_verdicts_give_the_class_count_its_range():
    # A verdict that the median over seeds decided while some seeds' own d/floor lie on the
    # other side of C can move with a run's last bits (two CPUs gave proposal16's medium MLP 5
    # and 7 classes at fp16). The verdicts stand; the range says how far the count rests on
    # them. The runs are real; the split is made by editing two verdicts.
    import dataclasses

    from optimorph.equivalence.compare import _classes_of, seed_split, trajectory_verdict

    names = ["sgd(lr=1e-4)", "momentum(lr=1e-4, beta=0)", "signsgd(lr=1e-4)"]
    c = classes(names, problem=HETERO, precisions=["fp64"], **KW)
    ab, ac, bc = c.comparison.pairs["fp64"]
    assert c.class_range == {"fp64": (2, 2)}  # every seed agrees with every verdict
    assert (ab.seeds_against, ab.alternative, ac.alternative) == (0, None, None)
    assert ab.summary()["alternative"] is None and ac.summary()["seeds_against"] == 0
    assert "seed-split" not in ab.reason + ac.reason

    split = [dataclasses.replace(ab, alternative=False), dataclasses.replace(ac, alternative=True),
             bc]  # fmt: skip
    spread = _classes_of(dataclasses.replace(c.comparison, pairs={"fp64": split})).class_range
    assert spread == {"fp64": (1, 3)}  # a~c joins all three; a~b parted leaves three alone
    only = _classes_of(dataclasses.replace(c.comparison, pairs={"fp64": split[:1] + [ac, bc]}))
    assert only.class_range == {"fp64": (2, 3)} and only.classes == c.classes

    from optimorph.equivalence.compare import measure

    runs = measure(HETERO, names, precision="fp64", **KW)
    tv = trajectory_verdict(runs, 0, runs, 2, "fp64")  # sgd against signsgd
    assert tv.by_distance and not tv.equivalent and tv.distance_ratio > 10
    below = dataclasses.replace(tv, ratio_per_seed=[tv.distance_ratio, 3.0])
    assert seed_split(below, 10.0, False, True) == (1, True)
    assert seed_split(below, 10.0, False, False) == (1, None)  # kappa or final metric: no join
    assert seed_split(tv, 10.0, False, True) == (0, None)
    near = dataclasses.replace(tv, distance_ratio=9.0, ratio_per_seed=[12.0, 8.0])
    assert seed_split(near, 10.0, True, True) == (1, False)
    assert seed_split(near, 10.0, False, True) == (1, None)  # overruled by the final metric
    assert seed_split(dataclasses.replace(near, by_distance=False), 10.0, False, True) == (0, None)


def test_a_verdict_some_seeds_disagree_with_says_so():
    # C placed between the median's maximum and the largest seed's own maximum: the median
    # decides "equivalent" while that seed lies above C.
    pair, kw = ("sgd(lr=0.002)", "sgd(lr=0.00201)"), dict(problem=PROBLEM, precision="fp32",
                                                          seeds=3, steps=40, progress=False)
    v = compare(*pair, **kw).pairs["fp32"][0]
    top = max(v.ratio_per_seed)
    assert top > v.distance_ratio > 0, (v.distance_ratio, v.ratio_per_seed)
    C = (v.distance_ratio + top) / 2
    split = compare(*pair, C=C, **kw).pairs["fp32"][0]
    above = sum(r > C for r in split.ratio_per_seed)
    assert split.equivalent and (split.seeds_against, split.alternative) == (above, False)
    assert f"seed-split: {above} of 3 seeds' own d/floor above C" in split.reason, split.reason
