"""External implementations as optimizer specs: ``torch:Adam(lr=1e-3)`` steps torch.optim itself.

``torch:NAME(kwargs)`` is an optax GradientTransformation whose update hands the gradient, the
parameters and the state to the real ``torch.optim.NAME`` (through ``jax.pure_callback``), lets
it take one ``step()``, and reads back the parameters and torch's state. The update is a pure
function of ``(grads, state, params)``: a fresh torch optimizer is made for every call and its
state is set from the JAX state, so noise replicas, lanes, state maps and the one-step defect
work exactly as for a native optimizer. Lanes of a ``vmap`` (seeds, replicas) are stepped one
after the other in one callback (``vmap_method='expand_dims'``), each by its own optimizer, so
a lane computes the same bits whatever the number of lanes.

The state is a NamedTuple named after torch's own state keys:

* ``count``: int32, torch's ``step`` (a float32 tensor in torch, so it saturates at 2^24 as
  torch's does; an optimizer without ``step``, like SGD, counts here itself);
* one field per per-parameter buffer (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``,
  ``square_avg``, ``sum``, ...), shaped like the parameters, in the compute dtype, rounded to
  the policy's state formats like any slot (``--precision 'bf16,exp_avg_sq=fp32'``);
* one field per scalar buffer (NAdam's ``mu_product``): torch keeps it in float32 whatever the
  parameters' dtype, so it is stored by its bits (uint32), untouched by rounding and noise.

Precision: torch computes in the dtype of the arrays it is given, the policy's compute dtype
(float64, float32, bfloat16 or float16; emulated formats compute in float64). Its
hyperparameters stay Python floats, as in torch: they are not stored in the policy's hparams
format. The update is ``new_params - params`` formed in the widest float, so the engine's
``fl(params + u)`` gives torch's new parameters back (exactly whenever the subtraction is, which
is the rule for float32 and narrower parameters).

Warning: at count 0 torch initialises its own state (SGD's momentum buffer becomes a copy of
the first gradient, NAdam's ``mu_product`` 1), whatever the arrays of a count-0 state hold.

>>> import jax.numpy as jnp
>>> tx = torch_optimizer("SGD", {"lr": 0.5, "momentum": 0.9})
>>> state = tx.init({"w": jnp.zeros(2, jnp.float32)})
>>> state._fields
('count', 'momentum_buffer')
>>> u, state = tx.update({"w": jnp.ones(2, jnp.float32)}, state, {"w": jnp.zeros(2, jnp.float32)})
>>> u["w"].tolist(), int(state.count)
([-0.5, -0.5], 1)
"""

from __future__ import annotations

import collections
import functools
import inspect
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimorph.spec import Call, SpecError

__all__ = [
    "TORCH_OPTIMIZERS",
    "MATCH_TORCH",
    "torch_optimizer",
    "torch_spec",
    "export_state",
    "import_state",
    "to_torch",
    "is_torch",
]

PyTree = Any

# torch.optim classes whose state is per parameter and elementwise (what a lane can hold).
TORCH_OPTIMIZERS = ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "NAdam", "RAdam", "Adamax")

INSTALL = "pip install 'optimorph[torch]'"

