"""The optimizer zoo: every optimizer an optax GradientTransformation with named state."""

from optimorph.optimizers import (  # noqa: F401  (registers the zoo)
    adaptive_distance,
    first_order,
    newton,
    optax_wrapped,
    random_scaling,
    steepest,
)
from optimorph.optimizers.registry import (
    REGISTRY,
    Entry,
    HParam,
    OptimizerSpec,
    list_optimizers,
    optimizer,
    register,
    resolve,
)

__all__ = [
    "REGISTRY",
    "Entry",
    "HParam",
    "OptimizerSpec",
    "list_optimizers",
    "optimizer",
    "register",
    "resolve",
]
