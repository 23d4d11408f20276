"""Trajectory probes of the empirical-assumptions study (DESIGN definitions, docs/probes.md).

Step t moves x_t to x_{t+1} on batch z_t (0-based). With f(x, z) the minibatch loss and F the
loss on the fixed evaluation batch:

* ``gap``: inst_gap = f(x_{t+1}, z_t) - f(x_t, z_t) - <grad f(x_{t+1}, z_t), x_{t+1} - x_t>
  (<= 0 where f is convex along the step; the same batch on both sides, never two batches),
  its running mean ``avg_gap`` and exponential average ``exp_gap``;
* ``smooth``: inst_smooth = ||grad f(x_{t+1}, z_t) - grad f(x_t, z_t)|| / ||x_{t+1} - x_t||
  with one global norm, ``max_smooth``, ``exp_smooth``;
* ``corr``: the update correlation <grad f(x_t, z_t), x_t - x_{t-1}>, the loss difference
  f(x_t, z_t) - f(x_{t-1}, z_t) (one batch), with random scaling also <grad f(x_t, z_t),
  Delta_{t-1}>, and cumulative sums of all three;
* ``ratio``: the convexity ratio sum_t <grad F(x_t), x_t - x*> / sum_t [F(x_t) - F(x*)] against
  a reference point x* (default: the initial point is not a minimizer, so give one), the sums
  over every ``full_every``-th step; and at every step the gap against x*, ``ref_gap`` =
  f(x_t, z_t) - f(x*, z_t) - <grad f(x_t, z_t), x_t - x*>, with ``avg_ref_gap``/``exp_ref_gap``;
* ``noise``: cos(g_t, g_{t-1}), ||x_t||, the L1 norms of x_t and g_t every step, and every
  ``full_every``-th step ||grad F(x_t)|| and the gradient noise ||g_t - grad F(x_t)||;
* ``sharpness``: the top Hessian eigenvalue of F (Lanczos, every k steps; NaN between), and for
  Adam/AdamW the preconditioned sharpness;
* ``spectrum`` (not in ``all``): the top-k and the most negative Hessian eigenvalues of F and
  its trace with a standard error, every k steps.

``gap`` and ``smooth`` share their extra gradient: selected together they are one probe.
Quantities of F cost a gradient over the whole evaluation batch (500 examples on two moons:
16 minibatches of 32), so they are measured every ``full_every`` steps (default 10), NaN between;
the per-step probes cost at most one minibatch gradient each (``benchmarks/probes.py``).

>>> [p.name for p in make_probes("gap,smooth,corr")]
['gap+smooth', 'corr']
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from optimorph.optimizers.first_order import AdamState
from optimorph.probes.base import Probe, StepValues, global_norm, tree_dot, tree_sub
from optimorph.probes.hessian import hutchinson_trace, top_eigenvalues
from optimorph.probes.hessian import sharpness as top_eigenvalue
from optimorph.spec import SpecError

__all__ = ["PROBE_NAMES", "make_probes", "gap_smooth", "correlation", "convexity_ratio",
           "reference_gap", "gradient_noise", "sharpness_probe", "spectrum_probe"]  # fmt: skip

PROBE_NAMES = ("gap", "smooth", "corr", "ratio", "noise", "sharpness", "spectrum")
# Left out of "all" (ratio too when there is no x*): about 60 Hessian-vector products per measure.
_NOT_IN_ALL = ("spectrum",)


def _f(x: Any) -> jax.Array:
    return jnp.asarray(x, jnp.result_type(float))


def _ema(old: jax.Array, new: jax.Array, beta: float, first: jax.Array) -> jax.Array:
    return jnp.where(first, new, beta * old + (1 - beta) * new)


def _fresh(t: jax.Array, steps_per_epoch: int | None) -> jax.Array:
    """Whether running means restart at step t (the first step, or an epoch start)."""
    fresh = t == 0
    return fresh | (t % steps_per_epoch == 0) if steps_per_epoch else fresh


def _running_means(n, avg, exp, value, beta, fresh):
    """(count, running mean, exponential mean) after ``value``, restarted where ``fresh``."""
    n = jnp.where(fresh, 1.0, n + 1.0)
    avg = jnp.where(fresh, value, avg + (value - avg) / n)
    return n, avg, _ema(exp, value, beta, fresh)


@functools.cache  # one object per arguments: the trainer's programs are keyed on probe ids
def gap_smooth(
    *, gap: bool = True, smooth: bool = True, beta: float = 0.99, steps_per_epoch: int | None = None
) -> Probe:
    """Convexity gap and smoothness along each step (one extra gradient at x_{t+1} on z_t).

    Args:
      gap, smooth: which quantities to output.
      beta: the exponential averages' factor.
      steps_per_epoch: reset avg_gap and exp_gap at every epoch start (None: never).
    """
    names = []
    if gap:
        names += ["inst_gap", "avg_gap", "exp_gap"]
    if smooth:
        names += ["inst_smooth", "max_smooth", "exp_smooth"]

    def init(params):
        zero = _f(0.0)
        return {"n": zero, "avg_gap": zero, "exp_gap": zero, "max_smooth": zero, "exp_smooth": zero}

    def update(v: StepValues, s):
        new_params = jax.tree.map(lambda n, p: n.astype(p.dtype), v.new_params, v.params)
        new_loss, new_grad = jax.value_and_grad(v.loss_fn)(new_params, v.batch)
        dx = tree_sub(v.new_params, v.params)
        inst_gap = _f(new_loss) - _f(v.loss) - tree_dot(new_grad, dx)
        step_len = global_norm(dx)
        inst_smooth = jnp.where(
            step_len > 0, global_norm(tree_sub(new_grad, v.grads)) / step_len, jnp.nan
        )
        n, avg, exp = _running_means(s["n"], s["avg_gap"], s["exp_gap"], inst_gap, beta,
                                     _fresh(v.t, steps_per_epoch))  # fmt: skip
        smooth_ok = jnp.isfinite(inst_smooth)
        new = {
            "n": n,
            "avg_gap": avg,
            "exp_gap": exp,
            "max_smooth": jnp.where(smooth_ok, jnp.maximum(s["max_smooth"], inst_smooth),
                                    s["max_smooth"]),
            "exp_smooth": jnp.where(smooth_ok, _ema(s["exp_smooth"], inst_smooth, beta, v.t == 0),
                                    s["exp_smooth"]),
        }  # fmt: skip
        out = {
            "inst_gap": inst_gap,
            "avg_gap": avg,
            "exp_gap": new["exp_gap"],
            "inst_smooth": inst_smooth,
            "max_smooth": new["max_smooth"],
            "exp_smooth": new["exp_smooth"],
        }
        return new, {k: out[k] for k in names}

    name = "+".join(n for n, on in (("gap", gap), ("smooth", smooth)) if on)
    return Probe(name, init, update, outputs=tuple(names), reduce="mean")


@functools.cache  # one object per arguments: the trainer's programs are keyed on probe ids
def correlation() -> Probe:
    """Update correlation, one-batch loss difference, and along Delta_t with random scaling.

    The random-scaling correlation reads the optimizer state's ``delta`` field (the unscaled
    update of :func:`optimorph.optimizers.random_scaling.random_scaling`); without it it is NaN.
    """
    outputs = ("update_corr", "loss_diff", "rs_corr", "cum_update_corr", "cum_loss_diff",
               "cum_rs_corr")  # fmt: skip

    def init(params):
        wide = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.result_type(float)), params)
        zero = _f(0.0)
        prev = jax.tree.map(jnp.zeros_like, params)  # x_{t-1} in the compute dtype
        return {"prev": prev, "dx": wide, "delta": wide, "cum": (zero, zero, zero)}

    def update(v: StepValues, s):
        first = v.t == 0
        corr = jnp.where(first, jnp.nan, tree_dot(v.grads, s["dx"]))
        prev_loss = v.loss_fn(s["prev"], v.batch)
        diff = jnp.where(first, jnp.nan, _f(v.loss) - _f(prev_loss))
        has_delta = hasattr(v.state, "delta")
        rs = jnp.where(first, jnp.nan, tree_dot(v.grads, s["delta"])) if has_delta else _f(jnp.nan)
        cum = tuple(c + jnp.where(jnp.isnan(x), 0.0, x) for c, x in zip(s["cum"], (corr, diff, rs)))
        if not has_delta:  # no random scaling: no correlation along Delta_t at all
            cum = (*cum[:2], _f(jnp.nan))
        new = {
            "prev": v.params,
            "dx": tree_sub(v.new_params, v.params),
            "delta": jax.tree.map(_f, v.state.delta) if has_delta else s["delta"],
            "cum": cum,
        }
        values = (corr, diff, rs, *cum)
        return new, dict(zip(outputs, values, strict=True))

    return Probe("corr", init, update, outputs=outputs, reduce="nanmean")


def convexity_ratio(reference: Any, *, every: int = 1) -> Probe:
    """Running sums of <grad F(x_t), x_t - x*> and F(x_t) - F(x*) and their ratio (>= 1 if F is
    convex between the iterates and x*), F on the fixed evaluation batch.

    Args:
      reference: x*, a params pytree (e.g. the final params of an earlier run).
      every: measure every this many steps (one full-batch gradient each time).
    """
    x_star = jax.tree.map(_f, reference)

    def init(params):
        return (_f(0.0), _f(0.0))

    def update(v: StepValues, s):
        def measure(s):
            loss, grad = jax.value_and_grad(v.loss_fn)(v.params, v.eval_batch)
            ref = v.loss_fn(jax.tree.map(lambda a, b: a.astype(b.dtype), x_star, v.params),
                            v.eval_batch)  # fmt: skip
            num = s[0] + tree_dot(grad, tree_sub(v.params, x_star))
            den = s[1] + _f(loss) - _f(ref)
            return (num, den)

        s = jax.lax.cond(v.t % every == 0, measure, lambda s: s, s)
        return s, {"convexity_ratio": s[0] / s[1], "ratio_num": s[0], "ratio_den": s[1]}

    return Probe("ratio", init, update, outputs=("convexity_ratio", "ratio_num", "ratio_den"),
                 reduce="last")  # fmt: skip


def reference_gap(
    reference: Any, *, beta: float = 0.99, steps_per_epoch: int | None = None
) -> Probe:
    """The convexity gap against a reference point x* at every step,
    ref_gap = f(x_t, z_t) - f(x*, z_t) - <grad f(x_t, z_t), x_t - x*> (<= 0 where f(., z_t) is
    convex between x_t and x*), with its running mean and exponential average. Costs one
    forward pass (x* on z_t); the rest is the step's own loss and gradient.

    Args:
      reference: x*, a params pytree (e.g. the final params of an earlier run).
      beta, steps_per_epoch: as in :func:`gap_smooth`.
    """
    x_star = jax.tree.map(_f, reference)

    def init(params):
        zero = _f(0.0)
        return {"n": zero, "avg": zero, "exp": zero}

    def update(v: StepValues, s):
        star = jax.tree.map(lambda a, b: a.astype(b.dtype), x_star, v.params)
        gap = (_f(v.loss) - _f(v.loss_fn(star, v.batch))
               - tree_dot(v.grads, tree_sub(v.params, x_star)))  # fmt: skip
        n, avg, exp = _running_means(s["n"], s["avg"], s["exp"], gap, beta,
                                     _fresh(v.t, steps_per_epoch))  # fmt: skip
        return {"n": n, "avg": avg, "exp": exp}, {"ref_gap": gap, "avg_ref_gap": avg,
                                                  "exp_ref_gap": exp}  # fmt: skip

    return Probe("refgap", init, update, outputs=("ref_gap", "avg_ref_gap", "exp_ref_gap"))


@functools.cache  # one object per arguments: the trainer's programs are keyed on probe ids
def gradient_noise(*, every: int = 10) -> Probe:
    """Full-batch gradient norm and gradient noise (every ``every`` steps, NaN between), cosine of
    consecutive gradients and norms (every step)."""
    outputs = ("full_grad_norm", "grad_noise", "grad_cos", "param_norm", "param_l1", "grad_l1")

    def init(params):
        return jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.result_type(float)), params)

    def update(v: StepValues, prev):
        g = jax.tree.map(_f, v.grads)

        def full_batch():
            full = jax.grad(v.loss_fn)(v.params, v.eval_batch)
            return global_norm(full), global_norm(tree_sub(g, full))

        nan = _f(jnp.nan)
        full_norm, noise = jax.lax.cond(v.t % every == 0, full_batch, lambda: (nan, nan))
        norm_g, norm_prev = global_norm(g), global_norm(prev)
        cos = tree_dot(g, prev) / (norm_g * norm_prev)
        l1 = lambda tree: sum(jnp.sum(jnp.abs(_f(x))) for x in jax.tree.leaves(tree))  # noqa: E731
        values = (
            full_norm,
            noise,
            jnp.where(v.t == 0, jnp.nan, cos),
            global_norm(v.params),
            l1(v.params),
            l1(g),
        )
        return g, dict(zip(outputs, values, strict=True))

    return Probe("noise", init, update, outputs=outputs, reduce="nanmean")


@functools.cache  # one object per arguments: the trainer's programs are keyed on probe ids
def sharpness_probe(*, every: int = 100, lanczos_steps: int = 20) -> Probe:
    """The top eigenvalue of the Hessian of F at x_t every ``every`` steps (NaN between), with
    the learning rate of that step so reports can draw 2/lr beside it.

    For Adam and AdamW also the preconditioned sharpness (Cohen et al. 2022): the top eigenvalue
    of P^-1 H with P = (1 - b1^t) (sqrt(v_hat) + eps) from the state after the step, the
    preconditioner of the next step; its edge is (2 + 2 b1) / ((1 - b1) lr). NaN for other
    optimizers.
    """

    def init(params):
        return ()

    def update(v: StepValues, s):
        due = v.t % every == 0

        def measure():
            key = jax.random.fold_in(v.key, 1)
            plain = _f(top_eigenvalue(v.loss_fn, v.params, v.eval_batch, steps=lanczos_steps,
                                      key=key))  # fmt: skip
            preconditioner = _adam_preconditioner(v)  # here: built only on measured steps
            if preconditioner is None:
                return plain, _f(jnp.nan)
            scaled = top_eigenvalue(v.loss_fn, v.params, v.eval_batch, steps=lanczos_steps,
                                    key=key, preconditioner=preconditioner)  # fmt: skip
            return plain, _f(scaled)

        nan = _f(jnp.nan)
        value, precond = jax.lax.cond(due, measure, lambda: (nan, nan))
        lr = jnp.where(due, _f(v.lr), jnp.nan)
        return s, {"sharpness": value, "sharpness_lr": lr, "precond_sharpness": precond}

    return Probe("sharpness", init, update,
                 outputs=("sharpness", "sharpness_lr", "precond_sharpness"),
                 reduce="nanmean")  # fmt: skip


@functools.cache  # one object per arguments: the trainer's programs are keyed on probe ids
def spectrum_probe(
    *, every: int = 100, k: int = 3, lanczos_steps: int = 40, trace_samples: int = 20
) -> Probe:
    """More of the Hessian of F every ``every`` steps (NaN between): its ``k`` largest
    eigenvalues and its most negative one from one Lanczos run, and its trace (Hutchinson over
    ``trace_samples`` Rademacher vectors, with the standard error). ``optimorph hessian`` adds
    the per-layer eigenvalues and the spectral density of a saved run."""
    outputs = (*(f"eig_top{i + 1}" for i in range(k)), "eig_min", "hess_trace", "hess_trace_se")

    def init(params):
        return ()

    def update(v: StepValues, s):
        def measure():
            key = jax.random.fold_in(v.key, 2)
            top, bottom = top_eigenvalues(v.loss_fn, v.params, v.eval_batch, k=k,
                                          steps=lanczos_steps, key=key)  # fmt: skip
            trace, se = hutchinson_trace(v.loss_fn, v.params, v.eval_batch, samples=trace_samples,
                                         key=jax.random.fold_in(key, 1))  # fmt: skip
            return tuple(_f(x) for x in (*top, bottom[0], trace, se))

        nan = tuple(_f(jnp.nan) for _ in outputs)
        values = jax.lax.cond(v.t % every == 0, measure, lambda: nan)
        return s, dict(zip(outputs, values, strict=True))

    return Probe("spectrum", init, update, outputs=outputs, reduce="nanmean")


def _adam_preconditioner(v: StepValues):
    """(1 - b1^t) (sqrt(v / (1 - b2^t)) + eps) of the zoo's Adam/AdamW state (sqrt(v) + eps
    without bias correction), else None."""
    state, hp = v.state, v.hparams or {}
    if not isinstance(state, AdamState) or not {"b1", "b2", "eps"} <= set(hp):
        return None
    t = _f(state.count)
    b1, b2, eps = (_f(hp[k]) for k in ("b1", "b2", "eps"))
    if not hp.get("bias_correction", True):  # the update is m / (sqrt(v) + eps)
        return jax.tree.map(lambda second: jnp.sqrt(_f(second)) + eps, state.v)
    return jax.tree.map(
        lambda second: (1 - b1**t) * (jnp.sqrt(_f(second) / (1 - b2**t)) + eps), state.v
    )


def make_probes(
    names: str | Sequence[str],
    *,
    reference: Any = None,
    beta: float = 0.99,
    steps_per_epoch: int | None = None,
    every: int = 100,
    full_every: int = 10,
) -> list[Probe]:
    """Probes by name: ``"gap,smooth"``, ``["corr"]`` or ``"all"`` (``ratio`` needs
    ``reference`` and is left out of ``all`` without one; ``spectrum`` is never in ``all``).

    Args:
      every: sharpness and spectrum every this many steps.
      full_every: the full-batch quantities (``ratio``, ``noise``'s gradient of F) every this
        many steps.

    Raises:
      SpecError: an unknown name (the message lists the valid ones) or ``ratio`` without x*.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(dict.fromkeys(names))
    if "all" in names:
        chosen = [n for n in PROBE_NAMES if n not in _NOT_IN_ALL]
        chosen = [n for n in chosen if n != "ratio" or reference is not None]
        names = list(dict.fromkeys(chosen + [n for n in names if n != "all"]))
    unknown = [n for n in names if n not in PROBE_NAMES]
    if unknown:
        raise SpecError(
            f"unknown probe {', '.join(map(repr, unknown))}; valid: {', '.join(PROBE_NAMES)}, all"
        )
    probes = []
    if "gap" in names or "smooth" in names:
        probes.append(gap_smooth(gap="gap" in names, smooth="smooth" in names, beta=beta,
                                 steps_per_epoch=steps_per_epoch))  # fmt: skip
    if "corr" in names:
        probes.append(correlation())
    if "ratio" in names:
        if reference is None:
            raise SpecError("probe 'ratio' needs a reference point x*: --probe-reference RUN_DIR")
        probes.append(convexity_ratio(reference, every=full_every))
        probes.append(reference_gap(reference, beta=beta, steps_per_epoch=steps_per_epoch))
    if "noise" in names:
        probes.append(gradient_noise(every=full_every))
    if "sharpness" in names:
        probes.append(sharpness_probe(every=every))
    if "spectrum" in names:
        probes.append(spectrum_probe(every=every))
    return probes
