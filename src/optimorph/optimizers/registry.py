"""The optimizer registry: names -> constructors with declared, validated hyperparameters.

Each entry declares its hyperparameters once (type, default, range). The declaration drives
validation, ``optimorph list optimizers``, spec parsing and the engine's split between *static*
hyperparameters (flags and kinds: they pick the compiled program) and *traced* ones (numbers and
schedule parameters: a grid of them shares one compiled, vmapped program).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Mapping

import optax

from optimorph import spec as spec_lib
from optimorph.optimizers.grid import is_grid_value
from optimorph.registry import Registry
from optimorph.schedules import Schedule, schedule
from optimorph.spec import Call, SpecError

__all__ = [
    "HParam",
    "Entry",
    "OptimizerSpec",
    "REGISTRY",
    "register",
    "resolve",
    "optimizer",
    "list_optimizers",
]

SCHEDULE = "schedule"


@dataclasses.dataclass(frozen=True)
class HParam:
    """One hyperparameter: its type, default and valid range.

    ``kind`` is ``float``, ``int``, ``bool``, ``str`` or ``"schedule"`` (a number or a schedule call).
    Ranges are ``[low, high]`` with ``open_low``/``open_high`` making an end exclusive.
    """

    name: str
    default: Any
    kind: Any = float
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple | None = None
    doc: str = ""

    @property
    def traced(self) -> bool:
        return self.kind in (float, SCHEDULE)

    def describe(self) -> str:
        parts = [f"{self.name}={self.default!r}"]
        if self.choices:
            parts.append("one of " + "|".join(map(str, self.choices)))
        elif self.low is not None or self.high is not None:
            lo = "(" if self.open_low else "["
            hi = ")" if self.open_high or self.high is None else "]"
            lo_v = "-inf" if self.low is None else f"{self.low:g}"
            hi_v = "inf" if self.high is None else f"{self.high:g}"
            parts.append(f"in {lo}{lo_v}, {hi_v}{hi}")
        return " ".join(parts)

    def validate(self, value: Any, where: str) -> Any:
        """Return the value coerced to this kind, or raise SpecError naming the fix.

        A JAX array (a traced value under ``jit``, e.g. from ``optax.inject_hyperparams``) is
        accepted for numeric hyperparameters as it is: its range cannot be checked while tracing.
        """
        traced = self.traced and hasattr(value, "shape") and hasattr(value, "dtype")
        if traced and not isinstance(value, (int, float)):
            if getattr(value, "ndim", 0) != 0:
                raise SpecError(f"{where}: {self.name} must be a scalar, got shape {value.shape}")
            return schedule(value, what=f"{where}: {self.name}") if self.kind == SCHEDULE else value
        if self.kind == SCHEDULE:
            sched = schedule(value, what=f"{where}: {self.name}")
            if sched.kind == "constant":
                self._check_range(sched.params["lr0"], where)
            return sched
        if self.kind is bool:
            if not isinstance(value, bool):
                raise SpecError(f"{where}: {self.name} must be true or false, got {value!r}")
            return value
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise SpecError(
                    f"{where}: {self.name} must be one of {', '.join(self.choices or ())}, "
                    f"got {value!r}"
                )
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where}: {self.name} must be a number, got {value!r}")
        if self.kind is int:
            if float(value) != int(value):
                raise SpecError(f"{where}: {self.name} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise SpecError(f"{where}: {self.name} must be finite, got {value!r}")
        self._check_range(value, where)
        return value

    def _check_range(self, value: float, where: str) -> None:
        bad_low = self.low is not None and (
            value < self.low or (self.open_low and value == self.low)
        )
        bad_high = self.high is not None and (
            value > self.high or (self.open_high and value == self.high)
        )
        if bad_low or bad_high:
            raise SpecError(f"{where}: {self.name}={value!r} is out of range; {self.describe()}")


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered optimizer: its constructor, hyperparameters and documentation."""

    name: str
    build: Callable[..., optax.GradientTransformation]
    hparams: tuple[HParam, ...]
    summary: str
    family: str = "optimorph"
    # optax extra arguments the update cannot do without (``("value_fn",)``: Newton's Hessian);
    # the trainer passes value, grad and value_fn to every optimizer.
    needs: tuple[str, ...] = ()

    def hparam(self, name: str) -> HParam:
        for h in self.hparams:
            if h.name == name:
                return h
        raise KeyError(name)


