"""The Hessian's spectrum from Hessian-vector products: Lanczos, Hutchinson, sharpness.

Everything works on H v = d/de grad f(x + e v) (forward-over-reverse, one extra pass), on a fixed
batch, with the parameters flattened to one vector in the default float dtype. Lanczos keeps every
Lanczos vector and re-orthogonalizes against all of them (full reorthogonalization), so its Ritz
values stay exact to rounding at any length instead of producing spurious copies.

>>> import jax, jax.numpy as jnp
>>> jax.config.update("jax_enable_x64", True)
>>> A = jnp.diag(jnp.arange(1.0, 11.0))
>>> ritz, _ = lanczos(lambda v: A @ v, jnp.ones(10), 10)
>>> round(float(ritz.max()), 10), round(float(ritz.min()), 10)
(10.0, 1.0)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from optimorph import linalg

__all__ = [
    "hvp_fn",
    "lanczos",
    "top_eigenvalues",
    "hutchinson_trace",
    "spectral_density",
    "sharpness",
    "layer_top_eigenvalues",
    "spectrum",
]

PyTree = Any


def hvp_fn(
    loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, batch: Any
) -> tuple[Callable[[jax.Array], jax.Array], int]:
    """``(v -> H v, dimension)`` for the Hessian of ``loss_fn(., batch)`` at ``params``,
    on flattened vectors in the default float dtype."""
    f = jnp.result_type(float)
    flat, unravel = ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, f), params))
    # The batch's floats in the same dtype: a convolution refuses float64 weights on float32
    # images (a matmul would promote silently).
    batch = jax.tree.map(
        lambda a: jnp.asarray(a, f) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a,
        batch,
    )

    def grad_flat(w):
        return ravel_pytree(jax.grad(loss_fn)(unravel(w), batch))[0]

    def hvp(v):
        return jax.jvp(grad_flat, (flat,), (v.astype(f),))[1]

    return hvp, flat.size


def lanczos(
    matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, steps: int
) -> tuple[jax.Array, jax.Array]:
    """Ritz values and the first components of the Ritz vectors after ``steps`` Lanczos steps.

    Full reorthogonalization (twice, classical Gram-Schmidt against every earlier vector); a
    breakdown (an invariant subspace found early) leaves the remaining Ritz values at zero weight.

    Returns:
      ``(ritz_values [steps], weights [steps])`` with ``weights`` the squared first components
      (the quadrature weights of stochastic Lanczos quadrature), both ascending by value.
    """
    n = v0.shape[0]
    steps = min(int(steps), n)
    f = jnp.result_type(float)
    q = v0.astype(f) / jnp.linalg.norm(v0)
    basis = jnp.zeros((steps, n), f).at[0].set(q)
    alphas = jnp.zeros(steps, f)
    betas = jnp.zeros(steps, f)

    def body(i, carry):
        basis, alphas, betas = carry
        w = matvec(basis[i])
        alpha = jnp.vdot(basis[i], w)
        mask = (jnp.arange(steps) <= i)[:, None]
        for _ in range(2):  # reorthogonalize against all vectors so far
            w = w - (basis * mask).T @ ((basis * mask) @ w)
        beta = jnp.linalg.norm(w)
        ok = beta > 1e-10 * jnp.maximum(jnp.abs(alpha), 1.0)
        nxt = jnp.where(ok, w / jnp.where(ok, beta, 1.0), 0.0)
        basis = jnp.where(i + 1 < steps, basis.at[jnp.minimum(i + 1, steps - 1)].set(nxt), basis)
        return basis, alphas.at[i].set(alpha), betas.at[i].set(jnp.where(ok, beta, 0.0))

    basis, alphas, betas = jax.lax.fori_loop(0, steps, body, (basis, alphas, betas))
    tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    values, vectors = linalg.eigh(tri)
    return values, vectors[0] ** 2


def top_eigenvalues(
    loss_fn: Callable, params: PyTree, batch: Any, *, k: int = 1, steps: int = 30,
    key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """The ``k`` largest and the ``k`` most negative Hessian eigenvalues (Lanczos estimates).

    Returns ``(largest [k], descending; smallest [k], ascending)``.
    """
    hvp, n = hvp_fn(loss_fn, params, batch)
    key = jax.random.key(0) if key is None else key
    v0 = jax.random.normal(key, (n,), jnp.result_type(float))
    values, _ = lanczos(hvp, v0, steps)
    return values[::-1][:k], values[:k]


def sharpness(
    loss_fn: Callable, params: PyTree, batch: Any, *, steps: int = 20,
    key: jax.Array | None = None, preconditioner: PyTree | None = None,
) -> jax.Array:  # fmt: skip
    """The top Hessian eigenvalue, or with ``preconditioner`` P (a pytree like params, e.g.
    Adam's sqrt(v_hat) + eps) the top eigenvalue of P^-1/2 H P^-1/2 (preconditioned sharpness).
    """
    hvp, n = hvp_fn(loss_fn, params, batch)
    if preconditioner is not None:
        p = ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(float)),
                                      preconditioner))[0]  # fmt: skip
        scale = 1.0 / jnp.sqrt(p)
        inner = hvp

        def hvp(v):
            return scale * inner(scale * v)

    key = jax.random.key(0) if key is None else key
    v0 = jax.random.normal(key, (n,), jnp.result_type(float))
    return lanczos(hvp, v0, steps)[0][-1]


def hutchinson_trace(
    loss_fn: Callable, params: PyTree, batch: Any, *, samples: int = 100,
    key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """tr(H) estimated as the mean of z^T H z over Rademacher z, with its standard error."""
    hvp, n = hvp_fn(loss_fn, params, batch)
    key = jax.random.key(0) if key is None else key
    z = jax.random.rademacher(key, (samples, n), jnp.result_type(float))
    # In batches of 10: a vmap over every sample holds samples x the activations at once.
    values = jax.lax.map(lambda v: jnp.vdot(v, hvp(v)), z, batch_size=min(samples, 10))
    return values.mean(), values.std(ddof=1) / jnp.sqrt(samples)


def spectral_density(
    loss_fn: Callable, params: PyTree, batch: Any, *, probes: int = 10, steps: int = 30,
    grid: jax.Array | None = None, sigma: float | None = None, key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """Stochastic Lanczos quadrature: the Hessian's eigenvalue density on ``grid``.

    Each of ``probes`` Gaussian start vectors gives Ritz values (nodes) and squared first
    components (weights); the density is the average of Gaussians of width ``sigma`` at the nodes
    weighted by the weights, so it integrates to one.

    Returns ``(grid, density)``.
    """
    hvp, n = hvp_fn(loss_fn, params, batch)
    key = jax.random.key(0) if key is None else key
    v0s = jax.random.normal(key, (probes, n), jnp.result_type(float))
    nodes, weights = jax.lax.map(lambda v: lanczos(hvp, v, steps), v0s)  # one basis at a time
    lo, hi = nodes.min(), nodes.max()
    span = jnp.maximum(hi - lo, 1e-12)
    grid = jnp.linspace(lo - 0.05 * span, hi + 0.05 * span, 400) if grid is None else grid
    sigma = 0.01 * span if sigma is None else sigma
    gauss = jnp.exp(-0.5 * ((grid[None, None, :] - nodes[..., None]) / sigma) ** 2)
    gauss = gauss / (sigma * jnp.sqrt(2 * jnp.pi))
    return grid, jnp.mean(jnp.sum(weights[..., None] * gauss, axis=1), axis=0)


def layer_top_eigenvalues(
    loss_fn: Callable, params: PyTree, batch: Any, *, steps: int = 20,
    key: jax.Array | None = None,
) -> dict[str, jax.Array]:  # fmt: skip
    """Per layer (each top-level entry of ``params``), the top eigenvalue of that layer's diagonal
    Hessian block H_ll: the curvature the layer sees with every other layer held fixed."""
    hvp, n = hvp_fn(loss_fn, params, batch)
    f = jnp.result_type(float)
    layers = params if isinstance(params, dict) else {"params": params}
    key = jax.random.key(0) if key is None else key
    out, offset = {}, 0
    for i, name in enumerate(sorted(layers)):  # ravel_pytree's order: dict keys sorted
        size = sum(int(jnp.size(x)) for x in jax.tree.leaves(layers[name]))
        lo = offset

        def block(v, lo=lo, size=size):
            full = jnp.zeros(n, f).at[lo : lo + size].set(v)
            return jax.lax.dynamic_slice(hvp(full), (lo,), (size,))

        v0 = jax.random.normal(jax.random.fold_in(key, i), (size,), f)
        out[name] = lanczos(block, v0, steps)[0][-1]
        offset += size
    return out


def spectrum(
    loss_fn: Callable, params: PyTree, batch: Any, *, k: int = 5, steps: int = 50,
    samples: int = 100, density_probes: int = 4, key: jax.Array | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Everything above at one point, as plain Python numbers (a ``hessian.json`` entry).

    Returns:
      ``{"top": [k, descending], "bottom": [k, ascending], "trace", "trace_se", "layers":
      {layer: top eigenvalue}, "density": {"grid", "values"}, "n_params", "lanczos_steps"}``.
    """
    key = jax.random.key(0) if key is None else key
    k_top, k_trace, k_density, k_layers = jax.random.split(key, 4)
    top, bottom = _jitted(top_eigenvalues, "k", "steps")(loss_fn, params, batch, k=k,
                                                         steps=steps, key=k_top)  # fmt: skip
    trace, se = _jitted(hutchinson_trace, "samples")(loss_fn, params, batch, samples=samples,
                                                     key=k_trace)  # fmt: skip
    grid, density = _jitted(spectral_density, "probes", "steps")(
        loss_fn, params, batch, probes=density_probes, steps=steps, key=k_density)
    layers = _jitted(layer_top_eigenvalues, "steps")(loss_fn, params, batch,
                                                     steps=min(steps, 30), key=k_layers)  # fmt: skip
    n = ravel_pytree(params)[0].size
    return {
        "top": [float(x) for x in top],
        "bottom": [float(x) for x in bottom],
        "trace": float(trace),
        "trace_se": float(se),
        "layers": {name: float(v) for name, v in layers.items()},
        "density": {"grid": [float(x) for x in grid], "values": [float(x) for x in density]},
        "n_params": int(n),
        "lanczos_steps": int(min(steps, n)),
    }


@functools.cache
def _jitted(fn: Callable, *static: str) -> Callable:
    """``fn`` compiled once per loss function and counts (every spectrum of a run reuses it)."""
    return jax.jit(fn, static_argnums=(0,), static_argnames=static)
