"""Learning-rate schedules whose numbers are traceable, so a grid of them runs as one program.

A schedule is a kind (static: it decides the formula) plus numeric parameters (traced). In spec
strings it is written as a nested call, ``sgd(lr=power_law(0.15, tau=5e4, alpha=1))``; a bare number
is a constant schedule. ``t`` is the 1-based index of the update being made (DESIGN.md section 2).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import jax.numpy as jnp

from optimorph.registry import Registry
from optimorph.spec import Call, SpecError

__all__ = ["Schedule", "SCHEDULES", "schedule"]


def _constant(t, lr0):
    return lr0 + 0.0 * t


def _power_law(t, lr0, tau, alpha):
    # eta_t = eta0 / (1 + t/tau)**alpha; alpha = 0 is a constant rate.
    return lr0 / (1.0 + t / tau) ** alpha


def _cosine(t, lr0, steps, final):
    frac = jnp.clip(t / steps, 0.0, 1.0)
    return final + 0.5 * (lr0 - final) * (1.0 + jnp.cos(math.pi * frac))


def _warmup_cosine(t, lr0, warmup, steps, final):
    # Linear warm-up from 0 to lr0 over `warmup` updates, then cosine decay to `final` at `steps`.
    rise = lr0 * jnp.minimum(t / jnp.maximum(warmup, 1.0), 1.0)
    frac = jnp.clip((t - warmup) / jnp.maximum(steps - warmup, 1.0), 0.0, 1.0)
    fall = final + 0.5 * (lr0 - final) * (1.0 + jnp.cos(math.pi * frac))
    return jnp.where(t <= warmup, rise, fall)


def _warmup_linear(t, lr0, warmup, steps, final):
    rise = lr0 * jnp.minimum(t / jnp.maximum(warmup, 1.0), 1.0)
    frac = jnp.clip((t - warmup) / jnp.maximum(steps - warmup, 1.0), 0.0, 1.0)
    return jnp.where(t <= warmup, rise, lr0 + (final - lr0) * frac)


# kind -> (formula, parameter names in order, defaults, one-line description)
_TABLE: dict[str, tuple[Callable, tuple[str, ...], dict[str, float], str]] = {
    "constant": (_constant, ("lr0",), {}, "eta_t = lr0"),
    "power_law": (
        _power_law,
        ("lr0", "tau", "alpha"),
        {"tau": 5e4, "alpha": 1.0},
        "eta_t = lr0 / (1 + t/tau)**alpha",
    ),
    "cosine": (_cosine, ("lr0", "steps", "final"), {"final": 0.0}, "cosine decay to final"),
    "warmup_cosine": (
        _warmup_cosine,
        ("lr0", "warmup", "steps", "final"),
        {"final": 0.0},
        "linear warm-up, then cosine decay",
    ),
    "warmup_linear": (
        _warmup_linear,
        ("lr0", "warmup", "steps", "final"),
        {"final": 0.0},
        "linear warm-up, then linear decay",
    ),
}
SCHEDULES: Registry[tuple[Callable, tuple[str, ...], dict[str, float], str]] = Registry("schedule")
for _kind, _row in _TABLE.items():
    SCHEDULES.add(_kind, _row)

_POSITIVE = {"lr0": False, "tau": True, "alpha": False, "steps": True, "warmup": False}


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A schedule kind with its numeric parameters (floats, or traced scalars inside the engine)."""

    kind: str
    params: Mapping[str, Any]

    def __call__(self, t):
        """The rate of the t-th update (t 1-based, a scalar array or number)."""
        formula, names, _, _ = SCHEDULES[self.kind]
        return formula(t, *(self.params[n] for n in names))

    def with_params(self, params: Mapping[str, Any]) -> "Schedule":
        return Schedule(self.kind, dict(params))

    def __str__(self) -> str:
        if self.kind == "constant":
            return _num(self.params["lr0"])
        args = ", ".join(f"{k}={_num(v)}" for k, v in self.params.items())
        return f"{self.kind}({args})"


def _num(v: Any) -> str:
    try:
        return repr(float(v))
    except TypeError:  # a traced value has no concrete number
        return "<traced>"


def schedule(value: Any, *, what: str = "lr") -> Schedule:
    """Build a :class:`Schedule` from a number, a parsed ``Call`` or a Schedule.

    >>> schedule(0.1)(5)
    0.1
    >>> float(schedule(Call("power_law", (0.15,), {"tau": 10.0, "alpha": 1.0}))(10))
    0.075
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, bool) or value is None:
        raise SpecError(f"{what} must be a number or a schedule like power_law(0.1, tau=5e4)")
    if isinstance(value, (int, float)):
        return _validated("constant", {"lr0": float(value)}, what)
    if isinstance(value, Call):
        if value.name not in SCHEDULES:
            raise SpecError(
                f"unknown schedule {value.name!r} for {what}; valid: {', '.join(SCHEDULES)}"
            )
        _, names, defaults, _ = SCHEDULES[value.name]
        if len(value.args) > len(names):
            raise SpecError(f"{value.name} takes at most {len(names)} positional arguments")
        params = dict(defaults)
        params.update(zip(names, value.args))
        for k, v in value.kwargs.items():
            if k not in names:
                raise SpecError(
                    f"schedule {value.name} has no parameter {k!r}; valid: {', '.join(names)}"
                )
            params[k] = v
        missing = [n for n in names if n not in params]
        if missing:
            raise SpecError(f"schedule {value.name} needs {', '.join(missing)}")
        return _validated(value.name, {n: params[n] for n in names}, what)
    if _is_array(value):  # a traced scalar (engine, inject_hyperparams): a constant rate
        return Schedule("constant", {"lr0": value})
    raise SpecError(
        f"{what} must be a number or a schedule like power_law(0.1, tau=5e4), got {value!r}"
    )


def _is_array(value: Any) -> bool:
    """A JAX array or tracer, or a NumPy scalar/array: a number that is not a Python float."""
    import numpy as np

    return hasattr(value, "shape") and hasattr(value, "dtype") and np.ndim(value) == 0


def _validated(kind: str, params: dict, what: str) -> Schedule:
    for name, v in params.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"{what}: schedule parameter {name} must be a number, got {v!r}")
        if not math.isfinite(v) or v < 0 or (_POSITIVE.get(name) and v == 0):
            bound = "> 0" if _POSITIVE.get(name) else ">= 0"
            raise SpecError(f"{what}: schedule parameter {name}={v!r} must be finite and {bound}")
    return Schedule(kind, {k: float(v) for k, v in params.items()})
