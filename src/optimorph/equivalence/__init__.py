"""Numerical equivalence of optimizers at a precision (DESIGN.md section 3)."""
