"""Orthogonalizers: maps G -> approximately U V^T (G = U S V^T), and how well they do it.

All share one interface, ``fn(G) -> Q`` on a 2-D array, and are looked up by name:

* ``svd``: exact U V^T by the SVD (the reference);
* ``cubic``: Newton-Schulz X <- 1.5 X - 0.5 X X^T X from X0 = G / ||G||_F, converging to U V^T
  for singular values in (0, sqrt 3) (``steps``, default 12);
* ``quintic``: X <- a X + (b A + c A^2) X, A = X X^T, (a, b, c) = (3.4445, -4.7750, 2.0315),
  5 steps: fast but approximate. Measured (fp32, Gaussian inputs): on rectangular matrices the
  singular values end in about [0.68, 1.14]; on square ones the top stays <= 1.21 but the
  smallest, tiny in the input, stay small (0.01..0.65 from 64 x 64 to 1024 x 1024);
* ``shampoo-roots``: (G G^T)^-1/4 G (G^T G)^-1/4, Shampoo's step without accumulation, by
  eigendecompositions (computed as SVDs) in the default float dtype;
* ``polar-express``: per-step minimax coefficients (Amsel et al. 2025, "The Polar Express"),
  divided by the safety factor 1.01 (a / s, b / s^3, c / s^5, the last polynomial unchanged),
  X0 = G / (1.01 ||G||_F).

A user function with the same signature is accepted wherever a name is.
:func:`quality` reports, for a shape and a precision (native or emulated), the band of singular
values an orthogonalizer reaches, its error against the SVD and its time per call.

>>> import jax.numpy as jnp
>>> g = jnp.asarray([[3.0, 0.0], [0.0, 0.5]])
>>> orthogonalize("svd", g).tolist()
[[1.0, 0.0], [0.0, 1.0]]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optimorph import linalg
from optimorph.registry import Registry

__all__ = [
    "ORTHOGONALIZERS",
    "orthogonalize",
    "resolve_orthogonalizer",
    "quality",
    "inverse_fourth_root",
    "shampoo_roots",
]

Array = jax.Array
Orthogonalizer = Callable[[Array], Array]
ORTHOGONALIZERS: Registry[Orthogonalizer] = Registry("orthogonalizer")

QUINTIC = (3.4445, -4.7750, 2.0315)
_PE_RAW = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
]
PE_SAFETY = 1.01
POLAR_EXPRESS = [(a / PE_SAFETY, b / PE_SAFETY**3, c / PE_SAFETY**5) for a, b, c in _PE_RAW[:-1]]
POLAR_EXPRESS.append(_PE_RAW[-1])


def _wide(g: Array) -> tuple[Array, bool]:
    """Iterate on the short side (X X^T small): transpose tall matrices."""
    tall = g.shape[0] > g.shape[1]
    return (g.T if tall else g), tall


@ORTHOGONALIZERS.register("svd")
def svd(g: Array) -> Array:
    """Exact U V^T (float32 at least: there is no half-precision SVD on CPU)."""
    work = g.astype(jnp.promote_types(g.dtype, jnp.float32))
    u, s, vt = linalg.svd(work, full_matrices=False)
    keep = s > s.max(initial=0.0) * max(g.shape) * jnp.finfo(s.dtype).eps
    return ((u * keep[None, :]) @ vt).astype(g.dtype)


def _iterate(g: Array, coeffs: list[tuple[float, ...]], scale: float = 1.0) -> Array:
    x, tall = _wide(g)
    x = x / (jnp.linalg.norm(x) * scale + jnp.asarray(1e-7, x.dtype))
    for step in coeffs:
        a = x @ x.T
        if len(step) == 2:  # cubic: a X + b A X
            x = step[0] * x + step[1] * (a @ x)
        else:
            x = step[0] * x + (step[1] * a + step[2] * (a @ a)) @ x
    return (x.T if tall else x).astype(g.dtype)


def newton_schulz_cubic(g: Array, steps: int = 12) -> Array:
    """X <- 1.5 X - 0.5 X X^T X, ``steps`` times from G / ||G||_F."""
    return _iterate(g, [(1.5, -0.5)] * steps)


def newton_schulz_quintic(g: Array, steps: int = 5) -> Array:
    """The quintic iteration with (3.4445, -4.7750, 2.0315), ``steps`` times."""
    return _iterate(g, [QUINTIC] * steps)


def polar_express(g: Array, steps: int = 5) -> Array:
    """The Polar Express: per-step coefficients (the last one repeats past the table)."""
    coeffs = [POLAR_EXPRESS[min(i, len(POLAR_EXPRESS) - 1)] for i in range(steps)]
    return _iterate(g, coeffs, scale=PE_SAFETY)


def inverse_fourth_root(a: Array, eps: Any = 0.0) -> Array:
    """(A + eps I)^(-1/4) of a symmetric PSD A, by its eigendecomposition in the default float.

    Eigenvalues at rounding level are zero directions (the pseudo-inverse root): with eps = 0
    and a rank-deficient G they would otherwise blow up to (1e-17)^(-1/4).
    """
    a = a.astype(jnp.result_type(float))
    # The SVD of a symmetric PSD matrix is its eigendecomposition (A = V S V^T). It was chosen
    # when a vmapped eigh hung in the trainer's loop (optimorph.linalg now runs every lane's
    # decomposition on its own) and is kept so that Shampoo's trajectories stay as they were.
    v, w, _ = linalg.svd(a)
    w = jnp.maximum(w, 0.0) + eps
    floor = jnp.max(w) * a.shape[0] * jnp.finfo(a.dtype).eps
    inv = jnp.where(w > floor, jnp.where(w > 0, w, 1.0) ** -0.25, 0.0)
    return (v * inv[None, :]) @ v.T


def shampoo_roots(g: Array) -> Array:
    """Shampoo's step without accumulation, (G G^T)^-1/4 G (G^T G)^-1/4 = U V^T, by two
    eigendecompositions in the default float dtype."""
    gh = g.astype(jnp.result_type(float))
    return (inverse_fourth_root(gh @ gh.T) @ gh @ inverse_fourth_root(gh.T @ gh)).astype(g.dtype)


ORTHOGONALIZERS.add("cubic", newton_schulz_cubic)
ORTHOGONALIZERS.add("shampoo-roots", shampoo_roots)
ORTHOGONALIZERS.add("quintic", newton_schulz_quintic)
ORTHOGONALIZERS.add("polar-express", polar_express)


def resolve_orthogonalizer(fn: str | Orthogonalizer) -> Orthogonalizer:
    """A registered name or a user function ``fn(G) -> Q``."""
    return ORTHOGONALIZERS.lookup(fn) if isinstance(fn, str) else fn


def orthogonalize(fn: str | Orthogonalizer, g: Array) -> Array:
    """Apply the named (or given) orthogonalizer to a 2-D array."""
    g = jnp.asarray(g)
    if g.ndim != 2:
        raise ValueError(f"orthogonalizers take matrices; got shape {g.shape}")
    return resolve_orthogonalizer(fn)(g)


def quality(
    fn: str | Orthogonalizer,
    shape: tuple[int, int],
    precision: Any = "fp32",
    *,
    seed: int = 0,
    repeats: int = 5,
) -> dict[str, float]:
    """How close ``fn`` gets to U V^T on a Gaussian matrix of ``shape`` computed at a precision.

    The input is rounded to the precision's params format and the orthogonalizer runs in its
    compute dtype (emulated formats: float64 with each product rounded by the policy only at the
    input and output, so their figure is the format's input/output effect, not per-operation).

    Returns:
      ``{"sigma_min", "sigma_max"}`` (the band of singular values of the output),
      ``"error"`` (||Q - U V^T||_F / ||U V^T||_F against a float64 SVD) and ``"seconds"``
      (median time per call, compiled, on this machine).
    """
    from optimorph.precision import precision as make_precision

    policy = make_precision(precision)
    rng = np.random.default_rng(seed)
    g64 = rng.standard_normal(shape)
    g = policy.cast_params(jnp.asarray(g64))
    run = jax.jit(lambda x: resolve_orthogonalizer(fn)(policy.to_compute(x)))
    out = run(g).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(g).block_until_ready()
        times.append(time.perf_counter() - start)
    q = np.asarray(policy.cast_params(out), np.float64)
    ref = np.asarray(svd(jnp.asarray(np.asarray(g, np.float64))))
    s = np.linalg.svd(q, compute_uv=False)
    return {
        "sigma_min": float(s.min()),
        "sigma_max": float(s.max()),
        "error": float(np.linalg.norm(q - ref) / np.linalg.norm(ref)),
        "seconds": float(np.median(times)),
    }
