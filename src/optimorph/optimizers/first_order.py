"""First-order optimizers written as pure state-transition maps with flat, named state.

Every optimizer here is one optax ``GradientTransformation`` whose state is a NamedTuple with an
int32 ``count`` (saturating) and one field per buffer, named as in the update rule (DESIGN.md
section 2). A flat state is what the equivalence tools map between: ``phi`` sends an AdamState to an
RMSpropState field by field. The shared pieces (EMA, bias correction, schedule) are the small
functions at the top; each optimizer is a few lines on top of them.

Every update takes and ignores optax's extra arguments (``value=``, ``grad=``, ...): the
optimizers are ``GradientTransformationExtraArgs``, usable in loops written for optax's
line-search optimizers.

Dtypes: buffers take the parameters' dtype; hyperparameters are cast to each leaf's dtype, so a
float16 run really computes in float16. Scalars that are sensitive to rounding (the schedule and
bias corrections ``1 - b**t``) are computed in the default float dtype (float64 under x64) and cast.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimorph.optimizers.registry import SCHEDULE, HParam, register
from optimorph.schedules import Schedule

__all__ = [
    "SgdState",
    "MomentumState",
    "HeavyBallState",
    "RmspropState",
    "AdamState",
    "AdagradState",
    "SignumState",
    "LionState",
]

tmap = jax.tree.map


# ---------------------------------------------------------------- shared pieces


def _like(x: Any, leaf: jax.Array) -> jax.Array:
    """A hyperparameter in the dtype of the leaf it multiplies (no silent promotion)."""
    return jnp.asarray(x, dtype=leaf.dtype)


def _hi(x: Any) -> jax.Array:
    """A scalar in the default float dtype (float64 under x64): for schedules and corrections."""
    return jnp.asarray(x, dtype=jnp.result_type(float))


def _step(count: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The new count and t, the 1-based index of this update, in high precision."""
    count = optax.safe_int32_increment(count)
    return count, _hi(count)


def _rate(lr: Schedule, t: jax.Array) -> jax.Array:
    return _hi(lr(t))


def _ema(old: Any, new: Any, beta: Any) -> Any:
    """beta * old + (1 - beta) * new, leafwise."""
    return tmap(lambda o, n: _like(beta, o) * o + (1 - _like(beta, o)) * n, old, new)


def _abs_sq(g: jax.Array) -> jax.Array:
    """|g|^2 (g * conj(g) for complex parameters, as optax does; g * g would rotate them)."""
    return (g * jnp.conj(g)).real if jnp.iscomplexobj(g) else jnp.square(g)


def _zeros(params: Any) -> Any:
    return tmap(jnp.zeros_like, params)


def _count() -> jax.Array:
    return jnp.zeros([], jnp.int32)


def _scale(updates: Any, factor: jax.Array) -> Any:
    return tmap(lambda u: _like(factor, u) * u, updates)


def _lr(default: float) -> HParam:
    return HParam("lr", default, SCHEDULE, low=0.0, doc="rate or schedule, e.g. power_law(0.15)")


def _beta(name: str, default: float, doc: str = "") -> HParam:
    return HParam(name, default, float, low=0.0, high=1.0, open_high=True, doc=doc)


def _eps(default: float) -> HParam:
    return HParam("eps", default, float, low=0.0, doc="added to the denominator")


def _decay(default: float = 0.0) -> HParam:
    return HParam("weight_decay", default, float, low=0.0, doc="decoupled weight decay")


# ---------------------------------------------------------------- SGD and momentum


class SgdState(NamedTuple):
    count: jax.Array


@register("sgd", _lr(0.1), summary="theta -= eta_t g")
def sgd(lr: Schedule) -> optax.GradientTransformation:
    """Plain stochastic gradient descent.

    theta <- theta - eta_t g, with eta_t any schedule (power law eta0 / (1 + t/tau)**alpha, ...).

    >>> import jax.numpy as jnp
    >>> tx = sgd(Schedule("constant", {"lr0": 0.5}))
    >>> u, _ = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
    >>> float(u["w"][0])
    -1.0
    """

    def init(params):
        return SgdState(_count())

    def update(grads, state, params=None, **extra_args):
        count, t = _step(state.count)
        return _scale(grads, -_rate(lr, t)), SgdState(count)

    return optax.GradientTransformationExtraArgs(init, update)


