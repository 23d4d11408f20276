"""Where two implementations part and why (optimorph.equivalence.diagnosis)."""

import inspect

import pytest

from optimorph.equivalence import diagnosis
from optimorph.equivalence.compare import compare
from optimorph.precision import PrecisionWarning

MLP = "two-moons(n=32, widths=[4], test_n=32)"


def _check(name, a, b, **context):
    entry = next(c for c in diagnosis.CAUSES if c.name == name)
    return entry.check(diagnosis.resolve(a), diagnosis.resolve(b),
                       {"precision": "fp32", "steps": 100, **context})  # fmt: skip


# ------------------------------------------------------------------ each predicate, both ways


def test_eps_inside_the_square_root_is_told_from_outside():
    said = _check("eps-sqrt", "rmsprop(lr=0.01)", "rmsprop(lr=0.01, eps_inside=true)")
    assert said and "B adds eps inside" in said
    assert _check("eps-sqrt", "rmsprop(lr=0.01)", "rmsprop(lr=0.02)") is None


def test_a_larger_eps_is_not_eps_inside_the_square_root():
    # eps = 1e-4 outside the root shrinks a 1e-6 gradient's step as eps = 1e-8 inside it
    # would; one implementation with other numbers is named as such.
    assert _check("eps-sqrt", "adam(lr=0.01)", "adam(lr=0.01, eps=1e-4)") is None
    said = _check("hparam-value", "adam(lr=0.01)", "adam(lr=0.01, eps=1e-4)")
    assert said == "both are adam: eps = 1e-08 in A, 0.0001 in B"
    assert _check("hparam-value", "rmsprop", "rmsprop(eps_inside=true)") is None  # a flag
    assert _check("hparam-value", "adam", "optax:adam(1e-3)") is None  # two implementations
    d = diagnosis.diagnose("adam(lr=0.01)", "adam(lr=0.01, eps=1e-4)", MLP, "fp32", steps=32)
    assert d.cause == "hparam-value", d.sentence()


def test_the_adagrad_accumulator_start_is_read_from_the_state():
    said = _check("adagrad-initial", "adagrad", "optax:adagrad(0.01)")
    assert said == "the accumulator starts at 0 in A and 0.1 in B"
    assert _check("adagrad-initial", "adagrad", "adagrad(lr=0.1)") is None


def test_decoupled_decay_strengths_are_measured_at_a_zero_gradient():
    said = _check("decay-rate", "adamw(lr=1e-3)", "optax:adamw(1e-3)")
    assert said and "1e-05 per step in A and 1e-07 in B" in said and "ratio 100" in said
    assert _check("decay-rate", "adamw(lr=1e-3)", "optax:adamw(1e-3, weight_decay=0.01)") is None


def test_the_radam_threshold_shows_in_which_step_rectifies():
    said = _check("radam-threshold", "radam", "radam(threshold=4)")
    assert said == "under a constant gradient A rectifies from step 6, B from step 5"
    assert _check("radam-threshold", "radam", "adam") is None


def test_a_moment_decay_default_is_named():
    said = _check("ema-rate", "adam", "adam(b2=0.99)")
    assert said and said.startswith("v: A decays by 0.999, B by 0.99")


def test_hyperparameters_stored_in_bf16_are_named_at_bf16_only():
    said = _check("hparams-format", "adam", "optax:adam(1e-3)", precision="bf16")
    assert said == "A: b2=0.999 is stored as 1.0 in bf16"
    assert _check("hparams-format", "adam", "optax:adam(1e-3)") is None


def test_torch_coupled_decay_and_float32_counter():
    pytest.importorskip("torch")
    adam, adamw = "torch:Adam(weight_decay=0.01)", "torch:AdamW(weight_decay=0.01)"
    said = _check("coupled-decay", adam, adamw)
    assert said and said.startswith("at a zero gradient A's first moment becomes")
    assert _check("coupled-decay", "torch:AdamW", "adamw(lr=1e-3)") is None
    said = _check("float32-step", "torch:Adam", "adam", steps=2**24 + 1)
    assert said == "from a counter at 2^24 one step gives 16777216 in A and 16777217 in B"
    assert _check("float32-step", "torch:Adam", "adam", steps=1000) is None


def test_rounding_causes_are_told_apart_where_the_moments_agree():
    pytest.importorskip("torch")
    # fp16: m and v equal bit for bit after step 1, the steps one ulp apart (torch divides by
    # float64 scalars, optax by 1 - b^t cast to fp16); the same algorithm at fp64
    said = _check("bias-correction-dtype", "torch:Adam", "optax:adam(1e-3)", precision="fp16")
    assert said and said.startswith("at fp16 both keep the same m and v bit for bit"), said
    assert "at a gradient of 1: -0.000999450684 vs -0.00100040436" in said
    assert _check("bias-correction-dtype", "torch:Adam", "optax:adam(1e-3)",
                  precision="fp64") is None  # nothing rounds  # fmt: skip
    # two algorithms (b2 0.999 vs 0.99) differ at fp64: not a rounding question
    assert _check("bias-correction-dtype", "torch:Adam", "optax:adam(1e-3, b2=0.99)",
                  precision="fp16") is None  # fmt: skip
    # torch's fused Adam computes fp16 in float32: where eps = 1e-8 and v = 1e-15 are 0 in
    # fp16 (the for-loop's step is -inf) its step is the float64 one, rounded once
    fused = "torch:Adam(fused=True)"
    said = _check("wide-arithmetic", "torch:Adam", fused, precision="fp16")
    assert said and said.startswith("at a gradient of 1e-06 the first step at fp16 is -inf in A")
    assert said.endswith("B's step is the float64 one to 4 ulps of fp16 at every coordinate: it "
                         "computes in a wider format")  # fmt: skip
    assert _check("bias-correction-dtype", "torch:Adam", fused, precision="fp16") is None
    assert _check("wide-arithmetic", "torch:Adam", fused, precision="fp32") is None


