"""Steepest descent under norms: dualizers, orthogonalizers, the modular norm."""

from optimorph.norms.dualizers import NORMS, Norm, dual_norm, dualize, norm, steepest_step
from optimorph.norms.layout import DEFAULT_LAYOUT, LAYOUTS, as_operator, fans
from optimorph.norms.orthogonalize import ORTHOGONALIZERS, orthogonalize, quality

__all__ = [
    "NORMS",
    "Norm",
    "norm",
    "dual_norm",
    "dualize",
    "steepest_step",
    "LAYOUTS",
    "DEFAULT_LAYOUT",
    "as_operator",
    "fans",
    "ORTHOGONALIZERS",
    "orthogonalize",
    "quality",
]
