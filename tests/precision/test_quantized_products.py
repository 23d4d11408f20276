"""A policy's ``forward`` and ``backward`` roles: matrix products on quantized operands,
blocked along the reduction dimension (Tseng et al.'s MXFP4 training), as the models compute
them inside the engine's gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimorph.engine import train
from optimorph.engine.step import gradient, seed_keys
from optimorph.precision import parse_format, precision
from optimorph.precision.products import QuantizedProducts, reduced_product
from optimorph.problems import models, problem

RNG = np.random.default_rng(0)
A = jnp.asarray(RNG.standard_normal((8, 64)))  # float64: the products' sums are exact enough
B = jnp.asarray(RNG.standard_normal((6, 64)))
EXACT = np.asarray(A) @ np.asarray(B).T


def test_a_transformed_product_is_the_product_of_the_read_back_operands():
    # H H = 32 I: multiplying blocks in the transformed domain and dividing by 32 is the
    # product of the operands each quantized and read back by MXFormat.round (tested bit for
    # bit against gfloat), blocked along the reduction axis.
    fmt = parse_format("mxfp4(transform=hadamard)")
    got = np.asarray(reduced_product(fmt, A, B, None))
    read_back = np.asarray(fmt.round(A), np.float64) @ np.asarray(fmt.round(B), np.float64).T
    np.testing.assert_allclose(got, read_back, rtol=1e-12, atol=1e-12)
    plain = parse_format("mxfp4")  # no transform: the product of the quantized operands
    np.testing.assert_allclose(
        np.asarray(reduced_product(plain, A, B, None)),
        np.asarray(plain.round(A), np.float64) @ np.asarray(plain.round(B), np.float64).T,
        rtol=1e-12, atol=1e-12,
    )  # fmt: skip


def test_stochastic_rounding_after_a_shared_random_transform_is_unbiased():
    fmt = parse_format("mxfp4(rounding=stochastic,transform=rht,scale=ceil)")
    n = 4000
    keys = jax.random.split(jax.random.key(2), n)
    outs = np.asarray(jax.vmap(lambda k: reduced_product(fmt, A, B, k))(keys))
    se = outs.std(axis=0) / np.sqrt(n)
    assert np.max(np.abs(outs.mean(axis=0) - EXACT) / se) < 5
    # One draw is a product of the right size: the signs are shared by both operands (with
    # independent signs the transforms would not cancel and the product would be noise).
    one = outs[0]
    assert np.linalg.norm(one - EXACT) < 0.3 * np.linalg.norm(EXACT)
    assert not np.array_equal(outs[0], outs[1])  # each key draws its own signs and roundings


def test_a_quantized_forward_product_multiplies_quantized_operands_with_a_straight_gradient():
    x = jnp.asarray(RNG.standard_normal((5, 40)))
    w = jnp.asarray(RNG.standard_normal((40, 3)))
    prod = QuantizedProducts(parse_format("mxfp4"), None, None)
    rows, cols = parse_format("mxfp4"), parse_format("mxfp4(axis=0)")  # both along k
    want = np.asarray(rows.round(x), np.float64) @ np.asarray(cols.round(w), np.float64)
    got = np.asarray(prod(x, w))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # Straight through: the gradient is the plain one taken at the quantized output.
    dw = jax.grad(lambda w: jnp.sum(prod(x, w)))(w)
    np.testing.assert_allclose(np.asarray(dw), np.asarray(x).T @ np.ones((5, 3)), rtol=1e-12)


def test_the_models_products_run_through_the_given_product_and_their_gradients_follow():
    calls = []

    def product(x, w):
        calls.append((x.shape, w.shape))
        return jnp.matmul(x, w)

    prob = problem("digits(model=cnn)")
    params = prob.init(jax.random.key(0))
    batch = tuple(jnp.asarray(x[:4]) for x in prob.train)
    with models.matrix_products(product):
        loss, grads = jax.value_and_grad(prob.loss)(params, batch)
    assert len(calls) == 3  # two convolutions (as im2col products) and the dense layer
    plain_loss, plain_grads = jax.value_and_grad(prob.loss)(params, batch)
    np.testing.assert_allclose(float(loss), float(plain_loss), rtol=1e-6)
    for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(h), rtol=1e-4, atol=1e-6)


def test_a_fine_backward_format_gives_the_plain_gradient_and_mxfp4_changes_it():
    prob = problem("two-moons(n=64, widths=[32])")
    params = prob.init(jax.random.key(0))
    batch = tuple(jnp.asarray(x) for x in prob.train)
    plain = gradient(prob.loss, precision("fp64"), params, batch)[1]
    fine = gradient(prob.loss, precision("fp64,backward=fp64"), params, batch)[1]
    for g, h in zip(jax.tree.leaves(fine), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(h), rtol=1e-12, atol=1e-15)
    p4 = precision("fp32,backward=mxfp4(scale=ceil)")
    coarse = gradient(prob.loss, p4, params, batch)[1]
    w, w_plain = coarse["dense0"]["w"], plain["dense0"]["w"]
    rel = np.linalg.norm(np.asarray(w) - np.asarray(w_plain)) / np.linalg.norm(w_plain)
    assert 1e-3 < rel < 0.5  # quantized, not broken


def test_keyed_backward_products_draw_from_the_step_and_repeat_per_seed():
    spec = "bf16,state=fp32,backward=mxfp4(rounding=stochastic,scale=ceil,transform=rht)"
    p = precision(spec)
    assert p.keyed and str(p) == spec and precision(str(p)) == p
    prob = problem("two-moons(n=64, widths=[32])")
    params = prob.init(jax.random.key(0))
    batch = tuple(jnp.asarray(x) for x in prob.train)
    key = seed_keys(0).rounding
    g0 = gradient(prob.loss, p, params, batch, rounding_key=key, t=jnp.int32(0))[1]
    again = gradient(prob.loss, p, params, batch, rounding_key=key, t=jnp.int32(0))[1]
    g1 = gradient(prob.loss, p, params, batch, rounding_key=key, t=jnp.int32(1))[1]
    leaf = lambda g: np.asarray(g["dense0"]["w"])  # noqa: E731
    np.testing.assert_array_equal(leaf(g0), leaf(again))
    assert not np.array_equal(leaf(g0), leaf(g1))
    kw = dict(steps=20, batch_size=16, seeds=2, precision=spec, progress=False)
    a = train("two-moons(n=64, widths=[32])", "adam(lr=1e-2)", **kw)
    b = train("two-moons(n=64, widths=[32])", "adam(lr=1e-2)", **kw)
    np.testing.assert_array_equal(a.train_loss, b.train_loss)
    assert np.all(np.isfinite(a.train_loss))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fp32,backward=bnb8", "backward=bnb8.*MX format"),
        ("fp32,forward=fp8e4m3", "forward=fp8e4m3.*per-tensor FP8 are for stored state"),
    ],
)
def test_bad_backward_formats_say_which_formats_fit(spec, message):
    with pytest.raises(ValueError, match=message):
        precision(spec)


def test_a_problem_without_model_products_refuses_the_role():
    with pytest.raises(ValueError, match="no matrix product of optimorph's models"):
        train("quadratic(dim=4)", "sgd(lr=0.1)", steps=2, precision="fp32,forward=mxfp4",
              progress=False)  # fmt: skip