# ------------------------------------------------------------------ the diagnosis of a run


@pytest.mark.parametrize(
    "a, b, step, slot, cause",
    [
        ("rmsprop(lr=1e-3)", "rmsprop(lr=1e-3, eps_inside=true)", 1, "params", "eps-sqrt"),
        ("adagrad(lr=0.01)", "adagrad(lr=0.01, initial=0.1)", 0, "acc", "adagrad-initial"),
    ],
)
def test_different_pairs_part_at_the_right_slot_with_the_right_cause(a, b, step, slot, cause):
    d = diagnosis.diagnose(a, b, MLP, "fp32", steps=8)
    assert (d.step, d.slot, d.cause) == (step, slot, cause), d.sentence()
    assert len(d.ulps_per_slot["params"]) == 8


def test_a_default_decay_apart_is_named_though_it_parts_slowly():
    # 1e-5 of theta per step apart: the gradients, then v, move apart over a few steps
    d = diagnosis.diagnose("adamw(lr=1e-3)", "optax:adamw(1e-3)", MLP, "fp32", steps=16)
    assert d.cause == "decay-rate" and d.step > 1, d.sentence()


def test_hyperparameters_rounded_to_bf16_part_the_second_moment():
    with pytest.warns(PrecisionWarning, match="b2=0.999 is stored as 1.0 in bf16"):
        d = diagnosis.diagnose("adam(lr=1e-3)", "optax:adam(1e-3)", MLP, "bf16", steps=4)
    assert (d.step, d.slot, d.cause) == (1, "v", "hparams-format"), d.sentence()
    assert d.slot_names == ("v", "nu")


@pytest.mark.parametrize(
    "a, b, step, slot, cause",
    [
        ("torch:RMSprop(lr=1e-3)", "rmsprop(lr=1e-3, eps_inside=true)", 1, "params", "eps-sqrt"),
        ("torch:Adam(weight_decay=0.01)", "torch:AdamW(weight_decay=0.01)", 1, "m",
         "coupled-decay"),
        ("torch:Adagrad", "optax:adagrad(0.01)", 0, "acc", "adagrad-initial"),
    ],
)  # fmt: skip
def test_torch_pairs_are_diagnosed(a, b, step, slot, cause):
    pytest.importorskip("torch")
    d = diagnosis.diagnose(a, b, MLP, "fp32", steps=8)
    assert (d.step, d.slot, d.cause) == (step, slot, cause), d.sentence()
    if a == "torch:Adagrad":
        assert d.slot_names == ("sum", "sum_of_squares")  # each side's own name


def test_compare_attaches_the_diagnosis_and_its_report_draws_where_they_part(tmp_path):
    from optimorph.report.equivalence_report import write_equivalence_report
    from optimorph.results import store
    from optimorph.results.equivalence_store import write_comparison

    a, b = "rmsprop(lr=1e-3)", "rmsprop(lr=1e-3, eps_inside=true)"
    c = compare(a, b, problem=MLP, precision="fp32", seeds=2, steps=20, progress=False,
                diagnose=True)  # fmt: skip
    v = c.pairs["fp32"][0]
    assert v.outcome == "different"
    assert v.diagnosis["cause"] == "eps-sqrt" and v.diagnosis["slot"] == "params"
    assert "they part at step 1 in params" in v.reason and "likely cause [eps-sqrt]" in v.reason
    assert v.summary()["diagnosis"]["cause"] == "eps-sqrt"
    out = tmp_path / "cmp"  # stored as `optimorph compare --out` stores it
    out.mkdir()
    store.write_config(out, "compare", {"a": a, "b": b})
    write_comparison(out, {"problem": c.problem, "a": a, "b": b, "settings": c.settings,
                           "precisions": {"fp32": v.summary()}}, c)  # fmt: skip
    page = write_equivalence_report(out).read_text()
    assert "<h2>Where they part</h2>" in page and 'alt="slot_ulps.png"' in page
    assert page.index("Where they part") < page.index("<h2>Figures</h2>")


def test_classes_diagnoses_on_request():
    from optimorph.equivalence.compare import classes

    assert inspect.signature(classes).parameters["diagnose"].default is False  # opt-in
    pair = ["rmsprop(lr=1e-3)", "rmsprop(lr=1e-3, eps_inside=true)"]
    c = classes(pair, problem=MLP, precisions="fp32", seeds=2, steps=20, progress=False,
                diagnose=True)  # fmt: skip
    v = c.comparison.pairs["fp32"][0]
    assert c.classes["fp32"] == [[pair[0]], [pair[1]]]
    assert v.diagnosis["cause"] == "eps-sqrt" and "likely cause [eps-sqrt]" in v.reason
