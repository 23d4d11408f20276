"""optax's own optimizers, registered by wrapping (not rewriting) so they join the zoo's tools.

Their state is optax's (nested NamedTuples of a chain); the precision policy and the engine walk it
by field name like any other. The learning-rate schedule is shifted so that, as in the rest of the
zoo, the t-th update (1-based) uses eta_t.
"""

from __future__ import annotations

import optax

from optimorph.optimizers.first_order import _beta, _decay, _eps, _lr
from optimorph.optimizers.registry import HParam, register
from optimorph.schedules import Schedule


def _optax_rate(lr: Schedule):
    # optax evaluates schedules at the 0-based count of updates already made.
    return lambda count: lr(count + 1)


@register(
    "radam",
    _lr(1e-3),
    _beta("b1", 0.9),
    _beta("b2", 0.999),
    _eps(1e-8),
    HParam("threshold", 5.0, float, low=0.0, doc="rectification threshold on rho_t"),
    summary="Rectified Adam (optax.radam)",
    family="optax",
)
def radam(lr, b1, b2, eps, threshold) -> optax.GradientTransformation:
    """Rectified Adam (Liu et al. 2020), optax.radam."""
    return optax.radam(_optax_rate(lr), b1=b1, b2=b2, eps=eps, threshold=threshold)


@register(
    "nadam",
    _lr(1e-3),
    _beta("b1", 0.9),
    _beta("b2", 0.999),
    _eps(1e-8),
    summary="Adam with Nesterov momentum (optax.nadam)",
    family="optax",
)
def nadam(lr, b1, b2, eps) -> optax.GradientTransformation:
    """NAdam (Dozat 2016), optax.nadam."""
    return optax.nadam(_optax_rate(lr), b1=b1, b2=b2, eps=eps)


@register(
    "lamb",
    _lr(1e-3),
    _beta("b1", 0.9),
    _beta("b2", 0.999),
    _eps(1e-6),
    _decay(0.0),
    summary="Layer-wise adaptive moments (optax.lamb)",
    family="optax",
)
def lamb(lr, b1, b2, eps, weight_decay) -> optax.GradientTransformation:
    """LAMB (You et al. 2020), optax.lamb: Adam direction rescaled by a trust ratio per layer."""
    return optax.lamb(_optax_rate(lr), b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


@register(
    "adafactor",
    _lr(1e-2),
    HParam("decay_rate", 0.8, float, low=0.0, doc="second-moment decay exponent"),
    HParam("clipping_threshold", 1.0, float, low=0.0, open_low=True, doc="update clipping"),
    HParam("eps", 1e-30, float, low=0.0, doc="regulariser of the squared gradient"),
    HParam("factored", True, bool, doc="factor the second moment of matrices"),
    HParam("multiply_by_parameter_scale", False, bool, doc="relative step size"),
    summary="Factored second moments (optax.adafactor)",
    family="optax",
)
def adafactor(
    lr, decay_rate, clipping_threshold, eps, factored, multiply_by_parameter_scale
) -> optax.GradientTransformation:
    """Adafactor (Shazeer & Stern 2018), optax.adafactor (parameter scaling off by default)."""
    return optax.adafactor(
        _optax_rate(lr),
        decay_rate=decay_rate,
        clipping_threshold=clipping_threshold,
        eps=eps,
        factored=factored,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
    )


@register(
    "adabelief",
    _lr(1e-3),
    _beta("b1", 0.9),
    _beta("b2", 0.999),
    _eps(1e-16),
    summary="Adam with the EMA of (g - m)^2 as second moment (optax.adabelief)",
    family="optax",
)
def adabelief(lr, b1, b2, eps) -> optax.GradientTransformation:
    """AdaBelief (Zhuang et al. 2020), optax.adabelief."""
    return optax.adabelief(_optax_rate(lr), b1=b1, b2=b2, eps=eps)
