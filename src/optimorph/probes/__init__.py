"""Trajectory probes: pure functions of the step's values, run inside the compiled scan."""

from optimorph.probes.base import Probe, StepValues, global_norm, tree_dot, tree_sub
from optimorph.probes.builtin import replica_distance, stalled, trajectory

__all__ = [
    "Probe",
    "StepValues",
    "global_norm",
    "tree_dot",
    "tree_sub",
    "stalled",
    "replica_distance",
    "trajectory",
]
