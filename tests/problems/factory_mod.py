"""User factories for the registry tests, named by spec as ``tests.problems.factory_mod:make``."""

import jax.numpy as jnp
import numpy as np

from optimorph.problems import Problem


def make(n: int = 4, scale: float = 1.0) -> Problem:
    """A least-squares toy: minimise 0.5 * scale * mean((x w - y)^2) over a scalar w."""
    x = np.linspace(-1, 1, n, dtype=np.float32)
    return Problem.from_functions(
        lambda key: {"w": jnp.zeros((), jnp.float32)},
        lambda params, batch: 0.5 * scale * jnp.mean(jnp.square(batch[0] * params["w"] - batch[1])),
        (x, 2 * x),
    )


def not_a_problem() -> int:
    return 42