class MomentumState(NamedTuple):
    count: jax.Array
    m: Any


class HeavyBallState(NamedTuple):
    count: jax.Array
    velocity: Any


@register(
    "momentum",
    _lr(0.1),
    _beta("beta", 0.9, "momentum coefficient"),
    HParam(
        "form",
        "pytorch",
        str,
        choices=("heavy_ball", "pytorch", "ema"),
        doc="heavy_ball: p = beta p - eta g, theta += p; pytorch: m = beta m + g, "
        "theta -= eta m; ema: m = beta m + (1-beta) g, theta -= eta/(1-beta) m",
    ),
    summary="SGD with momentum in one of three forms (heavy_ball, pytorch, ema)",
)
def momentum(lr: Schedule, beta: Any, form: str) -> optax.GradientTransformation:
    """SGD with momentum; ``form`` picks one of three conventions (DESIGN.md section 2).

    heavy_ball: p <- beta p - eta_t g;       theta <- theta + p       (state: velocity)
    pytorch:    m <- beta m + g;             theta <- theta - eta_t m (state: m)
    ema:        m <- beta m + (1 - beta) g;  theta <- theta - eta_t/(1 - beta) m (state: m)

    With a constant rate the three are one algorithm (velocity = -eta m_pytorch,
    m_ema = (1 - beta) m_pytorch) and differ only by rounding; with a schedule the heavy-ball form
    differs, because eta is folded into its buffer. Warning: the PyTorch form is torch.optim.SGD
    with dampening=0; the EMA form is optax.trace-free and needs the 1/(1-beta) rescale to match.

    >>> tx = momentum(Schedule("constant", {"lr0": 0.1}), 0.9, "ema")
    """
    if form == "heavy_ball":

        def init(params):
            return HeavyBallState(_count(), _zeros(params))

        def update(grads, state, params=None, **extra_args):
            count, t = _step(state.count)
            eta = _rate(lr, t)
            v = tmap(lambda p, g: _like(beta, p) * p - _like(eta, g) * g, state.velocity, grads)
            return v, HeavyBallState(count, v)

        return optax.GradientTransformationExtraArgs(init, update)

    def init(params):
        return MomentumState(_count(), _zeros(params))

    def update(grads, state, params=None, **extra_args):
        count, t = _step(state.count)
        eta = _rate(lr, t)
        if form == "ema":
            m = _ema(state.m, grads, beta)
            eta = eta / (1 - _hi(beta))
        else:
            m = tmap(lambda m, g: _like(beta, m) * m + g, state.m, grads)
        return _scale(m, -eta), MomentumState(count, m)

    return optax.GradientTransformationExtraArgs(init, update)


@register(
    "nesterov",
    _lr(0.1),
    _beta("beta", 0.9, "momentum coefficient"),
    summary="Nesterov momentum, PyTorch form: m = beta m + g; theta -= eta (g + beta m)",
)
def nesterov(lr: Schedule, beta: Any) -> optax.GradientTransformation:
    """Nesterov accelerated gradient in PyTorch's form (torch.optim.SGD(nesterov=True)).

    m <- beta m + g;  theta <- theta - eta_t (g + beta m).
    """

    def init(params):
        return MomentumState(_count(), _zeros(params))

    def update(grads, state, params=None, **extra_args):
        count, t = _step(state.count)
        m = tmap(lambda m, g: _like(beta, m) * m + g, state.m, grads)
        look = tmap(lambda g, m: g + _like(beta, m) * m, grads, m)
        return _scale(look, -_rate(lr, t)), MomentumState(count, m)

    return optax.GradientTransformationExtraArgs(init, update)


# ---------------------------------------------------------------- adaptive methods


class RmspropState(NamedTuple):
    count: jax.Array
    v: Any


def _denominator(v: jax.Array, eps: Any, eps_inside: bool) -> jax.Array:
    """sqrt(v) + eps (PyTorch, Adam paper) or sqrt(v + eps) (optax's rmsprop)."""
    return jnp.sqrt(v + _like(eps, v)) if eps_inside else jnp.sqrt(v) + _like(eps, v)