REGISTRY: Registry[Entry] = Registry("optimizer")


def register(
    name: str,
    *hparams: HParam,
    summary: str,
    family: str = "optimorph",
    needs: tuple[str, ...] = (),
) -> Callable[[Callable], Callable]:
    """Register a constructor under ``name``; it is called with every hyperparameter by keyword."""

    def wrap(build: Callable) -> Callable:
        REGISTRY.add(name, Entry(name, build, tuple(hparams), summary, family, tuple(needs)))
        return build

    return wrap


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """A validated optimizer: registry entry + every hyperparameter's value (defaults filled).

    ``text`` is the spec as the user gave it (the run's label); ``canonical`` spells out every value.
    A user's own transformation (``pkg.mod:attr`` or an optax object) has ``entry=None`` and
    carries it in ``custom``. ``defaults`` are the hyperparameters the spec leaves at their
    defaults, with those values (a ``pkg.mod:factory(...)`` call's unset keyword defaults; empty
    for an optax object, whose making is not known): what ``compare`` names when two specs
    differ only by a default.
    """

    text: str
    entry: Entry | None
    values: Mapping[str, Any]
    custom: optax.GradientTransformation | None = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.entry.name if self.entry else self.text

    @property
    def canonical(self) -> str:
        if self.entry is None:
            return self.text
        args = ", ".join(f"{k}={_fmt(v)}" for k, v in self.values.items())
        return f"{self.entry.name}({args})"

    def static_key(self) -> tuple:
        """What selects the compiled program: name, flags and schedule kinds (not numbers)."""
        if self.entry is None:
            return ("custom", id(self.custom))
        key: list = [self.entry.name]
        for h in self.entry.hparams:
            v = self.values[h.name]
            key.append(v.kind if isinstance(v, Schedule) else (None if h.traced else v))
        return tuple(key)

    def traced_values(self) -> dict[str, Any]:
        """The numbers a grid may vary: ``{"lr": {"lr0": 0.1, "tau": 5e4}, "b1": 0.9, ...}``.

        A schedule's parameters are a nested mapping: marked by structure as schedule
        parameters (computed in high precision, never stored in the hparams format).
        """
        out: dict[str, Any] = {}
        if self.entry is None:
            return out
        for h in self.entry.hparams:
            v = self.values[h.name]
            if isinstance(v, Schedule):
                out[h.name] = dict(v.params)
            elif h.traced:
                out[h.name] = v
        return out

    def build(self, traced: Mapping[str, Any] | None = None) -> optax.GradientTransformation:
        """The optax transformation; ``traced`` (shaped like :meth:`traced_values`) replaces
        numeric values, e.g. by tracers."""
        if self.entry is None:
            return self.custom
        kwargs = dict(self.values)
        if traced:
            for h in self.entry.hparams:
                v = kwargs[h.name]
                if isinstance(v, Schedule) and h.name in traced:
                    kwargs[h.name] = v.with_params({**v.params, **traced[h.name]})
                elif h.name in traced:
                    kwargs[h.name] = traced[h.name]
        return self.entry.build(**kwargs)

    def __str__(self) -> str:
        return self.text


def _fmt(v: Any) -> str:
    return str(v) if isinstance(v, Schedule) else repr(v)


