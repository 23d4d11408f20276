"""Comparison, class and phase-diagram results as files, so reports redraw without training.

```
<run>/config.json        kind (compare | classes | phase-diagram), format_version, settings
<run>/equivalence.json   verdicts per precision and pair (and classes), as printed by --json
<run>/curves.npz         per (precision, pair): eval steps, d(t), both noise floors (over seeds),
                         and the parameter paths of seed 0 for the tracking animation
<run>/phase.npz          phase diagram: equivalent, ratio, stalled over bits x heterogeneity
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from optimorph.results import store

__all__ = ["write_comparison", "read_curves", "write_phase", "read_phase"]


def write_comparison(out: Path, doc: dict[str, Any], comparison: Any) -> None:
    """Store a comparison's verdicts (``doc``) and every pair's curves."""
    arrays: dict[str, np.ndarray] = {}
    index = []
    for precision, verdicts in comparison.pairs.items():
        for k, v in enumerate(verdicts):
            key = f"{len(index)}"
            index.append({"key": key, "precision": precision, "a": v.a, "b": v.b, "pair": k})
            arrays[f"{key}/t"] = np.asarray(v.eval_steps)
            arrays[f"{key}/d"] = np.asarray(v.distance)
            arrays[f"{key}/floor_a"] = np.asarray(v.floor_a)
            arrays[f"{key}/floor_b"] = np.asarray(v.floor_b)
            arrays[f"{key}/path_a"] = np.asarray(v.path_a)
            arrays[f"{key}/path_b"] = np.asarray(v.path_b)
    store.write_arrays(out, "curves", arrays)
    store.write_json(out, "equivalence", {**doc, "curves": index, "C": comparison.settings["C"]})


def read_curves(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(equivalence doc, [panel dicts with arrays])`` of a stored comparison."""
    doc = store.read_json(out, "equivalence")
    arrays = store.read_arrays(out, "curves")
    panels = []
    for entry in doc["curves"]:
        key = entry["key"]
        panels.append(
            {
                **entry,
                **{name: arrays[f"{key}/{name}"] for name in
                   ("t", "d", "floor_a", "floor_b", "path_a", "path_b")},
            }
        )  # fmt: skip
    return doc, panels


def write_phase(out: Path, doc: dict[str, Any], diagram: Any) -> None:
    """Store a phase diagram's cells (``doc``) and its arrays."""
    store.write_json(out, "phase_diagram", doc)
    store.write_arrays(
        out,
        "phase",
        {"equivalent": diagram.equivalent, "ratio": diagram.ratio, "stalled": diagram.stalled},
    )


def read_phase(out: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return store.read_json(out, "phase_diagram"), store.read_arrays(out, "phase")