@register(
    "rmsprop",
    _lr(0.01),
    _beta("beta", 0.99, "EMA coefficient of squared gradients (torch: alpha)"),
    _eps(1e-8),
    HParam("eps_inside", False, bool, doc="sqrt(v + eps) (optax) instead of sqrt(v) + eps (torch)"),
    summary="v = beta v + (1-beta) g^2; theta -= eta g / (sqrt(v) + eps)",
)
def rmsprop(lr: Schedule, beta: Any, eps: Any, eps_inside: bool) -> optax.GradientTransformation:
    """RMSprop (Tieleman & Hinton 2012), PyTorch's convention by default.

    v <- beta v + (1 - beta) g^2;  theta <- theta - eta_t g / (sqrt(v) + eps).
    Warning: optax.rmsprop puts eps inside the square root (``eps_inside=True`` here).
    """

    def init(params):
        return RmspropState(_count(), _zeros(params))

    def update(grads, state, params=None, **extra_args):
        count, t = _step(state.count)
        v = _ema(state.v, tmap(_abs_sq, grads), beta)
        direction = tmap(lambda g, v: g / _denominator(v, eps, eps_inside), grads, v)
        return _scale(direction, -_rate(lr, t)), RmspropState(count, v)

    return optax.GradientTransformationExtraArgs(init, update)


class AdamState(NamedTuple):
    count: jax.Array
    m: Any
    v: Any


def _adam_direction(m, v, t, b1, b2, eps, bias_correction):
    """m_hat / (sqrt(v_hat) + eps), with the corrections 1 - b**t computed in high precision."""
    if bias_correction:
        c1, c2 = 1 - _hi(b1) ** t, 1 - _hi(b2) ** t
        m = tmap(lambda m: m / _like(c1, m), m)
        v = tmap(lambda v: v / _like(c2, v), v)
    return tmap(lambda m, v: m / (jnp.sqrt(v) + _like(eps, v)), m, v)


def _adam(lr, b1, b2, eps, bias_correction, weight_decay):
    def init(params):
        return AdamState(_count(), _zeros(params), _zeros(params))

    def update(grads, state, params=None, **extra_args):
        count, t = _step(state.count)
        m = _ema(state.m, grads, b1)
        v = _ema(state.v, tmap(_abs_sq, grads), b2)
        direction = _adam_direction(m, v, t, b1, b2, eps, bias_correction)
        if weight_decay is not None:
            if params is None:
                raise ValueError("adamw needs params in update(grads, state, params)")
            direction = tmap(lambda d, p: d + _like(weight_decay, p) * p, direction, params)
        return _scale(direction, -_rate(lr, t)), AdamState(count, m, v)

    return optax.GradientTransformationExtraArgs(init, update)


_ADAM_HPARAMS = (
    _lr(1e-3),
    _beta("b1", 0.9, "EMA coefficient of the gradient"),
    _beta("b2", 0.999, "EMA coefficient of the squared gradient"),
    _eps(1e-8),
    HParam("bias_correction", True, bool, doc="divide m, v by 1 - b**t"),
)


@register("adam", *_ADAM_HPARAMS, summary="m, v EMAs; theta -= eta m_hat / (sqrt(v_hat) + eps)")
def adam(lr, b1, b2, eps, bias_correction) -> optax.GradientTransformation:
    """Adam (Kingma & Ba 2015).

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  m_hat = m/(1-b1^t);  v_hat = v/(1-b2^t);
    theta <- theta - eta_t m_hat / (sqrt(v_hat) + eps). ``bias_correction=False`` drops the
    divisions (then b1 = b2 = 0, eps = 0 is sign descent exactly).
    """
    return _adam(lr, b1, b2, eps, bias_correction, None)


