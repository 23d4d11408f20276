"""Small models as pairs of plain JAX functions: ``init(key) -> params`` and ``apply(params, x)``.

Params are nested dicts of float32 arrays, e.g. ``{"dense0": {"w": (d_in, d_out), "b": (d_out,)}}``,
so an optimizer or a norm can address every weight matrix by name.

Initialisation is PyTorch's default for ``nn.Linear`` and ``nn.Conv2d`` (the reference experiments
were run in PyTorch): weights and biases both ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, which is
He-uniform with gain ``1/sqrt(3)`` (kaiming_uniform with ``a = sqrt(5)``), i.e. variance
``1/(3 fan_in)``. ``init`` is jitted and draws all leaves from one uniform draw (faster to
compile than one draw per leaf).

Matrix products pin ``precision=HIGHEST`` (convolutions are matrix products too, see
:func:`conv2d_same`): on GPUs the float32 default is TF32 (10 mantissa bits), which would
silently change what a "float32 run" means. Inside :func:`matrix_products` every product of a
model calls a given function instead (the engine's quantized backward pass).

>>> import jax
>>> init, apply = mlp([2, 64, 64, 2])
>>> params = init(jax.random.key(0))
>>> apply(params, jax.numpy.zeros((5, 2), "float32")).shape
(5, 2)
>>> n_params(init)
4482
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp

from optimorph.spec import SpecError

__all__ = [
    "Activation",
    "ACTIVATIONS",
    "linear",
    "mlp",
    "cnn",
    "conv2d_same",
    "n_params",
    "matrix_products",
]

Params = dict[str, Any]
Init = Callable[[jax.Array], Params]
Apply = Callable[[Params, jax.Array], jax.Array]
Layout = dict[str, dict[str, tuple[tuple[int, ...], int]]]  # layer -> leaf -> (shape, fan_in)

Activation = Literal["relu", "tanh", "gelu", "silu", "sigmoid", "elu", "softplus", "identity"]
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    # The exact erf form, PyTorch's default; jax.nn.gelu defaults to the tanh approximation.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    "elu": jax.nn.elu,
    "softplus": jax.nn.softplus,
    "identity": lambda x: x,
}
_HIGHEST = jax.lax.Precision.HIGHEST
_PRODUCT: contextvars.ContextVar = contextvars.ContextVar("optimorph_product", default=None)


@contextlib.contextmanager
def matrix_products(product: Callable[[jax.Array, jax.Array], jax.Array]) -> Iterator[None]:
    """While the models are traced inside, each of their matrix products ``x [..., k] @ w [k,
    n]`` is ``product(x [m, k], w)`` with x's leading axes flattened (a dense layer's batch, a
    convolution's batch and positions): the engine differentiates the loss here with a
    policy's ``backward`` products (:mod:`optimorph.precision.products`)."""
    token = _PRODUCT.set(product)
    try:
        yield
    finally:
        _PRODUCT.reset(token)


def _matmul(x: jax.Array, w: jax.Array, plain: Callable = jnp.matmul) -> jax.Array:
    """``plain(x, w)`` at HIGHEST precision, or the product :func:`matrix_products` set."""
    product = _PRODUCT.get()
    if product is None:
        return plain(x, w, precision=_HIGHEST)
    return product(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[-1])


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise SpecError(f"unknown activation {name!r}; valid: {', '.join(get_args(Activation))}")
    return ACTIVATIONS[name]


def _initializer(layout: Layout) -> Init:
    """``init(key)``: every leaf ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, jitted.

    All leaves come from one ``uniform`` draw, sliced: XLA compiles one random-bits kernel per
    model instead of one per leaf shape, which makes the first ``init`` several times faster (a
    small CNN: ~0.5 s instead of ~4 s on a 2-core CPU). One key, one draw: no key is reused.
    """
    sizes = [math.prod(shape) for layer in layout.values() for shape, _ in layer.values()]

    def init(key: jax.Array) -> Params:
        u = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
        params, offset = {}, 0
        for name, layer in layout.items():
            params[name] = {}
            for leaf, (shape, fan_in) in layer.items():
                size = math.prod(shape)
                params[name][leaf] = u[offset : offset + size].reshape(shape) / math.sqrt(fan_in)
                offset += size
        return params

    return jax.jit(init)


def _dense_layout(d_in: int, d_out: int, bias: bool = True) -> dict:
    layer = {"w": ((d_in, d_out), d_in)}
    if bias:
        layer["b"] = ((d_out,), d_in)
    return layer


