"""LAPACK decompositions that never run batched: every lane gets its own unbatched call.

jaxlib 0.10.2's CPU LAPACK kernels split a batch of matrices into chunks, schedule them on
XLA's intra-op thread pool and block in ``absl::BlockingCounter::Wait`` until they finish
(``lapack_*_ffi -> jax::ParallelBatchMap``; taken when batch x cost >= 2e5 flops, e.g. an SVD
of 11 lanes of 16 x 16 or 2 lanes of 32 x 32). Inside a compiled program XLA runs independent
thunks on the same pool, so two such calls can each hold a pool thread while the chunks they
wait for sit unrun in those threads' queues: every thread waits and the process sits at 0% CPU
for ever. ``vmap`` over lanes is what makes the calls batched. (jaxlib 0.11.2 compiles this
parallel path out of open-source builds; 0.10.2 is the newest the registry serves.)

Each function here is :func:`jax.custom_batching.sequential_vmap`-wrapped: under ``vmap`` it
runs a ``lax.map`` over the lanes, one batch-1 LAPACK call per lane, which the kernels run
inline on the calling thread. A lane's result is therefore the unbatched call's, bit for bit
(tested), and arrays with leading batch dimensions are mapped the same way. Every LAPACK-backed
decomposition in optimorph goes through this module (a test greps ``src/`` for others).

>>> import jax, jax.numpy as jnp
>>> a = jnp.asarray([[[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 3.0]]])
>>> jax.vmap(lambda m: svd(m, compute_uv=False))(a).tolist()
[[2.0, 1.0], [3.0, 1.0]]
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.custom_batching import sequential_vmap

__all__ = ["svd", "eigh", "solve"]

Array = jax.Array


def _per_matrix(fn: Callable, core_ndims: tuple[int, ...]) -> Callable:
    """``fn`` under ``vmap`` as a loop over the lanes; leading batch dimensions likewise (an
    argument without them is shared by every matrix)."""
    one = sequential_vmap(fn)

    def call(*args: Array):
        args = tuple(jnp.asarray(a) for a in args)
        extra = [a.ndim - k for a, k in zip(args, core_ndims, strict=True)]
        depth = max(extra)
        if min(extra) < 0 or any(e not in (0, depth) for e in extra):
            shapes = [a.shape for a in args]
            raise ValueError(f"expected the same leading batch dimensions, got shapes {shapes}")
        f = one
        for _ in range(depth):
            f = jax.vmap(f, in_axes=tuple(0 if e else None for e in extra))
        return f(*args)

    return call


@functools.cache
def _svd(full_matrices: bool, compute_uv: bool) -> Callable:
    return _per_matrix(
        lambda a: jnp.linalg.svd(a, full_matrices=full_matrices, compute_uv=compute_uv), (2,)
    )


def svd(a: Array, full_matrices: bool = True, compute_uv: bool = True):
    """:func:`jax.numpy.linalg.svd`, one LAPACK call per matrix (see the module docstring)."""
    return _svd(bool(full_matrices), bool(compute_uv))(a)


@functools.cache
def _eigh() -> Callable:
    return _per_matrix(lambda a: jnp.linalg.eigh(a), (2,))


def eigh(a: Array):
    """:func:`jax.numpy.linalg.eigh`, one LAPACK call per matrix: ``(eigenvalues, vectors)``."""
    return _eigh()(a)


@functools.cache
def _solve(b_ndim: int) -> Callable:
    return _per_matrix(lambda a, b: jnp.linalg.solve(a, b), (2, b_ndim))


def solve(a: Array, b: Array) -> Array:
    """x with A x = b, one LU per system: b a vector (1-D, shared by every A) or a matrix of
    right-hand sides (as :func:`jax.numpy.linalg.solve` under NumPy 2 rules)."""
    b = jnp.asarray(b)
    return _solve(1 if b.ndim == 1 else 2)(a, b)
