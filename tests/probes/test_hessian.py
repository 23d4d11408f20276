"""Hessian spectrum from Hessian-vector products against a dense float64 eigendecomposition."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import optimorph
from optimorph.probes import hessian


def _mlp_problem():
    prob = optimorph.problem("two-moons(n=64, widths=[6], activation=tanh)")
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), prob.init(jax.random.key(1)))
    batch = tuple(jnp.asarray(a, jnp.float64) if a.dtype.kind == "f" else jnp.asarray(a)
                  for a in prob.train)  # fmt: skip
    flat, unravel = ravel_pytree(params)
    dense = jax.hessian(lambda w: prob.loss(unravel(w), batch))(flat)
    return prob.loss, params, batch, np.linalg.eigvalsh(np.asarray(dense)), np.asarray(dense)


def test_lanczos_extremes_trace_and_density_match_the_dense_hessian():
    loss, params, batch, eig, dense = _mlp_problem()
    n = eig.size
    top, bottom = hessian.top_eigenvalues(loss, params, batch, k=3, steps=n)
    np.testing.assert_allclose(top, eig[::-1][:3], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(bottom, eig[:3], rtol=1e-8, atol=1e-10)
    assert eig[0] < 0 < eig[-1]  # a non-convex model: the most negative eigenvalue matters
    short = hessian.sharpness(loss, params, batch, steps=20)
    np.testing.assert_allclose(short, eig[-1], rtol=1e-6)  # 20 steps already reach the top
    trace, stderr = hessian.hutchinson_trace(loss, params, batch, samples=400)
    assert abs(trace - eig.sum()) < 4 * stderr + 1e-12
    grid, density = hessian.spectral_density(loss, params, batch, probes=4, steps=n)
    mass = float(np.sum(density) * (grid[1] - grid[0]))
    np.testing.assert_allclose(mass, 1.0, atol=0.02)


def test_preconditioned_sharpness_is_the_top_eigenvalue_of_p_half_h_p_half():
    loss, params, batch, eig, dense = _mlp_problem()
    rng = np.random.default_rng(0)
    p_flat = rng.uniform(0.5, 2.0, eig.size)
    _, unravel = ravel_pytree(params)
    scaled = dense / np.sqrt(np.outer(p_flat, p_flat))
    want = np.linalg.eigvalsh(scaled)[-1]
    got = hessian.sharpness(loss, params, batch, steps=eig.size,
                            preconditioner=unravel(jnp.asarray(p_flat)))  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-8)


def test_sharpness_of_a_cnn_on_float32_images():
    """The Hessian runs in float64 under x64: the images must follow (a convolution does not
    promote float32 inputs to float64 weights)."""
    import optimorph
    from optimorph.probes.trajectory import make_probes

    r = optimorph.train("digits(model=cnn)", "sgd(lr=0.01)", steps=4, batch_size=16,
                        probes=make_probes("sharpness", every=2), progress=False)  # fmt: skip
    values = r.probes["sharpness"][0, 0]
    assert np.isfinite(values[::2]).all() and (values[::2] > 0).all()
