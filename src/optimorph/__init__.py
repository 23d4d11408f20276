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

from optimorph.engine import TrainingError, TrainResult, train
from optimorph.equivalence.compare import classes, compare
from optimorph.equivalence.phase import phase_diagram
from optimorph.optimizers import list_optimizers, optimizer, register, resolve
from optimorph.precision import Precision, PrecisionWarning, parse_format, precision
from optimorph.problems import Problem, list_problems, problem
from optimorph.spec import SpecError

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
