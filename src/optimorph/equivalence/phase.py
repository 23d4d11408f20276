"""Phase diagram: which pairs are p-equivalent, over mantissa bits x gradient heterogeneity.

Two problem families, both with curvatures spread over [1/h, 1] (largest about 1, so one learning
rate is stable in every cell) and started at x_i = +-1:

- ``quadratic``: the diagonal quadratic f(x) = 1/2 sum_i lambda_i x_i^2 with lambda log-spaced
  from 1/h to 1, so the gradient heterogeneity max|g_i| / min|g_i| is exactly h at the start;
- ``least-squares``: f(x) = 1/(2n) ||Z diag(s) (x - x*)||^2 with Z standard normal (n = 4 dim
  rows, drawn per seed), feature scales s_i log-spaced from h^-1/2 to 1 and x* standard normal:
  the heterogeneity of a regression whose input features have different scales, with the
  coupling between coordinates a diagonal quadratic lacks (curvatures about s_i^2, spread h).
 Each cell (mantissa bits m, heterogeneity h) runs every optimizer with k noisy replicas
for a few seeds (the training step of :mod:`optimorph.engine.step` with a traced-width
:class:`~optimorph.precision.TracedBits` policy), and applies the noise-floor rule of
:mod:`optimorph.equivalence.compare` (d(t) <= C max(N_A, N_B, u ||theta||), median over seeds).

Speed: the whole grid is ONE compiled program per optimizer. The mantissa width is a traced
number (rounding by integer bit operations on float64, exponent range of float64: an ``e11mY``
format), and heterogeneity, seeds and replicas are vmapped axes. Unlike :func:`compare`, the
phase diagram applies the distance rule only (no state-map condition numbers), and keeps the
hyperparameters at full precision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optimorph.engine import interrupts, step
from optimorph.optimizers import resolve
from optimorph.precision import TracedBits, require_x64, round_to_bits, stalled_fraction

__all__ = ["round_to_bits", "PhaseDiagram", "phase_diagram", "MANTISSA_BITS", "HETEROGENEITY",
           "FAMILIES"]

MANTISSA_BITS = (4, 5, 7, 8, 10, 12, 16, 20, 23, 30, 40, 52)  # bf16 = 7, fp16 = 10, fp32 = 23
FAMILIES = ("quadratic", "least-squares")
HETEROGENEITY = tuple(float(h) for h in np.logspace(0, 4, 8))


@dataclasses.dataclass
class PhaseDiagram:
    """``equivalent[pair, bits, hetero]`` with the ratios that decided each cell."""

    pairs: list[tuple[str, str]]
    mantissa_bits: list[int]
    heterogeneity: list[float]
    equivalent: np.ndarray  # bool [P, M, H]
    ratio: np.ndarray  # [P, M, H] max over t of the median over seeds of d / floor
    stalled: np.ndarray  # [O, M, H] mean fraction of absorbed updates, per optimizer
    optimizers: list[str]
    settings: dict

    def table(self) -> list[dict]:
        """One row per (pair, bits, heterogeneity) cell."""
        rows = []
        for p, (a, b) in enumerate(self.pairs):
            for m, bits in enumerate(self.mantissa_bits):
                for h, het in enumerate(self.heterogeneity):
                    rows.append(
                        {
                            "a": a,
                            "b": b,
                            "mantissa_bits": bits,
                            "heterogeneity": het,
                            "equivalent": bool(self.equivalent[p, m, h]),
                            "ratio": float(self.ratio[p, m, h]),
                        }
                    )
        return rows


def phase_diagram(
    pairs: Sequence[tuple[str, str]],
    *,
    mantissa_bits: Sequence[int] = MANTISSA_BITS,
    heterogeneity: Sequence[float] = HETEROGENEITY,
    dim: int = 32,
    steps: int = 200,
    evals: int = 10,
    seeds: int = 3,
    replicas: int = 4,
    C: float = 10.0,
    family: str = "quadratic",
    done: dict | None = None,
    on_optimizer=None,
) -> PhaseDiagram:
    """Measure which pairs are equivalent in each (mantissa bits, heterogeneity) cell.

    Args:
      pairs: ``(A, B)`` optimizer specs.
      mantissa_bits: explicit mantissa bits of the emulated formats (exponent range of float64).
      heterogeneity: the spread h of the curvatures (each >= 1; the diagonal quadratic's
        gradient heterogeneity at the start).
      dim, steps, evals: problem size, updates and evaluations per run (steps % evals == 0).
      seeds, replicas: paired seeds (random signs of x0 and noise) and noise replicas.
      C: the noise-floor constant.
      family: ``"quadratic"`` or ``"least-squares"`` (module docstring).
      done: ``{optimizer: (trajectories, stalled)}`` already computed (a resumed run).
      on_optimizer: called as ``on_optimizer(name, trajectories, stalled)`` after each
        optimizer's grid (to checkpoint it).

    >>> import jax; jax.config.update("jax_enable_x64", True)
    >>> pd = phase_diagram([("sgd(lr=0.01)", "signsgd(lr=0.01)")], mantissa_bits=[10, 52],
    ...                    heterogeneity=[1.0, 1e3], steps=40, evals=4, seeds=2)
    >>> pd.equivalent.shape
    (1, 2, 2)
    """
    require_x64("the phase diagram (emulated formats)")
    if steps % evals:
        raise ValueError(f"evals={evals} must divide steps={steps}")
    if family not in FAMILIES:
        raise ValueError(f"unknown problem family {family!r}; valid: {', '.join(FAMILIES)}")
    if min(heterogeneity) < 1 or not 1 <= min(mantissa_bits) <= max(mantissa_bits) <= 52:
        raise ValueError("heterogeneity values must be >= 1 (max|g| / min|g|) and mantissa "
                         f"bits in 1..52; got {list(heterogeneity)} and {list(mantissa_bits)}")
    names = list(dict.fromkeys(s for pair in pairs for s in pair))
    bits = jnp.asarray(mantissa_bits, jnp.int32)
    het = jnp.asarray(heterogeneity, jnp.float64)
    traj, stalled = {}, {}
    with interrupts.deferred():  # Ctrl-C takes effect after an optimizer's grid is saved
        for name in names:
            if done and name in done:
                traj[name], stalled[name] = done[name]
                continue
            t, s = _run_grid(name, bits, het, dim, steps, evals, seeds, replicas, family)
            traj[name], stalled[name] = np.asarray(t), np.asarray(s)  # [M, H, S, R, E, D], [M, H]
            if on_optimizer is not None:
                on_optimizer(name, traj[name], stalled[name])
            interrupts.raise_if_requested()
    u = 2.0 ** -(np.asarray(mantissa_bits, float) + 1)
    equivalent = np.zeros((len(pairs), len(mantissa_bits), len(heterogeneity)), bool)
    ratio = np.zeros(equivalent.shape)
    for p, (a, b) in enumerate(pairs):
        ta, tb = traj[a], traj[b]
        d = np.linalg.norm(ta[:, :, :, 0] - tb[:, :, :, 0], axis=-1)  # [M, H, S, E]
        floor_a = np.median(np.linalg.norm(ta[:, :, :, 1:] - ta[:, :, :, :1], axis=-1), axis=3)
        floor_b = np.median(np.linalg.norm(tb[:, :, :, 1:] - tb[:, :, :, :1], axis=-1), axis=3)
        scale = u[:, None, None, None] * np.linalg.norm(ta[:, :, :, 0], axis=-1)
        floor = np.maximum.reduce([floor_a, floor_b, scale])
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(d == 0, 0.0, d / floor)
        r = np.where(np.isnan(r), np.inf, r)  # NaN in one run only is a difference
        med = np.median(r, axis=2).max(axis=-1)  # [M, H]
        ratio[p] = med
        equivalent[p] = med <= C
    return PhaseDiagram(
        pairs=[(a, b) for a, b in pairs],
        mantissa_bits=[int(b) for b in mantissa_bits],
        heterogeneity=[float(h) for h in heterogeneity],
        equivalent=equivalent,
        ratio=ratio,
        stalled=np.stack([stalled[n] for n in names]),
        optimizers=names,
        settings={
            "dim": dim,
            "steps": steps,
            "evals": evals,
            "seeds": seeds,
            "replicas": replicas,
            "C": C,
            "family": family,
            "exponent_bits": 11,
        },
    )


def _run_grid(spec, bits, het, dim, steps, evals, seeds, replicas, family="quadratic"):
    """[M, H, S, R, E, D] parameter trajectories and [M, H] stagnation of one optimizer.

    Each lane is the training step of :mod:`optimorph.engine.step` on the diagonal quadratic,
    with a :class:`~optimorph.precision.TracedBits` policy; replica 0 is noise-free.
    """
    tx = resolve(spec).build()
    n_rep = 1 + replicas

    def lane(m, h, seed, rep):
        policy = TracedBits(m)
        lam = jnp.logspace(-jnp.log10(h), 0.0, dim)
        key = jax.random.key(seed)
        # least squares: features of scales sqrt(lam), 4 dim rows, a random optimum x*
        z = jax.random.normal(jax.random.fold_in(key, 2), (4 * dim, dim)) * jnp.sqrt(lam)[None, :]
        x_star = jax.random.normal(jax.random.fold_in(key, 3), (dim,))
        x0 = jnp.where(jax.random.bernoulli(jax.random.fold_in(key, 0), 0.5, (dim,)), 1.0, -1.0)
        scale = jnp.where(rep == 0, 0.0, policy.unit_roundoff)
        noise_key = jax.random.fold_in(jax.random.fold_in(key, 1), rep)
        noise_seed = jax.random.bits(noise_key, (), jnp.uint32)
        noise = step.Noise(noise_seed, scale)

        def loss(params, batch):
            if family == "least-squares":
                r = z @ (params["x"] - x_star)
                return 0.5 * jnp.mean(r * r)
            return 0.5 * jnp.sum(lam * params["x"] ** 2)

        def one(carry, t):
            params, state = carry
            _, g, _ = step.gradient(loss, policy, params, ())
            new = step.apply_update(tx, policy, params, state, None, g, t=t, noise=noise)
            absorbed = stalled_fraction(params, new.updates, new.params)
            return (new.params, new.state), absorbed

        def block(carry, i):
            ts = i * (steps // evals) + jnp.arange(steps // evals)
            carry, absorbed = jax.lax.scan(one, carry, ts)
            return carry, (carry[0]["x"], absorbed.mean())

        params = policy.cast_params({"x": x0})
        state = policy.round_state(tx.init(params))
        _, (xs, absorbed) = jax.lax.scan(block, (params, state), jnp.arange(evals))
        return jnp.concatenate([params["x"][None], xs]), absorbed.mean()

    f = lane
    for axis in range(4):  # vmap over replica, seed, heterogeneity, bits (innermost first)
        f = jax.vmap(f, in_axes=tuple(0 if a == 3 - axis else None for a in range(4)))
    traj, absorbed = jax.jit(f)(bits, het, jnp.arange(seeds), jnp.arange(n_rep))
    return traj, absorbed[:, :, :, 0].mean(axis=-1)  # replica 0, mean over seeds
