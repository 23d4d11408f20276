"""Tests for optimorph.precision: bit-exact rounding, stochastic rounding, policies, updates."""

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from optimorph.precision import (
    BF16,
    FP16,
    FP32,
    FP64,
    Precision,
    PrecisionWarning,
    parse_format,
    precision,
)

E5M10 = parse_format("e5m10")
E8M7 = parse_format("e8m7")
E8M3 = parse_format("e8m3")


@pytest.fixture(params=["eager", "jit"])
def mode(request):
    """Run a function as is or under jax.jit: every rounding rule must survive compilation."""
    return (lambda f: f) if request.param == "eager" else jax.jit


# --------------------------------------------------------------------------------------------
# References (NumPy / ml_dtypes, computed on the host: no XLA flushing)


def ref_fp16(x: np.ndarray) -> np.ndarray:
    """NumPy converts float64 -> float16 directly (one rounding, subnormals kept)."""
    with np.errstate(over="ignore"):
        return x.astype(np.float16)


def ref_bf16(x: np.ndarray) -> np.ndarray:
    """Correct float64 -> bfloat16 rounding.

    ml_dtypes converts float64 through float32 (two roundings: 1 + 2**-8 + 2**-30 gives 1.0, not
    1 + 2**-7). Rounding to float32 *to odd* first keeps the information a second rounding needs
    (float32 has >= 2 more bits than bfloat16 everywhere), so the second rounding is exact.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        near = x.astype(np.float32)
        inexact = np.isfinite(x) & (near.astype(np.float64) != x)
        toward_zero = np.where(
            np.abs(near.astype(np.float64)) > np.abs(x), np.nextafter(near, np.float32(0)), near
        )
        odd = (toward_zero.view(np.uint32) | np.uint32(1)).view(np.float32)
        return np.where(inexact, odd, near).astype(ml_dtypes.bfloat16)


def test_bf16_reference_avoids_double_rounding():
    cases = np.array([1 + 2**-8 + 2**-30, -(1 + 2**-8 + 2**-30), 1 + 2**-8, 1 + 3 * 2**-8])
    expected = [1 + 2**-7, -(1 + 2**-7), 1.0, 1 + 2**-6]
    assert ref_bf16(cases).astype(np.float64).tolist() == expected
    # on float32-exact inputs the reference is ml_dtypes' own (single) rounding
    x32 = np.random.default_rng(1).standard_normal(10_000).astype(np.float32)
    np.testing.assert_array_equal(
        ref_bf16(x32.astype(np.float64)).view(np.uint16),
        x32.astype(ml_dtypes.bfloat16).view(np.uint16),
    )


def grid_values(dtype, uint, n_finite: int, lo: float, hi: float) -> np.ndarray:
    """~200k float64 test values for a 16-bit format: every finite value of the format, every
    midpoint between neighbours (exact ties) and the float64 numbers on either side of it, the
    overflow threshold and its neighbours, log-uniform magnitudes in [lo, hi], specials; +-."""
    grid = np.arange(n_finite, dtype=uint).view(dtype).astype(np.float64)
    top = grid[-1] + (grid[-1] - grid[-2])  # 2**(emax + 1): the first unrepresentable power
    grid = np.append(grid, top)
    mid = (grid[:-1] + grid[1:]) / 2
    around = [np.nextafter(mid, -np.inf), mid, np.nextafter(mid, np.inf)]
    rng = np.random.default_rng(0)
    logs = 10.0 ** rng.uniform(np.log10(lo), np.log10(hi), 50_000)
    specials = np.array([0.0, np.inf, np.nan, grid[1] / 2, 3 * grid[1] / 2, 1e-300, 1e300])
    positive = np.concatenate([grid[:-1], *around, logs, specials])
    return np.concatenate([positive, -positive])


FP16_VALUES = grid_values(np.float16, np.uint16, 0x7C00, 1e-9, 1e6)
BF16_VALUES = grid_values(ml_dtypes.bfloat16, np.uint16, 0x7F80, 1e-45, 1e39)


def assert_same_float64_bits(actual, expected: np.ndarray) -> None:
    """Equal bit for bit as float64 (so -0.0 != 0.0), NaN where and only where expected."""
    actual = np.asarray(actual).astype(np.float64)
    expected = np.asarray(expected).astype(np.float64)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan)
    bad = actual.view(np.uint64)[~nan] != expected.view(np.uint64)[~nan]
    assert not bad.any(), (
        f"{bad.sum()} mismatches, e.g. x -> {actual[~nan][bad][:5]} vs {expected[~nan][bad][:5]}"
    )


def test_values_cover_the_hard_cases():
    assert len(FP16_VALUES) > 200_000 and len(BF16_VALUES) > 200_000
    assert 65520.0 in FP16_VALUES and np.nextafter(65520.0, 0) in FP16_VALUES
    assert 2.0**-24 in FP16_VALUES and 2.0**-133 in BF16_VALUES  # smallest subnormals


# --------------------------------------------------------------------------------------------
# Round to nearest


@pytest.mark.parametrize(
    "fmt, values, reference",
    [
        (E5M10, FP16_VALUES, ref_fp16),
        (E8M7, BF16_VALUES, ref_bf16),
        (FP16, FP16_VALUES, ref_fp16),
        (BF16, BF16_VALUES, ref_bf16),
    ],
    ids=["e5m10", "e8m7", "fp16", "bf16"],
)
def test_round_nearest_matches_ieee_bit_for_bit(fmt, values, reference, mode):
    out = mode(fmt.round)(jnp.asarray(values))
    assert out.dtype == fmt.storage_dtype
    expected = reference(values)
    if fmt.is_native:
        np.testing.assert_array_equal(np.isnan(np.asarray(out)), np.isnan(values))
        finite = ~np.isnan(values)
        np.testing.assert_array_equal(
            np.asarray(out).view(np.uint16)[finite], expected.view(np.uint16)[finite]
        )
    else:
        assert_same_float64_bits(out, expected)


def test_overflow_threshold_and_signed_zero(mode):
    x = jnp.asarray([65519.99, 65520.0, -65520.0, -0.0, -1e-30, 2.0**-25, 3 * 2.0**-25])
    out = mode(E5M10.round)(x)
    expected = [65504.0, np.inf, -np.inf, -0.0, -0.0, 0.0, 2 * 2.0**-24]  # ties to even
    assert_same_float64_bits(out, np.array(expected))


@pytest.mark.parametrize("source", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_native_round_from_narrower_inputs(source, mode):
    x = BF16_VALUES if source is ml_dtypes.bfloat16 else FP16_VALUES
    with np.errstate(over="ignore"):
        x = x.astype(source)
    for fmt, reference in [(FP16, ref_fp16), (BF16, ref_bf16)]:
        out = np.asarray(mode(fmt.round)(jnp.asarray(x)))
        expected = reference(x.astype(np.float64))
        finite = ~np.isnan(x.astype(np.float64))
        np.testing.assert_array_equal(out.view(np.uint16)[finite], expected.view(np.uint16)[finite])


def test_fp32_from_float64_keeps_subnormals(mode):
    rng = np.random.default_rng(2)
    x = np.concatenate([10.0 ** rng.uniform(-46, 39, 50_000), [2.0**-149, 2.0**-150, 3e38 * 2]])
    x = np.concatenate([x, -x])
    with np.errstate(over="ignore"):
        expected = x.astype(np.float32)
    np.testing.assert_array_equal(np.asarray(mode(FP32.round)(x)), expected)


def test_flush_mode_is_reduce_precisions_flush_to_zero(mode):
    out = mode(lambda v: E5M10.round(v, subnormals="flush"))(jnp.asarray(FP16_VALUES))
    assert_same_float64_bits(out, jax.lax.reduce_precision(FP16_VALUES, 5, 10))
    tiny = np.array([2.0**-24, -3 * 2.0**-20, 2.0**-14 * (1 - 2**-11)])
    assert_same_float64_bits(mode(lambda v: E5M10.round(v, subnormals="flush"))(tiny), tiny * 0)
    gradual = np.asarray(E5M10.round(tiny))
    assert (gradual != 0).all()


def test_e8m3_grid(mode):
    x = jnp.asarray([1.3, 1.0625, 1.1875, 300.0, 2.0**-126 * 0.3, 1e39])
    expected = [1.25, 1.0, 1.25, 288.0, 2.0**-126 * 0.25, np.inf]  # ties to even; subnormal
    assert_same_float64_bits(mode(E8M3.round)(x), np.array(expected))


def test_wide_formats_are_identity():
    x = jnp.asarray([np.pi, 1e-310, -0.0])
    assert_same_float64_bits(FP64.round(x), np.asarray(x))
    assert parse_format("e11m52") is FP64 and parse_format("e8m23") is FP32
    y = jnp.asarray(np.array([1.5, 1e-40], np.float32))
    assert FP32.round(y) is y


def test_exact_widening_keeps_bf16_subnormals(mode):
    # XLA on CPU flushes these in a plain bf16 -> f64 convert; to_compute must not.
    x = np.array([10 * 2.0**-133, -(2.0**-133), 1.5, -0.0]).astype(ml_dtypes.bfloat16)
    policy = precision("bf16,v=e8m3")
    assert policy.compute_dtype == np.float64
    out = mode(policy.to_compute)(jnp.asarray(x))
    assert_same_float64_bits(out, x.astype(np.float64))


# --------------------------------------------------------------------------------------------
# Stochastic rounding


@pytest.mark.parametrize(
    "fmt, x, lo, hi, dtype",
    [
        (FP16, 1 + 0.3 * 2**-10, 1.0, 1 + 2**-10, np.float64),
        (FP16, -(2.3 * 2**-24), -(2 * 2**-24), -(3 * 2**-24), np.float64),  # subnormal
        (BF16, 1 + 0.7 * 2**-7, 1.0, 1 + 2**-7, np.float32),  # float32 working dtype
        (BF16, 5.25 * 2**-133, 5 * 2**-133, 6 * 2**-133, np.float32),  # f32 subnormal bits
        (E8M3, 1.3, 1.25, 1.375, np.float64),
        (FP32, 1 + 0.4 * 2**-23, 1.0, 1 + 2**-23, np.float64),
    ],
    ids=["fp16", "fp16-subnormal", "bf16-f32", "bf16-subnormal", "e8m3", "fp32"],
)
def test_stochastic_rounding_unbiased_and_between_neighbours(fmt, x, lo, hi, dtype, mode):
    n = 200_000
    values = jnp.asarray(np.full(n, x, dtype))
    sr = mode(lambda v, k: fmt.round(v, key=k))
    out = np.asarray(sr(values, jax.random.key(0))).astype(np.float64)
    assert set(np.unique(out)) <= {lo, hi}
    x_exact = float(np.asarray(values[0]).astype(np.float64))
    p = (x_exact - lo) / (hi - lo)
    standard_error = abs(hi - lo) * np.sqrt(p * (1 - p) / n)
    assert abs(out.mean() - x_exact) < 4 * standard_error
    again = np.asarray(sr(values, jax.random.key(0))).astype(np.float64)
    other = np.asarray(sr(values, jax.random.key(1))).astype(np.float64)
    np.testing.assert_array_equal(out, again)
    assert (out != other).any()


def test_stochastic_rounding_exact_values_overflow_and_specials(mode):
    x = jnp.asarray([1.0, -0.5, 0.0, -0.0, np.inf, -np.inf, np.nan, 1e6, 65504.0, 2.0**-24])
    out = np.asarray(mode(lambda v, k: FP16.round(v, key=k))(x, jax.random.key(3)))
    assert_same_float64_bits(out, ref_fp16(np.asarray(x)))
    between = jnp.asarray(np.full(1000, 65504.0 + 16.0))  # halfway to 2**16: max or inf
    out = np.asarray(FP16.round(between, key=jax.random.key(4))).astype(np.float64)
    assert set(np.unique(out)) == {65504.0, np.inf}
    assert_same_float64_bits(FP64.round(jnp.asarray([np.pi]), key=jax.random.key(0)), np.pi)


def test_stochastic_rounding_agrees_eager_and_jit():
    values = jnp.asarray(np.random.default_rng(5).standard_normal(1000))
    key = jax.random.key(7)
    for fmt in (FP16, BF16, E8M3, E5M10):
        eager = fmt.round(values, key=key)
        compiled = jax.jit(lambda v, k, f=fmt: f.round(v, key=k))(values, key)
        np.testing.assert_array_equal(np.asarray(eager), np.asarray(compiled))


# --------------------------------------------------------------------------------------------
# Formats and policies: parsing, compute dtype, x64


def test_format_properties():
    assert (FP16.emin, FP16.smallest_normal, FP16.smallest_subnormal) == (-14, 2.0**-14, 2.0**-24)
    assert FP16.max_value == 65504.0 and BF16.max_value == float(ml_dtypes.finfo("bfloat16").max)
    assert FP64.max_value == np.finfo(np.float64).max and FP64.smallest_subnormal == 5e-324
    assert E5M10.unit_roundoff == FP16.unit_roundoff == 2.0**-11
    assert E5M10 != FP16 and not E5M10.is_native and E5M10.storage_dtype == np.float64
    assert parse_format("bfloat16") is BF16 and parse_format(" Half ") is FP16


@pytest.mark.parametrize("text", ["fp13", "e0m3", "e12m3", "e5m53", "e1m2", "", "float", 3])
def test_bad_formats_list_the_valid_forms(text):
    with pytest.raises(ValueError, match="valid formats: fp64, fp32, bf16, fp16"):
        parse_format(text)


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("fp32", "fp32"),
        ("e5m10", "e5m10"),
        ("bf16,v=fp32", "bf16,v=fp32"),
        ("params=bf16,state=fp32", "bf16,state=fp32"),
        ("fp16,count=bf16,rounding=stochastic", "fp16,count=bf16,rounding=stochastic"),
        ("e8m3,subnormals=flush", "e8m3,subnormals=flush"),
        ("fp32,kahan=true", "fp32,kahan=true"),
        ("nu=fp32, float16 ,mu=bf16", "fp16,mu=bf16,nu=fp32"),
        ("bf16,hparams=fp32,grads=fp32,count=exact", "bf16,grads=fp32"),
        ("bf16,hparams=fp64", "bf16,hparams=fp64"),
        ("grads=e8m7", "fp32,grads=e8m7"),
    ],
)
def test_spec_round_trips(spec, canonical):
    policy = precision(spec)
    assert str(policy) == policy.name == canonical
    assert precision(canonical) == policy and hash(precision(canonical)) == hash(policy)
    assert precision(policy) is policy


def test_overrides_and_defaults():
    assert precision() == precision("fp32") == Precision()
    assert precision("bf16", nu="fp32") == precision("bf16,nu=fp32")
    assert precision(params="bf16") == precision("bf16")
    assert precision(precision("bf16"), kahan=True) == precision("bf16,kahan=true")
    assert precision("fp16", count=BF16, rounding="stochastic").name == (
        "fp16,count=bf16,rounding=stochastic"
    )
    policy = precision("params=bf16,state=fp32")
    assert (policy.grads, policy.state, policy.hparams) == (BF16, FP32, FP32)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fp13", "valid formats"),
        ("e0m3", "valid formats"),
        ("params=xx", "valid formats"),
        ("rounding=up", "rounding must be one of nearest, stochastic"),
        ("subnormals=none", "subnormals must be one of gradual, flush"),
        ("kahan=maybe", "kahan must be true or false"),
        ("bf16,fp16", "two bare formats"),
        ("bf16,2x=fp32", "SLOT=FORMAT"),
    ],
)
def test_bad_specs_name_the_choices(spec, message):
    with pytest.raises(ValueError, match=message):
        precision(spec)


@pytest.mark.parametrize(
    "spec, dtype",
    [
        ("fp32", np.float32),
        ("bf16", jnp.bfloat16),
        ("fp16", np.float16),
        ("params=bf16,state=fp32", np.float32),
        ("fp16,v=bf16", np.float32),  # neither holds the other
        ("bf16,hparams=fp64", np.float64),
        ("e8m3", np.float64),
        ("fp32,count=e5m2", np.float64),  # emulated anywhere -> float64
        ("fp64", np.float64),
    ],
)
def test_compute_dtype(spec, dtype):
    assert precision(spec).compute_dtype == np.dtype(dtype)


def test_require_x64_says_how_to_enable_it():
    with jax.enable_x64(False):
        for spec in ("e5m10", "fp64", "bf16,nu=e8m3"):
            with pytest.raises(
                RuntimeError, match=r'jax\.config\.update\("jax_enable_x64", True\)'
            ):
                precision(spec)
        with pytest.raises(RuntimeError, match="JAX_ENABLE_X64=1"):
            E8M3.round(1.0)
        policy = precision("bf16,nu=fp32")  # native below float64: fine without x64
        assert policy.round_hparam(0.999).dtype == np.float32
    assert jax.config.jax_enable_x64


# --------------------------------------------------------------------------------------------
# Hyperparameters


def test_check_hparams():
    assert precision("bf16").check_hparams({"b2": 0.999}) == ["b2=0.999 is stored as 1.0 in bf16"]
    assert precision("fp16").check_hparams({"eps": 1e-8, "lr": 1e-3}) == [
        "eps=1e-08 is stored as 0.0 in fp16"
    ]
    fp32 = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "lr": 3e-4, "steps": 10, "nesterov": True}
    assert precision("fp32").check_hparams(fp32) == []
    assert precision("bf16,state=fp32").check_hparams({"b2": 0.999}) == []  # hparams = fp32


def test_warn_hparams():
    with pytest.warns(PrecisionWarning, match=r"b2=0\.999 is stored as 1\.0 in bf16"):
        messages = precision("bf16").warn_hparams({"b1": 0.9, "b2": 0.999})
    assert messages == [
        "b2=0.999 is stored as 1.0 in bf16: keep hyperparameters wide with `hparams=fp32` "
        "(e.g. --precision 'bf16,hparams=fp32'), or choose b2 <= 0.996"
    ]


@pytest.mark.parametrize(
    "spec, name, value, bound, nearest",
    [
        ("bf16", "b2", 0.999, "b2 <= 0.996", 1 - 2**-8),  # the largest bf16 value below 1
        ("fp16", "b2", 0.9999, "b2 <= 0.9995", 1 - 2**-11),
        ("bf16", "b1", -0.999, "b1 >= -0.996", -(1 - 2**-8)),
        ("bf16,hparams=bf16", "beta", 1.001, "beta >= 1.01", 1 + 2**-7),  # above 1: next up
        ("fp16", "eps", 1e-8, "eps >= 6.104e-05", 2.0**-14),  # the smallest normal fp16
        ("fp16", "eps", 1e-7, "eps >= 6.104e-05", 2.0**-14),  # subnormal: most digits lost
        ("fp16", "weight_decay", 1e6, "weight_decay <= 65500.0", 65504.0),  # overflow
        ("fp32,hparams=e4m3", "b1", 0.99, "b1 <= 0.93", 1 - 2**-4),  # an emulated format
    ],
)
def test_hparams_fix_names_the_failed_hyperparameter_and_the_nearest_value_its_format_holds(
    spec, name, value, bound, nearest
):
    policy = precision(spec)
    fix = policy.hparams_fix(name, value)
    assert fix.endswith(f"or choose {bound}") and fix.count("choose") == 1, fix
    chosen = float(bound.split()[-1])
    assert policy.check_hparams({name: chosen}) == []  # the suggested value is held ...
    assert float(np.asarray(policy.hparams.round(chosen), np.float64)) == nearest  # ... tightly
    wide = precision(re.search(r"--precision '([^']+)'", fix)[1])  # the suggested policy parses,
    assert policy.check_hparams({name: value}) != [] and wide.check_hparams({name: value}) == []
    assert (wide.params, wide.state, wide.slots) == (policy.params, policy.state, policy.slots)
    assert precision(spec).hparams_fix(name, nearest) == ""  # nothing to fix


def test_round_hparam(mode):
    policy = precision("bf16,state=fp32,hparams=bf16")
    out = mode(policy.round_hparam)(jnp.float32(0.999))  # traced: survives excess precision
    assert out.dtype == np.float32 and float(out) == 1.0
    out = mode(precision("bf16").round_hparam)(jnp.float32(0.999))
    assert out.dtype == jnp.bfloat16 and float(out) == 1.0


# --------------------------------------------------------------------------------------------
# Pytrees: params, grads, optimizer state


class ThreeSlots(NamedTuple):
    count: jax.Array
    m: jax.Array
    v: jax.Array


def test_cast_params_and_to_compute(mode):
    tree = {"w": jnp.asarray([1 + 2**-9, 3.0]), "n": jnp.asarray(3, jnp.int32)}
    cast = mode(precision("bf16,state=fp32").cast_params)(tree)
    assert cast["w"].dtype == jnp.bfloat16 and cast["n"].dtype == np.int32
    assert np.asarray(cast["w"]).astype(np.float64).tolist() == [1.0, 3.0]
    compute = mode(precision("bf16,state=fp32").to_compute)(cast)
    assert compute["w"].dtype == np.float32 and compute["n"].dtype == np.int32


def test_round_grads_stochastic_needs_key():
    policy = precision("bf16,rounding=stochastic")
    grads = {"a": jnp.full(100, 1 + 2**-9), "b": jnp.full(100, 1 + 2**-9)}
    with pytest.raises(ValueError, match="needs a PRNG key"):
        policy.round_grads(grads)
    out = jax.jit(policy.round_grads)(grads, jax.random.key(0))
    assert out["a"].dtype == jnp.bfloat16
    assert (np.asarray(out["a"]) != np.asarray(out["b"])).any()  # one key per leaf


def test_round_state_on_optax_adam(mode):
    params = {"w": jnp.linspace(-1.0, 1.0, 5), "b": jnp.asarray(0.3)}
    optimizer = optax.adam(1e-3)
    grads = jax.tree_util.tree_map(lambda p: p * 1.001 + 1e-3, params)
    _, state = optimizer.update(grads, optimizer.init(params), params)
    policy = precision("bf16,nu=fp32")
    rounded = mode(policy.round_state)(state)
    adam, expected_adam = rounded[0], state[0]
    assert adam.count.dtype == np.int32 and int(adam.count) == 1
    for name in ("w", "b"):
        assert adam.mu[name].dtype == jnp.bfloat16 and adam.nu[name].dtype == np.float32
        np.testing.assert_array_equal(adam.mu[name], BF16.round(expected_adam.mu[name]))
        np.testing.assert_array_equal(adam.nu[name], FP32.round(expected_adam.nu[name]))


class Params(NamedTuple):
    w: jax.Array
    v: jax.Array  # a params field named like a slot override


def test_round_state_routes_named_fields(mode):
    state = ThreeSlots(count=jnp.asarray(257, jnp.int32), m=jnp.full(3, 0.1), v=jnp.full(3, 0.1))
    out = mode(precision("bf16,v=fp32,count=bf16").round_state)(state)
    assert out.m.dtype == jnp.bfloat16 and out.v.dtype == np.float32
    assert out.count.dtype == np.int32 and int(out.count) == 256
    # params that are NamedTuples themselves: the outermost known field (the slot) decides
    nested = ThreeSlots(
        count=jnp.asarray(3, jnp.int32),
        m=Params(w=jnp.ones(2), v=jnp.ones(2)),
        v=Params(w=jnp.ones(2), v=jnp.ones(2)),
    )
    out = mode(precision("bf16,m=fp32").round_state)(nested)
    assert out.m.w.dtype == out.m.v.dtype == np.float32
    assert out.v.w.dtype == out.v.v.dtype == jnp.bfloat16
    wrapped = optax.inject_hyperparams(optax.adam)(learning_rate=0.1).init({"w": jnp.ones(2)})
    out = mode(precision("bf16,nu=fp32").round_state)(wrapped)
    assert out.inner_state[0].nu["w"].dtype == np.float32
    assert out.inner_state[0].mu["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "count, steps, final", [("exact", 3000, 3000), ("bf16", 1000, 256), ("fp16", 3000, 2048)]
)
def test_counter_through_a_format_stalls(count, steps, final):
    """Incremented and rounded every step, a bf16 counter stops at 256 (fp16 at 2048)."""
    policy = precision("fp32", count=count)
    state = ThreeSlots(
        jnp.asarray(0, jnp.int32), jnp.zeros(1, jnp.float32), jnp.zeros(1, jnp.float32)
    )

    def step(_, s):
        return policy.round_state(s._replace(count=optax.safe_increment(s.count)))

    out = jax.jit(lambda s: jax.lax.fori_loop(0, steps, step, s))(state)
    assert out.count.dtype == np.int32 and int(out.count) == final


# --------------------------------------------------------------------------------------------
# The parameter update: stagnation, Kahan, stochastic rounding


def add_repeatedly(policy, n, params, update, key=None):
    """Apply the same update n times under jit (lax.fori_loop); returns (params, last stall)."""

    def step(i, carry):
        p, c, _ = carry
        k = None if key is None else jax.random.fold_in(key, i)
        new, c = policy.apply_updates(p, update, c, key=k)
        return new, c, policy.stalled(p, update, new)

    compensation = policy.init_compensation(params) if policy.kahan else None
    init = (params, compensation, jnp.zeros((), jnp.float32))
    params, _, stall = jax.jit(lambda c: jax.lax.fori_loop(0, n, step, c))(init)
    return params, stall


def test_plain_bf16_update_stagnates():
    policy = precision("bf16")
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    update = {"w": jnp.full(4, 1e-4, jnp.float32)}
    out, stall = add_repeatedly(policy, 1000, params, update)
    assert (np.asarray(out["w"]) == 1).all() and float(stall) == 1.0


def test_kahan_recovers_the_lost_updates():
    policy = precision("bf16,kahan=true")
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    update = {"w": jnp.full(4, 1e-4, jnp.float32)}
    out, _ = add_repeatedly(policy, 1000, params, update)
    ulp = 2.0**-7  # bf16 spacing in [1, 2)
    assert out["w"].dtype == jnp.bfloat16
    assert np.all(np.abs(np.asarray(out["w"]).astype(np.float64) - 1.1) <= ulp)
    # the eager path takes the same steps
    p, c = params, policy.init_compensation(params)
    for _ in range(50):
        p, c = policy.apply_updates(p, update, c)
    np.testing.assert_array_equal(p["w"], add_repeatedly(policy, 50, params, update)[0]["w"])


def test_stochastic_update_is_unbiased():
    policy = precision("bf16,rounding=stochastic")
    n = 1024
    params = {"w": jnp.ones(n, jnp.bfloat16)}
    update = {"w": jnp.full(n, 1e-4, jnp.float32)}
    out, _ = add_repeatedly(policy, 1000, params, update, key=jax.random.key(0))
    final = np.asarray(out["w"]).astype(np.float64)
    q = 2.0**-7
    p = 1e-4 / q
    standard_error = q * np.sqrt(1000 * p * (1 - p) / n)  # independent steps and coordinates
    assert abs(final.mean() - 1.1) < 5 * standard_error
    with pytest.raises(ValueError, match="needs a PRNG key"):
        policy.apply_updates(params, update)


def test_stochastic_update_of_fp32_params_draws_from_the_exact_sum():
    # An update of a quarter ulp: formed in float32, the sum would already be rounded to
    # nearest (1.0) and no draw could move it; from the exact sum it moves up one ulp about a
    # quarter of the time.
    policy = precision("fp32,rounding=stochastic")
    n = 4096
    params = {"w": jnp.ones(n, jnp.float32)}
    ulp = 2.0**-23
    update = {"w": jnp.full(n, ulp / 4, jnp.float32)}
    out, _ = policy.apply_updates(params, update, key=jax.random.key(1))
    moved = np.asarray(out["w"], np.float64) - 1.0
    assert set(np.unique(moved)) == {0.0, ulp}
    assert abs(np.mean(moved == ulp) - 0.25) < 5 * np.sqrt(0.25 * 0.75 / n)


def test_stalled_fraction_counts_absorbed_updates():
    old = {"w": jnp.ones(3, jnp.bfloat16)}
    updates = {"w": jnp.asarray([0.0, 1e-4, 0.5])}
    new, none = precision("bf16").apply_updates(old, updates)
    assert none is None
    assert float(Precision.stalled(old, updates, new)) == 0.5
    assert float(Precision.stalled(old, {"w": jnp.zeros(3)}, old)) == 0.0


def test_kahan_needs_compensation():
    with pytest.raises(ValueError, match="init_compensation"):
        precision("bf16,kahan=true").apply_updates({"w": jnp.ones(2)}, {"w": jnp.ones(2)})


def test_update_rounds_the_sum_once(mode):
    """new = fl_p(p + u) with the sum formed in float64 (x64 is on in the tests) and rounded once:
    native fp16 and emulated e5m10 both give the fp16 rounding of the float64 sum, bit for bit
    (a float32 sum rounded again to fp16 would double-round)."""
    rng = np.random.default_rng(6)
    p16 = rng.standard_normal(10_000).astype(np.float16)
    u = rng.standard_normal(10_000) * 10.0 ** rng.uniform(-8, 0, 10_000)
    native, _ = mode(precision("fp16").apply_updates)(jnp.asarray(p16), jnp.asarray(u))
    expected = (p16.astype(np.float64) + u).astype(np.float16)  # NumPy: one IEEE rounding
    np.testing.assert_array_equal(np.asarray(native).view(np.uint16), expected.view(np.uint16))
    emulated, _ = mode(precision("e5m10").apply_updates)(jnp.asarray(p16, jnp.float64), u)
    assert emulated.dtype == np.float64
    assert_same_float64_bits(emulated, ref_fp16(p16.astype(np.float64) + u))


def _float32_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs where a float32 sum can go wrong: every exponent (half of them near the subnormal
    range), exact and near cancellations, both sides of 2**-101 and 2**-126, zeros, inf, NaN.
    2**-102 - 0.75 * 2**-126 rounds down a step: a flushed subnormal would leave 2**-102."""
    rng = np.random.default_rng(seed)

    def draw():
        x = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
        k = n // 2
        small = rng.integers(0, 40, k).astype(np.uint32) << 23
        x[:k] = (rng.integers(0, 2, k).astype(np.uint32) << 31) | small | (x[:k] & 0x7FFFFF)
        return x.view(np.float32)

    p, u = draw(), draw()
    q = n // 10
    u[:q] = -p[:q]
    near = -p[q : 2 * q].astype(np.float64) * (1 + rng.standard_normal(q) * 1e-6)
    u[q : 2 * q] = near.astype(np.float32)
    t = np.float32(2.0**-101)
    cases = [(t, -3e-39), (-t, 3e-39), (np.nextafter(t, 0), -3e-39), (2.0**-102, -8.8e-39),
             (-(2.0**-102), 8.8e-39), (2.0**-126, -1e-45), (-(2.0**-126), 1e-45), (0.0, -0.0), (-0.0, -0.0),
             (np.inf, -np.inf), (np.nan, 1.0), (3e-39, 3e-39), (-1e-45, 1e-45)]  # fmt: skip
    p[2 * q : 2 * q + len(cases)], u[2 * q : 2 * q + len(cases)] = zip(*cases, strict=True)
    return p, u


