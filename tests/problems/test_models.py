"""Models and losses: shapes, parameter counts, PyTorch-default init, cross-entropy vs NumPy."""

import math
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from optimorph.problems import problem
from optimorph.problems.models import (
    ACTIVATIONS,
    Activation,
    cnn,
    conv2d_same,
    linear,
    mlp,
    n_params,
)
from optimorph.problems.supervised import accuracy, cross_entropy, mse
from optimorph.spec import SpecError


def test_output_shapes_and_float32_params():
    key = jax.random.key(0)
    for (init, apply), x, out in [
        (linear(5, 3), jnp.ones((4, 5), jnp.float32), (4, 3)),
        (mlp([5, 7, 2], "tanh"), jnp.ones((4, 5), jnp.float32), (4, 2)),
        (cnn((12, 10, 3), 4), jnp.ones((2, 12, 10, 3), jnp.float32), (2, 4)),
        (cnn((40, 1, 1), 10, kernel=(5, 1)), jnp.ones((3, 40, 1, 1), jnp.float32), (3, 10)),
    ]:
        params = init(key)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
        assert apply(params, x).shape == out
        assert apply(params, x).dtype == jnp.float32


def test_mlp_2_64_64_2_has_4482_parameters():
    init, _ = mlp([2, 64, 64, 2])
    assert n_params(init) == 4482
    shapes = jax.tree.map(jnp.shape, init(jax.random.key(0)))
    assert shapes == {
        "dense0": {"w": (2, 64), "b": (64,)},
        "dense1": {"w": (64, 64), "b": (64,)},
        "dense2": {"w": (64, 2), "b": (2,)},
    }


def test_cnn_forward_on_digits():
    p = problem("digits(model=cnn)")
    x = p.train[0][:16]
    assert x.shape == (16, 8, 8, 1)
    logits = p.apply(p.init(jax.random.key(0)), x)
    assert logits.shape == (16, 10) and bool(jnp.all(jnp.isfinite(logits)))
    # 3x3x1x16 + 16, 3x3x16x32 + 32, (2*2*32)x10 + 10
    assert p.info["n_params"] == 160 + 4640 + 1290


@pytest.mark.parametrize(
    ("shape", "kernel", "stride"),
    [((28, 28, 1), (3, 3), 2), ((14, 14, 16), (3, 3), 2), ((9, 7, 3), (3, 3), 1),
     ((9, 7, 3), (2, 4), 3), ((40, 1, 1), (5, 1), 2)],
)  # fmt: skip
def test_conv2d_same_is_the_convolution_op_with_its_gradients(shape, kernel, stride):
    """float64: the im2col convolution equals lax's SAME convolution, and so do the gradients
    with respect to both the images and the kernel (odd sizes and uneven padding included)."""
    kx, kw, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, *shape), jnp.float64)
    w = jax.random.normal(kw, (*kernel, shape[-1], 5), jnp.float64)

    def reference(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )  # fmt: skip

    ours = conv2d_same(x, w, stride)
    ref = reference(x, w)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    cot = jax.random.normal(kc, ref.shape, jnp.float64)
    g_ours = jax.grad(lambda x, w: jnp.vdot(conv2d_same(x, w, stride), cot), (0, 1))(x, w)
    g_ref = jax.grad(lambda x, w: jnp.vdot(reference(x, w), cot), (0, 1))(x, w)
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-11)


def test_init_is_pytorch_default_uniform():
    init, _ = mlp([300, 200, 10])
    params = init(jax.random.key(0))
    for layer, fan_in in (("dense0", 300), ("dense1", 200)):
        bound = 1 / math.sqrt(fan_in)
        for leaf in params[layer].values():
            assert float(jnp.max(jnp.abs(leaf))) <= bound
        # U(-b, b) has variance b^2 / 3; 60000 samples pin it within a few percent.
        w = np.asarray(params[layer]["w"], np.float64)
        assert abs(w.var() / (bound**2 / 3) - 1) < 0.05
    # No two leaves share random values (one draw, sliced).
    assert not np.allclose(params["dense0"]["b"][:10], params["dense1"]["b"])
    assert not np.array_equal(params["dense0"]["w"][0, :200], params["dense0"]["w"][1, :200])


def test_cross_entropy_equals_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(32, 5)).astype(np.float32) * 4
    labels = rng.integers(0, 5, size=32).astype(np.int32)
    x = logits.astype(np.float64)
    expected = np.mean(scipy.special.logsumexp(x, axis=1) - x[np.arange(32), labels])
    got = cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert got.dtype == jnp.float32
    # float32 log-softmax: error a few unit roundoffs of the largest logit magnitude.
    assert abs(float(got) - expected) <= 8 * 2.0**-24 * np.abs(x).max()


def test_accuracy_and_mse():
    logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [1.0, 1.0]], jnp.float32)
    labels = jnp.array([0, 0, 0], jnp.int32)
    assert float(accuracy(logits, labels)) == pytest.approx(2 / 3, abs=2.0**-23)
    assert float(mse(jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0]))) == 5.0


def test_activation_names_match_the_literal_and_gelu_is_exact():
    assert tuple(ACTIVATIONS) == typing.get_args(Activation)
    x = jnp.linspace(-3, 3, 13, dtype=jnp.float64)
    exact = np.asarray(x) * 0.5 * (1 + scipy.special.erf(np.asarray(x) / np.sqrt(2)))
    np.testing.assert_allclose(ACTIVATIONS["gelu"](x), exact, rtol=1e-14, atol=1e-15)
    with pytest.raises(SpecError, match="unknown activation 'swish'; valid: relu, tanh"):
        mlp([2, 2], activation="swish")


def test_mlp_rejects_degenerate_widths():
    with pytest.raises(SpecError, match=">= 2 positive integers"):
        mlp([3])