def _dense(layer: Params, x: jax.Array) -> jax.Array:
    y = _matmul(x, layer["w"])
    # Explicit broadcast: the test configuration forbids implicit rank promotion.
    return y + jnp.broadcast_to(layer["b"], y.shape) if "b" in layer else y


def linear(d_in: int, d_out: int, *, bias: bool = True) -> tuple[Init, Apply]:
    """An affine map ``x @ w + b`` from ``d_in`` to ``d_out`` features.

    Args:
      d_in: input features (the last axis of ``x``).
      d_out: outputs (logits for a classifier).
      bias: include ``b``.

    Returns:
      ``(init, apply)``; params ``{"dense0": {"w": (d_in, d_out), "b": (d_out,)}}``.

    >>> import jax
    >>> init, apply = linear(3, 2, bias=False)
    >>> jax.tree.map(jax.numpy.shape, init(jax.random.key(0)))
    {'dense0': {'w': (3, 2)}}
    """

    init = _initializer({"dense0": _dense_layout(d_in, d_out, bias)})

    def apply(params: Params, x: jax.Array) -> jax.Array:
        return _dense(params["dense0"], x)

    return init, apply


def mlp(widths: Sequence[int], activation: Activation = "relu") -> tuple[Init, Apply]:
    """A multilayer perceptron with layer widths ``widths`` (input and output included).

    ``mlp([2, 64, 64, 2])`` is the 2-64-64-2 network of the two-moons experiments: three dense
    layers, the activation after every layer but the last.

    Args:
      widths: ``[d_in, hidden..., d_out]``, at least two entries.
      activation: one of :data:`ACTIVATIONS` (``gelu`` is the exact erf form).

    Returns:
      ``(init, apply)``; params ``{"dense0": {"w", "b"}, "dense1": ..., ...}``; ``apply`` maps
      ``(..., d_in)`` to ``(..., d_out)``.

    >>> import jax
    >>> init, apply = mlp([3, 5, 1], activation="tanh")
    >>> apply(init(jax.random.key(1)), jax.numpy.ones((4, 3), "float32")).shape
    (4, 1)
    """
    widths = [int(w) for w in widths]
    if len(widths) < 2 or min(widths) < 1:
        raise SpecError(
            f"mlp widths must be >= 2 positive integers [d_in, ..., d_out], got {widths}"
        )
    act = _activation(activation)
    n_layers = len(widths) - 1

    init = _initializer(
        {f"dense{i}": _dense_layout(widths[i], widths[i + 1]) for i in range(n_layers)}
    )

    def apply(params: Params, x: jax.Array) -> jax.Array:
        for i in range(n_layers - 1):
            x = act(_dense(params[f"dense{i}"], x))
        return _dense(params[f"dense{n_layers - 1}"], x)

    return init, apply


def cnn(
    input_shape: Sequence[int],
    n_classes: int,
    *,
    channels: Sequence[int] = (16, 32),
    kernel: int | Sequence[int] = 3,
    stride: int = 2,
    activation: Activation = "relu",
) -> tuple[Init, Apply]:
    """A small convolutional classifier: two conv layers (``SAME`` padding, strided) and a dense.

    conv(kernel, channels[0], stride) -> act -> conv(kernel, channels[1], stride) -> act ->
    flatten -> dense(n_classes). Striding replaces pooling so every parameter is a weight an
    optimizer sees. Layout NHWC, kernels HWIO.

    Args:
      input_shape: ``(H, W, C)`` of one example, e.g. ``(28, 28, 1)``.
      n_classes: outputs.
      channels: output channels of the two conv layers.
      kernel: kernel size, an int (square) or ``(kh, kw)`` (``(5, 1)`` for 1-D signals stored as
        ``(L, 1, 1)``).
      stride: stride of both conv layers.
      activation: one of :data:`ACTIVATIONS`.

    Returns:
      ``(init, apply)``; ``apply`` maps ``(B, H, W, C)`` to ``(B, n_classes)``.

    >>> import jax
    >>> init, apply = cnn((8, 8, 1), 10)
    >>> apply(init(jax.random.key(0)), jax.numpy.zeros((2, 8, 8, 1), "float32")).shape
    (2, 10)
    """
    height, width, c_in = (int(s) for s in input_shape)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else (int(k) for k in kernel)
    c1, c2 = (int(c) for c in channels)
    act = _activation(activation)
    # SAME padding with stride s leaves ceil(size / s) positions per spatial axis.
    out_h = math.ceil(math.ceil(height / stride) / stride)
    out_w = math.ceil(math.ceil(width / stride) / stride)
    flat = out_h * out_w * c2

    def conv_layout(c_from: int, c_to: int) -> dict:
        fan_in = kh * kw * c_from
        return {"w": ((kh, kw, c_from, c_to), fan_in), "b": ((c_to,), fan_in)}

    init = _initializer(
        {
            "conv0": conv_layout(c_in, c1),
            "conv1": conv_layout(c1, c2),
            "dense0": _dense_layout(flat, n_classes),
        }
    )

    def conv(layer: Params, x: jax.Array) -> jax.Array:
        y = conv2d_same(x, layer["w"], stride)
        return y + jnp.broadcast_to(layer["b"], y.shape)

    def apply(params: Params, x: jax.Array) -> jax.Array:
        x = act(conv(params["conv0"], x))
        x = act(conv(params["conv1"], x))
        return _dense(params["dense0"], x.reshape(x.shape[0], flat))

    return init, apply


