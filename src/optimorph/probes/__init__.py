"""Trajectory probes: pure functions of the step's values, run inside the compiled scan."""

from optimorph.probes.base import Probe, StepValues, global_norm, tree_dot, tree_sub

__all__ = ["Probe", "StepValues", "global_norm", "tree_dot", "tree_sub"]
