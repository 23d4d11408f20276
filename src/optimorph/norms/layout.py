"""Which axis of a weight matrix is its input: the one layout convention every norm reads.

A dense layer's weight is stored in one of two layouts:

* ``in_out``: W has shape (d_in, d_out) and the layer computes y = x @ W. optimorph's models,
  JAX, flax and optax's Muon (``MuonDimensionNumbers(reduction_axis=0, output_axis=1)``) use it;
  an embedding table E (vocab, dim) looked up by rows is the same map (one-hot x @ E).
* ``out_in``: W has shape (d_out, d_in) and the layer computes y = W x (PyTorch's ``nn.Linear``).

Operator norms (spectral, RMS -> RMS, l1 -> l2, ...) are norms of the *map* a weight applies, so
optimorph writes every matrix norm and dualizer on the operator A of shape (d_out, d_in) and
reads a parameter through :func:`as_operator` (A = W^T for ``in_out``, A = W for ``out_in``).
Norms symmetric in the two dimensions (Frobenius, spectral up to the RMS factor, max entry) do
not care; the others (RMS -> RMS, l1 -> l2, l2 -> linf, l1 -> RMS) and Muon's shape factor
sqrt(max(1, d_out / d_in)) do. Every optimizer defined by a norm (``steepest``, ``muon``,
``modular``) takes ``layout=`` with ``in_out`` as default.

>>> import jax.numpy as jnp
>>> fans((8, 32), "in_out"), fans((8, 32), "out_in")
((8, 32), (32, 8))
>>> as_operator(jnp.zeros((8, 32)), "in_out").shape
(32, 8)
"""

from __future__ import annotations

import jax

from optimorph.spec import SpecError

__all__ = ["LAYOUTS", "DEFAULT_LAYOUT", "check_layout", "as_operator", "from_operator", "fans"]

LAYOUTS: dict[str, str] = {
    "in_out": "W is (d_in, d_out), y = x @ W (optimorph, JAX, flax, optax's Muon)",
    "out_in": "W is (d_out, d_in), y = W x (PyTorch's nn.Linear)",
}
DEFAULT_LAYOUT = "in_out"


def check_layout(layout: str) -> str:
    """The layout, or a SpecError naming the two choices."""
    if layout not in LAYOUTS:
        choices = "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())
        raise SpecError(f"unknown weight layout {layout!r}: choose one of {choices}")
    return layout


def as_operator(w: jax.Array, layout: str = DEFAULT_LAYOUT) -> jax.Array:
    """The matrix A (d_out x d_in) of the map a 2-D parameter applies; other arrays unchanged."""
    return w.T if w.ndim == 2 and check_layout(layout) == "in_out" else w


def from_operator(a: jax.Array, layout: str = DEFAULT_LAYOUT) -> jax.Array:
    """Back from operator form to the parameter's layout (a transpose is its own inverse)."""
    return as_operator(a, layout)


def fans(shape: tuple[int, ...], layout: str = DEFAULT_LAYOUT) -> tuple[int, int]:
    """(d_in, d_out) of a 2-D parameter of this shape."""
    if len(shape) != 2:
        raise ValueError(f"fans: a weight matrix has 2 dimensions, got shape {tuple(shape)}")
    rows, cols = (int(s) for s in shape)
    return (rows, cols) if check_layout(layout) == "in_out" else (cols, rows)