def test_fp32_update_is_the_ieee_sum_with_gradual_underflow(mode):
    """fp32 params with float32 updates are summed in float32 with subnormals kept (XLA's CPU
    add flushes them): NumPy's IEEE float32 add, bit for bit, and the same bits under vmap."""
    p, u = _float32_pairs(400_000, seed=11)
    with np.errstate(all="ignore"):
        expected = p + u
    policy = precision("fp32")
    assert policy._sums_in_float32(jnp.asarray(p), jnp.asarray(u))
    got, _ = mode(policy.apply_updates)(jnp.asarray(p), jnp.asarray(u))
    got = np.asarray(got)
    nan = np.isnan(expected)
    assert (np.isnan(got) == nan).all()
    np.testing.assert_array_equal(got[~nan].view(np.uint32), expected[~nan].view(np.uint32))
    lanes = jax.jit(jax.vmap(lambda a, b: policy.apply_updates(a, b)[0]))
    np.testing.assert_array_equal(
        np.asarray(lanes(p.reshape(40, -1), u.reshape(40, -1))).reshape(-1).view(np.uint32),
        got.view(np.uint32),
    )


def test_fp16_multiply_add_under_jit_follows_the_cpu_instruction_set():
    # What docs/architecture.md says an fp16 run computes on a CPU: where XLA compiles for
    # AVX-512 it treats float16 as native and fuses u * v + w into one rounding; capped at AVX2
    # (optimorph.cpu.per_operation_fp16, which the command and this suite apply) or on an AVX2
    # machine it rounds after each operation. Both are checked, the uncapped one in a process
    # of its own. A jaxlib that changes either answer fails here.
    import os
    import subprocess
    import sys

    from optimorph.cpu import FP16_CAP, cpu

    if jax.default_backend() != "cpu" or cpu()["vector_isa"] not in ("AVX-512", "AVX2"):
        pytest.skip("a property of x86 CPUs")
    rng = np.random.default_rng(0)
    u, v, w = (rng.normal(size=20_000).astype(np.float16) for _ in range(3))
    per_operation = u * v + w  # NumPy: IEEE float16, rounded after each operation
    once = (u.astype(np.float64) * v + w).astype(np.float16)  # exact product, one rounding
    assert not np.array_equal(once, per_operation)  # the two answers really differ here
    here = np.asarray(jax.jit(lambda a, b, c: a * b + c)(u, v, w))
    assert np.array_equal(here, per_operation)  # this process: capped, or an AVX2 machine
    if cpu()["vector_isa"] != "AVX-512":
        return
    assert FP16_CAP in os.environ["XLA_FLAGS"]
    script = ("import sys, numpy as np, jax; u, v, w = np.load(sys.argv[1]).values(); "
              "np.save(sys.argv[2], np.asarray(jax.jit(lambda a, b, c: a * b + c)(u, v, w)))")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        np.savez(f"{tmp}/in.npz", u=u, v=v, w=w)
        env = dict(os.environ, XLA_FLAGS=os.environ["XLA_FLAGS"].replace(FP16_CAP, ""))
        subprocess.run([sys.executable, "-c", script, f"{tmp}/in.npz", f"{tmp}/out.npy"],
                       env=env, check=True)  # fmt: skip
        native = np.load(f"{tmp}/out.npy")
    assert np.array_equal(native, once)  # AVX-512 uncapped: fused