@register(
    "adamw",
    *_ADAM_HPARAMS,
    _decay(0.01),
    summary="Adam with decoupled weight decay eta * lambda * theta",
)
def adamw(lr, b1, b2, eps, bias_correction, weight_decay) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019): Adam plus decoupled decay.

    theta <- theta - eta_t (m_hat / (sqrt(v_hat) + eps) + lambda theta), as torch.optim.AdamW.
    """
    return _adam(lr, b1, b2, eps, bias_correction, weight_decay)


class AdagradState(NamedTuple):
    count: jax.Array
    sum_sq: Any


@register(
    "adagrad",
    _lr(0.01),
    _eps(1e-10),
    HParam("initial", 0.0, float, low=0.0, doc="initial value of the accumulator"),
    summary="G += g^2; theta -= eta g / (sqrt(G) + eps)",
)
def adagrad(lr, eps, initial) -> optax.GradientTransformation:
    """Adagrad (Duchi et al. 2011), PyTorch's convention (eps outside the square root).

    G <- G + g^2;  theta <- theta - eta_t g / (sqrt(G) + eps).
    """

    def init(params):
        return AdagradState(_count(), tmap(lambda p: jnp.full_like(p, initial), params))

    def update(grads, state, params=None, **extra_args):
        count, t = _step(state.count)
        acc = tmap(lambda s, g: s + _abs_sq(g), state.sum_sq, grads)
        direction = tmap(lambda g, s: g / (jnp.sqrt(s) + _like(eps, s)), grads, acc)
        return _scale(direction, -_rate(lr, t)), AdagradState(count, acc)

    return optax.GradientTransformationExtraArgs(init, update)


# ---------------------------------------------------------------- sign methods


@register("signsgd", _lr(1e-3), summary="theta -= eta sign(g)")
def signsgd(lr: Schedule) -> optax.GradientTransformation:
    """Sign descent (Bernstein et al. 2018): steepest descent under the l_inf norm.

    theta <- theta - eta_t sign(g); sign(0) = 0.
    """

    def init(params):
        return SgdState(_count())

    def update(grads, state, params=None, **extra_args):
        count, t = _step(state.count)
        return _scale(tmap(jnp.sign, grads), -_rate(lr, t)), SgdState(count)

    return optax.GradientTransformationExtraArgs(init, update)


class SignumState(NamedTuple):
    count: jax.Array
    m: Any


@register(
    "signum",
    _lr(1e-3),
    _beta("beta", 0.9, "momentum coefficient"),
    summary="m = beta m + (1-beta) g; theta -= eta sign(m)",
)
def signum(lr: Schedule, beta: Any) -> optax.GradientTransformation:
    """Signum (Bernstein et al. 2018): sign of the EMA momentum.

    m <- beta m + (1 - beta) g;  theta <- theta - eta_t sign(m).
    """

    def init(params):
        return SignumState(_count(), _zeros(params))

    def update(grads, state, params=None, **extra_args):
        count, t = _step(state.count)
        m = _ema(state.m, grads, beta)
        return _scale(tmap(jnp.sign, m), -_rate(lr, t)), SignumState(count, m)

    return optax.GradientTransformationExtraArgs(init, update)


class LionState(NamedTuple):
    count: jax.Array
    m: Any


@register(
    "lion",
    _lr(1e-4),
    _beta("b1", 0.9, "interpolation for the update direction"),
    _beta("b2", 0.99, "EMA coefficient of the momentum"),
    _decay(0.0),
    summary="theta -= eta (sign(b1 m + (1-b1) g) + lambda theta); m = b2 m + (1-b2) g",
)
def lion(lr, b1, b2, weight_decay) -> optax.GradientTransformation:
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

    c = b1 m + (1 - b1) g;  theta <- theta - eta_t (sign(c) + lambda theta);
    m <- b2 m + (1 - b2) g.
    """

    def init(params):
        return LionState(_count(), _zeros(params))

    def update(grads, state, params=None, **extra_args):
        count, t = _step(state.count)
        direction = tmap(jnp.sign, _ema(state.m, grads, b1))
        if not (isinstance(weight_decay, float) and weight_decay == 0.0):
            if params is None:
                raise ValueError(
                    "lion with weight_decay needs params in update(grads, state, params)"
                )
            direction = tmap(lambda d, p: d + _like(weight_decay, p) * p, direction, params)
        m = _ema(state.m, grads, b2)
        return _scale(direction, -_rate(lr, t)), LionState(count, m)

    return optax.GradientTransformationExtraArgs(init, update)
