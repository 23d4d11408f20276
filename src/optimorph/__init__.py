"""optimorph: a laboratory for training optimizers.

    >>> import optimorph
    >>> tx = optimorph.optimizer("adam(lr=1e-3, b2=0.99)")     # an optax GradientTransformation
    >>> p = optimorph.precision("params=bf16,state=fp32")       # a per-role precision policy
    >>> result = optimorph.train("two-moons(n=500)", ["sgd(lr=0.1)", "adam(lr=1e-3)"],
    ...                          seeds=3, steps=200, batch_size=32, progress=False)

    >>> import jax; jax.config.update("jax_enable_x64", True)  # float64 and emulated formats
    >>> c = optimorph.compare("sgd(lr=1e-3)", "signsgd(lr=1e-3)", problem="least-squares",
    ...                       precision=["fp16", "fp64"], seeds=2, steps=100, progress=False)
    >>> [c.pairs[p][0].equivalent for p in ("fp16", "fp64")]  # is A the same algorithm as B?
    [False, False]

Importing optimorph never changes JAX's configuration; float64 and emulated formats ask for
``jax.config.update("jax_enable_x64", True)`` when they are used.
"""

import importlib
import sys
import types
from typing import Any

# Imported on first use (PEP 562): `optimorph --help` and spec errors answer without loading JAX.
_LAZY = {
    "optimizer": "optimorph.optimizers",
    "resolve": "optimorph.optimizers",
    "register": "optimorph.optimizers",
    "list_optimizers": "optimorph.optimizers",
    "precision": "optimorph.precision",
    "parse_format": "optimorph.precision",
    "Precision": "optimorph.precision",
    "PrecisionWarning": "optimorph.precision",
    "problem": "optimorph.problems",
    "list_problems": "optimorph.problems",
    "Problem": "optimorph.problems",
    "train": "optimorph.engine",
    "TrainResult": "optimorph.engine",
    "TrainingError": "optimorph.engine",
    "SpecError": "optimorph.spec",
    "compare": "optimorph.equivalence.compare",
    "classes": "optimorph.equivalence.compare",
    "phase_diagram": "optimorph.equivalence.phase",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):  # a subpackage used as an attribute: optimorph.optimizers
        try:
            return importlib.import_module(f"optimorph.{name}")
        except ModuleNotFoundError:
            pass
    raise AttributeError(f"module 'optimorph' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


class _Package(types.ModuleType):
    """Keeps ``optimorph.precision`` the function when the submodule of that name is imported
    (the import system would otherwise bind the module over it; the module stays reachable
    as ``sys.modules["optimorph.precision"]`` and by ``from optimorph.precision import ...``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "precision" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__version__ = "0.1.0"

__all__ = [
    "optimizer",
    "resolve",
    "register",
    "list_optimizers",
    "precision",
    "parse_format",
    "Precision",
    "PrecisionWarning",
    "problem",
    "list_problems",
    "Problem",
    "train",
    "TrainResult",
    "TrainingError",
    "SpecError",
    "compare",
    "classes",
    "phase_diagram",
]