# torch's default for each optimizer the three implementations share, and the optimorph spec
# that is p-equivalent to it at fp32 and fp64 (tests/optimizers/test_external.py checks the
# ones marked there). What each spec pins, and why:
MATCH_TORCH: dict[str, tuple[str, str]] = {
    "SGD": ("sgd(lr=0.001)", "torch's default lr is 1e-3 (optimorph's sgd: 0.1)"),
    "SGD(momentum=0.9)": (
        "momentum(lr=0.001, beta=0.9, form='pytorch')",
        "m = beta m + g, theta -= eta m (dampening 0); the EMA form needs a 1/(1-beta) rescale",
    ),
    "SGD(momentum=0.9, nesterov=True)": (
        "nesterov(lr=0.001, beta=0.9)",
        "theta -= eta (g + beta m), m = beta m + g",
    ),
    "Adam": ("adam(lr=0.001)", "same defaults; bias corrections in high precision"),
    "AdamW": (
        "adamw(lr=0.001, weight_decay=0.01)",
        "decoupled decay 1e-2 as torch (optax.adamw's default is 1e-4)",
    ),
    "RMSprop": (
        "rmsprop(lr=0.01, beta=0.99, eps=1e-08, eps_inside=false)",
        "eps outside the square root (optax.rmsprop: inside)",
    ),
    "Adagrad": (
        "adagrad(lr=0.01, eps=1e-10, initial=0)",
        "accumulator starts at 0, eps 1e-10 outside the square root (optax: 0.1, 1e-7 inside)",
    ),
    "NAdam": (
        "none",
        "torch's momentum schedule mu_t = b1 (1 - 0.5 * 0.96^(0.004 t)) has no optimorph form; "
        "nadam (optax.nadam) uses a constant b1",
    ),
    "RAdam": (
        "none",
        "radam (optax.radam) adds eps to sqrt(v_hat), torch to sqrt(v) (then scales by "
        "sqrt(1 - b2^t)): equivalent at fp32, not at fp64",
    ),
}