def conv2d_same(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """``lax.conv_general_dilated(x, w, (stride, stride), "SAME")`` (NHWC, HWIO) as strided slices
    and one matrix product (im2col).

    Why not the convolution op: inside a compiled loop (the trainer's scan) XLA's CPU backend
    leaves the convolutions of the backward pass in a layout its fast convolution kernel does not
    take and emits naive loops instead. A CNN's gradient ran 6x slower there than standalone
    and a Hessian-vector product 7x (12-14x on a busy machine; jaxlib 0.10.2,
    ``benchmarks/cnn.py``); slices, pads and matrix products have no such cliff. Same values to float rounding (the
    products sum in another order).
    """
    kh, kw, c_in, c_out = w.shape
    batch, height, width, _ = x.shape
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    pad_h = max((out_h - 1) * stride + kh - height, 0)
    pad_w = max((out_w - 1) * stride + kw - width, 0)
    pads = ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    x = jnp.pad(x, pads)
    taps = [
        jax.lax.slice(
            x,
            (0, i, j, 0),
            (batch, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c_in),
            (1, stride, stride, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(taps, axis=-1)  # [B, out_h, out_w, kh * kw * c_in], (i, j, c) order
    return _matmul(patches, w.reshape(kh * kw * c_in, c_out), plain=jnp.dot)


def embedding_mlp(
    vocab: int, tokens: int, dim: int, widths: Sequence[int], activation: Activation = "relu"
) -> tuple[Init, Apply]:
    """Token embeddings, concatenated, then an MLP: for sequences of ``tokens`` integer ids.

    Args:
      vocab: ids are ``0..vocab-1``.
      tokens: ids per example.
      dim: embedding width.
      widths: the MLP's hidden and output widths (its input is ``tokens * dim``).
      activation: the MLP's activation.

    Returns:
      ``(init, apply)``; params ``{"embed": {"w": (vocab, dim)}, "dense0": ..., ...}`` (the
      embedding table's rows are the tokens' vectors, initialised N(0, 1)-scaled uniform);
      ``apply`` maps int ``(..., tokens)`` to ``(..., widths[-1])``.

    >>> import jax, jax.numpy as jnp
    >>> init, apply = embedding_mlp(7, 2, 4, [8, 7])
    >>> apply(init(jax.random.key(0)), jnp.asarray([[1, 2], [3, 4]])).shape
    (2, 7)
    """
    widths = [tokens * dim, *[int(w) for w in widths]]
    act = _activation(activation)
    n_layers = len(widths) - 1
    layout = {"embed": {"w": ((vocab, dim), 1)}}
    layout.update({f"dense{i}": _dense_layout(widths[i], widths[i + 1]) for i in range(n_layers)})
    init = _initializer(layout)

    def apply(params: Params, x: jax.Array) -> jax.Array:
        e = jnp.take(params["embed"]["w"], x, axis=0)  # (..., tokens, dim)
        h = e.reshape(*e.shape[:-2], tokens * dim)
        for i in range(n_layers - 1):
            h = act(_dense(params[f"dense{i}"], h))
        return _dense(params[f"dense{n_layers - 1}"], h)

    return init, apply


def n_params(init: Init) -> int:
    """Number of scalar parameters ``init`` creates (traced shapes only, nothing computed)."""
    shapes = jax.eval_shape(init, jax.random.key(0))
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