def resolve(spec: Any, **overrides: Any) -> OptimizerSpec:
    """Validate a spec (string, parsed Call, name + keywords, OptimizerSpec or optax object).

    >>> resolve("adam(lr=1e-3, b2=0.99)").canonical
    'adam(lr=0.001, b1=0.9, b2=0.99, eps=1e-08, bias_correction=True)'
    """
    if isinstance(spec, OptimizerSpec) and not overrides:
        return spec
    if isinstance(spec, optax.GradientTransformation):
        return OptimizerSpec(_custom_label(spec), None, {}, spec)
    if is_named(spec):  # ("mine", tx): the name labels every table, figure and file
        return OptimizerSpec(spec[0], None, {}, spec[1])
    call = spec_lib.parse(spec)
    if call.name.startswith("torch:"):  # torch.optim itself, stepped through a callback
        from optimorph.optimizers import external

        text = spec if isinstance(spec, str) and not overrides else None
        return external.torch_spec(Call(call.name, call.args, {**call.kwargs, **overrides}), text)
    if spec_lib.is_import_path(call.name):
        return _from_import_path(call, overrides)
    entry = REGISTRY.get(call.name)
    if entry is None:
        module, _, attr = call.name.rpartition(".")
        if module and attr:  # optax.adamw: a factory written with '.' where ':' belongs
            opt_in = "" if module.split(".")[0] in spec_lib.TRUSTED_MODULES else (
                " (with --allow-import on the command line)")
            raise SpecError(f"unknown optimizer {call.name!r}: to call a factory from a module, "
                            f"write '{module}:{attr}(...)'{opt_in}")  # fmt: skip
        raise SpecError(
            f"unknown optimizer {call.name!r}; registered: {', '.join(sorted(REGISTRY))} "
            "(or give 'package.module:factory' for your own)"
        )
    where = call.name
    names = [h.name for h in entry.hparams]
    if len(call.args) > 1:
        raise SpecError(f"{where}: give hyperparameters by name, e.g. {where}(lr=0.1)")
    given = dict(call.kwargs)
    if call.args:  # a single positional argument is the learning rate: "sgd(0.1)"
        given.setdefault("lr", call.args[0])
    given.update(overrides)
    grids = [f"{k}={v}" for k, v in given.items() if is_grid_value(v)]
    if grids:
        raise SpecError(
            f"{where}: {', '.join(grids)} is a grid of values; train runs grids (one run per "
            "value, see optimorph.optimizers.grid), everything else needs one value"
        )
    unknown = [k for k in given if k not in names]
    if unknown:
        valid = "; ".join(h.describe() for h in entry.hparams)
        raise SpecError(f"{where}: unknown hyperparameter {', '.join(unknown)}; valid: {valid}")
    values = {h.name: h.validate(given.get(h.name, h.default), where) for h in entry.hparams}
    text = spec if isinstance(spec, str) and not overrides else str(Call(call.name, (), given))
    defaults = {h.name: h.default for h in entry.hparams if h.name not in given}
    return OptimizerSpec(text, entry, values, defaults=defaults)


def _from_import_path(call: Call, overrides: dict) -> OptimizerSpec:
    factory = spec_lib.load_import_path(call.name)
    kwargs = {**call.kwargs, **overrides}
    try:
        made = factory(*call.args, **kwargs) if callable(factory) else factory
    except Exception as err:  # the user's code: report it in one line, naming the spec
        raise SpecError(f"calling {call.name} failed: {type(err).__name__}: {err}") from None
    if isinstance(made, optax.GradientTransformation):
        return OptimizerSpec(str(call), None, {}, made, _keyword_defaults(factory, call, kwargs))
    if isinstance(made, OptimizerSpec):
        return made
    raise SpecError(
        f"{call.name} returned {type(made).__name__}; it must return an optax.GradientTransformation"
    )


def _keyword_defaults(factory: Any, call: Call, kwargs: dict) -> dict[str, Any]:
    """The keyword defaults of ``factory`` that the call leaves unset ({} when its signature is
    unknown, as for some builtins)."""
    try:
        signature = inspect.signature(factory)
        given = signature.bind_partial(*call.args, **kwargs).arguments
    except (TypeError, ValueError):
        return {}
    return {
        name: p.default
        for name, p in signature.parameters.items()
        if name not in given and p.default is not inspect.Parameter.empty
    }


def is_named(x: Any) -> bool:
    """A ``(name, optax transformation)`` pair: a user's optimizer with its own label."""
    return (
        isinstance(x, tuple)
        and not isinstance(x, optax.GradientTransformation)
        and len(x) == 2
        and isinstance(x[0], str)
        and isinstance(x[1], optax.GradientTransformation)
    )


def _custom_label(tx: optax.GradientTransformation) -> str:
    fn = getattr(tx.update, "__qualname__", "update")
    return f"custom:{fn}"


def optimizer(spec: Any, **overrides: Any) -> optax.GradientTransformation:
    """An optax GradientTransformation from a spec string or a name plus keyword arguments.

    >>> import jax.numpy as jnp
    >>> tx = optimizer("momentum(lr=0.1, beta=0.9, form='ema')")
    >>> state = tx.init({"w": jnp.ones(2)})
    >>> state._fields
    ('count', 'm')
    """
    return resolve(spec, **overrides).build()


def list_optimizers() -> list[Entry]:
    """Every registered optimizer, sorted by name."""
    return [REGISTRY[k] for k in sorted(REGISTRY)]