def _torch():
    """The torch module, or one SpecError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise SpecError(f"torch: specs need PyTorch, which is not installed: {INSTALL}") from None
    return torch


def is_torch(spec: Any) -> bool:
    """True for an OptimizerSpec made by :func:`torch_spec`."""
    return _identity(getattr(spec, "custom", None)) is not None


# ---------------------------------------------------------------------------------------------
# dtype conversion (numpy has no bfloat16; JAX hands ml_dtypes.bfloat16 arrays to callbacks)


def _to_torch(x: np.ndarray):
    torch = _torch()
    x = np.asarray(x)
    if x.dtype.name == "bfloat16":
        return torch.from_numpy(np.array(x.view(np.int16))).view(torch.bfloat16)
    return torch.from_numpy(np.array(x))


def _to_numpy(t, dtype: np.dtype) -> np.ndarray:
    torch = _torch()
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(dtype)
    return t.numpy().astype(dtype, copy=False)


def _torch_dtype(dtype: np.dtype):
    torch = _torch()
    names = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}  # fmt: skip
    if np.dtype(dtype).name not in names:
        raise ValueError(f"torch optimizers step float parameters; got dtype {dtype}")
    return names[np.dtype(dtype).name]


# ---------------------------------------------------------------------------------------------
# The layout of torch's state, found by stepping a dummy parameter once


class _Layout(collections.namedtuple("_Layout", "slots scalars has_step initial")):
    """Names of torch's per-parameter buffers and scalar buffers, whether it keeps ``step``,
    and the buffers torch fills in its constructor (Adagrad's ``sum``) with their value."""


@functools.lru_cache(maxsize=None)
def _layout(name: str, kwargs: tuple, dtype_name: str) -> _Layout:
    torch = _torch()
    cls = getattr(torch.optim, name)
    p = torch.zeros(2, dtype=_torch_dtype(np.dtype(dtype_name)), requires_grad=True)
    opt = cls([p], **dict(kwargs))
    made = {k: float(v.reshape(-1)[0]) for k, v in opt.state[p].items() if k != "step"}
    p.grad = torch.zeros_like(p)
    opt.step()
    state = opt.state[p]
    slots = tuple(k for k, v in state.items() if k != "step" and v.dim() > 0)
    scalars = tuple(k for k, v in state.items() if k != "step" and v.dim() == 0)
    for k in scalars:
        if state[k].dtype != torch.float32:
            raise ValueError(f"torch.optim.{name}: scalar state {k!r} is {state[k].dtype}")
    initial = tuple((k, made[k]) for k in slots if k in made)
    return _Layout(slots, scalars, "step" in state, initial)


_STATE_CLASSES: dict[tuple, type] = {}


def _state_class(name: str, fields: tuple[str, ...]) -> type:
    key = (name, fields)
    if key not in _STATE_CLASSES:
        _STATE_CLASSES[key] = collections.namedtuple(f"Torch{name}State", fields)
    return _STATE_CLASSES[key]


# ---------------------------------------------------------------------------------------------
# The transformation


def _transformation(name: str, kwargs: tuple) -> optax.GradientTransformationExtraArgs:
    """optax transformation stepping ``torch.optim.<name>(**kwargs)``; see the module docstring.

    Its ``update`` carries ``torch_optimizer = (name, kwargs)`` (kwargs as sorted pairs): a
    GradientTransformation is a pytree that JAX rebuilds from its two functions, so the
    identity rides on the function, not on a subclass.
    """

    def init(params):
        return _init(name, kwargs, params)

    def update(grads, state, params=None, **extra_args):
        return _update(name, kwargs, grads, state, params)

    update.torch_optimizer = (name, kwargs)
    return optax.GradientTransformationExtraArgs(init, update)


def _identity(tx: Any) -> tuple[str, tuple] | None:
    return getattr(getattr(tx, "update", None), "torch_optimizer", None)


def _float_dtype(params: PyTree) -> np.dtype:
    dtypes = {np.dtype(x.dtype) for x in jax.tree.leaves(params)}
    if len(dtypes) != 1:
        raise ValueError(f"torch optimizers here need one parameter dtype, got {sorted(dtypes)}")
    return dtypes.pop()


def _fields(layout: _Layout) -> tuple[str, ...]:
    return ("count", *layout.slots, *layout.scalars)


def _init(name: str, kwargs: tuple, params: PyTree):
    dtype = _float_dtype(params)
    layout = _layout(name, kwargs, dtype.name)
    initial = dict(layout.initial)
    values: dict[str, Any] = {"count": jnp.zeros([], jnp.int32)}
    for slot in layout.slots:
        fill = initial.get(slot, 0.0)
        values[slot] = jax.tree.map(lambda p, f=fill: jnp.full(p.shape, f, p.dtype), params)
    for slot in layout.scalars:
        values[slot] = jax.tree.map(lambda p: jnp.zeros([], jnp.uint32), params)
    return _state_class(name, _fields(layout))(**values)


def _update(name: str, kwargs: tuple, grads: PyTree, state: Any, params: PyTree):
    if params is None:
        raise ValueError(f"torch:{name} steps the parameters: call update(grads, state, params)")
    p_leaves, treedef = jax.tree.flatten(params)
    dtype = _float_dtype(params)
    layout = _layout(name, kwargs, dtype.name)
    g_leaves = [jnp.asarray(g, dtype) for g in treedef.flatten_up_to(grads)]
    slots = [treedef.flatten_up_to(getattr(state, s)) for s in layout.slots]
    scalars = [treedef.flatten_up_to(getattr(state, s)) for s in layout.scalars]
    args = (state.count, p_leaves, g_leaves, slots, scalars)
    flat, args_def = jax.tree.flatten(args)
    base = [np.shape(x) for x in flat]
    out_def = jax.tree.structure((state.count, p_leaves, slots, scalars))
    out_structs = [
        jax.ShapeDtypeStruct(np.shape(x), x.dtype)
        for x in jax.tree.leaves((state.count, p_leaves, slots, scalars))
    ]

    def host(*arrays):
        return _host_step(name, kwargs, layout, arrays, base, args_def, out_def, out_structs)

    result = jax.pure_callback(host, out_structs, *flat, vmap_method="expand_dims")
    count, new_p, new_slots, new_scalars = jax.tree.unflatten(out_def, list(result))
    wide = jnp.result_type(float)
    updates = [n.astype(wide) - p.astype(wide) for n, p in zip(new_p, p_leaves, strict=True)]
    values = {"count": count}
    for s, leaves in zip(layout.slots, new_slots, strict=True):
        values[s] = treedef.unflatten(leaves)
    for s, leaves in zip(layout.scalars, new_scalars, strict=True):
        values[s] = treedef.unflatten(leaves)
    return treedef.unflatten(updates), _state_class(name, _fields(layout))(**values)


def _host_step(name, kwargs, layout, arrays, base, args_def, out_def, out_structs):
    """Every lane's torch step: arrays carry leading batch axes (vmap), possibly of size 1."""
    arrays = [np.asarray(a) for a in arrays]
    lead = [a.shape[: a.ndim - len(b)] for a, b in zip(arrays, base, strict=True)]
    batch = np.broadcast_shapes(*lead) if lead else ()
    outs = [np.empty(batch + s.shape, s.dtype) for s in out_structs]
    for idx in np.ndindex(*batch):
        lane = []
        for a, shape in zip(arrays, lead, strict=True):
            pick = tuple(i if n > 1 else 0 for i, n in zip(idx, shape, strict=True))
            lane.append(a[pick])
        count, p, g, slots, scalars = jax.tree.unflatten(args_def, lane)
        result = _torch_step(name, kwargs, layout, int(count), p, g, slots, scalars)
        for out, value in zip(outs, jax.tree.leaves(result), strict=True):
            out[idx] = value
    return outs


def _torch_step(name, kwargs, layout, count, p_leaves, g_leaves, slots, scalars):
    """One torch step from the given arrays; returns (count, params, slots, scalars) as numpy."""
    torch = _torch()
    dtype = p_leaves[0].dtype
    params = [_to_torch(p) for p in p_leaves]
    for t, g in zip(params, g_leaves, strict=True):
        t.grad = _to_torch(g)
    opt = getattr(torch.optim, name)(params, **dict(kwargs))
    if count > 0:  # else torch initialises its own state, as on its first step
        for i, t in enumerate(params):
            st = {s: _to_torch(slots[k][i]) for k, s in enumerate(layout.slots)}
            for k, s in enumerate(layout.scalars):
                bits = np.asarray(scalars[k][i], np.uint32).reshape(())
                st[s] = torch.from_numpy(np.array(bits.view(np.float32)))
            if layout.has_step:
                st["step"] = torch.tensor(float(count), dtype=torch.float32)
            opt.state[t] = st
    with torch.no_grad():
        opt.step()
    if layout.has_step:
        new_count = int(opt.state[params[0]]["step"].item())
    else:
        new_count = min(count + 1, np.iinfo(np.int32).max)
    new_p = [_to_numpy(t, dtype) for t in params]
    new_slots = [[_to_numpy(opt.state[t][s], dtype) for t in params] for s in layout.slots]
    new_scalars = [
        [np.asarray(opt.state[t][s].numpy(), np.float32).view(np.uint32) for t in params]
        for s in layout.scalars
    ]
    return (np.int32(new_count), new_p, new_slots, new_scalars)


# ---------------------------------------------------------------------------------------------
# Specs


def _frozen(kwargs: Mapping[str, Any]) -> tuple:
    def freeze(v):
        return tuple(freeze(x) for x in v) if isinstance(v, (list, tuple)) else v

    return tuple(sorted((k, freeze(v)) for k, v in kwargs.items()))


@functools.lru_cache(maxsize=None)
def _cached_transformation(name: str, kwargs: tuple) -> optax.GradientTransformationExtraArgs:
    return _transformation(name, kwargs)  # one object per spec: equal specs share programs


def torch_optimizer(
    name: str, kwargs: Mapping[str, Any] | None = None
) -> optax.GradientTransformation:
    """The optax transformation that steps ``torch.optim.<name>(**kwargs)``.

    Args:
      name: a class of ``torch.optim`` in :data:`TORCH_OPTIMIZERS`.
      kwargs: its keyword arguments (``lr``, ``betas``, ``foreach``, ``fused``, ...).

    Returns:
      An optax ``GradientTransformationExtraArgs``; see the module docstring for its state.
    """
    torch = _torch()
    if name not in TORCH_OPTIMIZERS:
        raise SpecError(
            f"torch:{name}: not supported; one of {', '.join(TORCH_OPTIMIZERS)} (optimizers whose "
            "state is elementwise per parameter)"
        )
    frozen = _frozen(kwargs or {})
    try:  # check the arguments now, in one line, rather than inside a compiled step
        p = torch.zeros(1, requires_grad=True)
        getattr(torch.optim, name)([p], **dict(frozen))
    except (TypeError, ValueError, RuntimeError) as err:
        raise SpecError(f"torch:{name}: {err}") from None
    return _cached_transformation(name, frozen)


def _torch_defaults(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    torch = _torch()
    signature = inspect.signature(getattr(torch.optim, name).__init__)
    return {
        k: p.default
        for k, p in signature.parameters.items()
        if k not in ("self", "params", *given) and p.default is not inspect.Parameter.empty
    }


def torch_spec(call: Call, text: str | None = None):
    """The OptimizerSpec of ``torch:NAME(kwargs)`` (a single positional argument is ``lr``).

    >>> torch_spec(Call("torch:Adam", (), {"lr": 1e-3})).text
    'torch:Adam(lr=0.001)'
    """
    from optimorph.optimizers.registry import OptimizerSpec

    name = call.name.partition(":")[2]
    kwargs = dict(call.kwargs)
    if len(call.args) > 1:
        raise SpecError(f"{call.name}: give arguments by name, e.g. {call.name}(lr=1e-3)")
    if call.args:
        kwargs.setdefault("lr", call.args[0])
    tx = torch_optimizer(name, kwargs)
    return OptimizerSpec(text or str(call), None, {}, tx, _torch_defaults(name, kwargs))


# ---------------------------------------------------------------------------------------------
# The state view: export, import, and a real torch optimizer holding it


def export_state(state: Any) -> dict[str, Any]:
    """torch's state as named numpy arrays: ``{"step": float32, slot: params-shaped tree, ...}``.

    Scalar buffers stored by their bits come back as float32 values. ``import_state`` inverts
    it exactly.
    """
    out: dict[str, Any] = {"step": np.float32(np.asarray(state.count))}
    for field in state._fields[1:]:
        tree = getattr(state, field)
        if all(np.asarray(x).dtype == np.uint32 for x in jax.tree.leaves(tree)):
            out[field] = jax.tree.map(lambda x: np.asarray(x, np.uint32).view(np.float32), tree)
        else:
            out[field] = jax.tree.map(np.asarray, tree)
    return out


def import_state(template: Any, view: Mapping[str, Any]) -> Any:
    """A state of ``template``'s type and dtypes from an :func:`export_state` view."""
    values = {"count": jnp.asarray(int(view["step"]), jnp.int32)}
    for field in template._fields[1:]:
        tree = getattr(template, field)
        if all(np.asarray(x).dtype == np.uint32 for x in jax.tree.leaves(tree)):
            values[field] = jax.tree.map(
                lambda v: jnp.asarray(np.asarray(v, np.float32).view(np.uint32)), view[field]
            )
        else:
            values[field] = jax.tree.map(
                lambda t, v: jnp.asarray(np.asarray(v), t.dtype), tree, view[field]
            )
    return type(template)(**values)


def to_torch(tx: optax.GradientTransformation, state: Any, params: PyTree):
    """A real ``torch.optim`` optimizer over torch copies of ``params`` holding ``state``.

    Returns ``(optimizer, tensors)``, the tensors in ``jax.tree.leaves(params)`` order: what to
    step in torch to continue the run there.
    """
    torch = _torch()
    name, kwargs = _identity(tx)
    leaves = jax.tree.leaves(params)
    tensors = [_to_torch(np.asarray(p)).requires_grad_(True) for p in leaves]
    opt = getattr(torch.optim, name)(tensors, **dict(kwargs))
    layout = _layout(name, kwargs, np.dtype(leaves[0].dtype).name)
    view = export_state(state)
    if int(view["step"]) > 0:
        for i, t in enumerate(tensors):
            st = {s: _to_torch(jax.tree.leaves(view[s])[i]) for s in layout.slots}
            st |= {s: torch.tensor(float(jax.tree.leaves(view[s])[i])) for s in layout.scalars}
            if layout.has_step:
                st["step"] = torch.tensor(float(view["step"]), dtype=torch.float32)
            opt.state[t] = st
    return opt, tensors
