"""Sweep files: a TOML grid of problems x precisions x optimizer points x seeds, checked on load.

```toml
problems = ["two-moons(n=200)"]          # problem specs, as for optimorph train --problem
precisions = ["fp32", "bf16,v=fp32"]     # precision policies (default ["fp32"])
seeds = 3                                # seeds 0..2, or a list such as [0, 5, 7]

[settings]                               # the same for every cell
steps = 200                              # required
batch_size = 32                          # omitted: the full batch
eval_every = 50                          # omitted: about 20 evaluations
max_lanes = 64                           # the most cells one compiled program runs

[[optimizers]]
spec = "sgd"                             # an optimizer spec; it may hold fixed values and grids
lr = [0.01, 0.1]                         # an axis: a list of values ...

[[optimizers]]
spec = "adam(eps=1e-8)"
lr = { log = [1e-4, 1e-2], n = 3 }       # ... or a range: log- (or lin-) spaced, n points
b2 = { log = [1e-3, 1e-1], n = 3, one_minus_beta = true }   # b2 = 1 - x: 0.999, 0.99, 0.9
b1 = 0.9                                 # a fixed value

[statistics]                             # optional: the report's paired comparisons
reference = "fp32"                       # each precision against fp32 (against = "precision")
```

``optimizers`` may also list plain spec strings (``"sgd(lr=[0.01, 0.1])"``, with the grid syntax
of :mod:`optimorph.optimizers.grid`). A string value of a hyperparameter is read as a spec value
(``lr = "power_law(0.1, tau=5e4)"``). Every name and value goes through the registries and parsers
``train`` uses, before any cell runs; a mistake is one :class:`SweepFileError`,
``FILE:LINE: what is wrong; the fix``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optimorph.sweeps.cells import Batch, Cell, batches, identity
from optimorph.sweeps.lines import key_lines, line_of

__all__ = ["Sweep", "SweepFileError", "load", "loads"]

TOP_KEYS = ("name", "problems", "precisions", "seeds", "settings", "optimizers", "statistics")
SETTINGS = {  # name: (required, default)
    "steps": (True, None),
    "batch_size": (False, None),
    "eval_every": (False, None),
    "log_every": (False, 1),
    "divergence_factor": (False, 1e4),
    "max_lanes": (False, 64),
}
AXIS_KEYS = ("values", "log", "lin", "n", "one_minus_beta")
STATISTICS = {  # name: default (reference has none: it is required)
    "against": "precision",
    "reference": None,
    "metric": None,
    "margin": 0.05,
    "alpha": 0.05,
}
MAX_CELLS = 100_000


class SweepFileError(ValueError):
    """A sweep file is malformed; the message starts with ``FILE:LINE:`` and names the fix."""


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A checked sweep: its cells in file order and the batches that run them.

    Attributes:
      path: the file it was read from.
      text: the file's text (kept with the results).
      name: the sweep's ``name`` (default: the file's stem).
      cells: every cell, in the order problems x precisions x optimizer points x seeds.
      batches: the compiled programs, costliest first (:func:`optimorph.sweeps.cells.batches`).
      statistics: the statistics plan of the file's ``[statistics]`` (None without one):
        ``against`` (``precision`` or ``optimizer``), ``reference`` (that axis's value the
        others are compared with, canonical), ``metric`` (a ``cells`` column, None: the ranking
        rule's metric), ``margin`` (TOST, relative to the larger mean) and ``alpha``.
      params: each problem's parameter count (for the disk-space check before a run).
    """

    path: str
    text: str
    name: str
    cells: tuple[Cell, ...]
    batches: tuple[Batch, ...]
    statistics: Mapping[str, Any] | None = None
    params: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @functools.cached_property
    def id(self) -> str:
        """Identifies the sweep's cells and their batches (a store holds one sweep)."""
        return identity({"batches": [b.id for b in self.batches]}, salt="sweep")

    def document(self) -> dict[str, Any]:
        """What the store's ``config.json`` records."""
        batch_of = {c: b.id for b in self.batches for c in b.cell_ids}
        return {
            "sweep_id": self.id,
            "name": self.name,
            "file": self.path,
            "cells": [
                # optimizer: the point with every value spelled out; label: as the file gives it
                {"id": c.id, "batch": batch_of[c.id], **c.config(), "label": c.optimizer}
                for c in self.cells
            ],
            "batches": [
                {"id": b.id, "problem": b.problem, "precision": b.precision,
                 "optimizers": list(b.optimizers), "seeds": list(b.seeds),
                 "cells": [list(row) for row in b.cells]}
                for b in self.batches
            ],  # fmt: skip
            "statistics": None if self.statistics is None else dict(self.statistics),
        }


def load(path: str | os.PathLike) -> Sweep:
    """Read and check a sweep file (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        message = f"{path}: no such file; give the path of a sweep file (TOML)"
        raise SweepFileError(message) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SweepFileError(f"{path}: cannot read it ({err})") from None
    return loads(text, str(path))


def loads(text: str, path: str = "<sweep>") -> Sweep:
    """Check the sweep file ``text`` (``path`` names it in messages) and plan its cells."""
    return _Reader(text, path).sweep()


class _Reader:
    def __init__(self, text: str, path: str):
        self.text, self.path = text, path
        try:
            self.doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            message = str(err)
            line = getattr(err, "lineno", None)
            if line is None and "(at line " in message:
                line = int(message.rsplit("(at line ", 1)[1].split(",")[0].rstrip(")"))
            message = message.split(" (at line ")[0]
            raise SweepFileError(
                f"{path}:{line or 1}: not valid TOML: {message}; see https://toml.io for the syntax"
            ) from None
        self.lines = key_lines(text)

    def fail(self, where: tuple, message: str) -> SweepFileError:
        line = line_of(self.lines, where) or 1
        return SweepFileError(f"{self.path}:{line}: {message}")

    # ---------------------------------------------------------------- the file, top down

    def sweep(self) -> Sweep:
        import jax

        from optimorph.engine.step import check_policy

        doc = self.doc
        for key in doc:
            if key not in TOP_KEYS:
                raise self.fail((key,), f"unknown key {key!r}; a sweep file has "
                                        f"{', '.join(TOP_KEYS)}")  # fmt: skip
        for key in ("problems", "optimizers"):
            if key not in doc:
                raise SweepFileError(f"{self.path}:1: {key} is missing; add e.g. "
                                     f"{_EXAMPLES[key]}")  # fmt: skip
        name = doc.get("name", Path(self.path).stem)
        if not isinstance(name, str):
            raise self.fail(("name",), "name must be a string")
        problems = self.problems()
        precisions = self.precisions()
        seeds = self.seeds()
        settings, max_lanes = self.settings(problems)
        points = self.optimizers()

        x64 = bool(jax.config.jax_enable_x64)
        cells, seen, program_of = [], {}, {}
        for prob in problems.values():
            for (policy_text, p_where), policy in precisions.items():
                checked: set = set()
                for spec, o_where in points:
                    key = spec.static_key()
                    program_of[spec.canonical] = key
                    if repr(key) not in checked:  # the state's slots, once per program
                        checked.add(repr(key))
                        try:
                            check_policy(policy, spec, prob.init)
                        except ValueError as err:
                            line = line_of(self.lines, o_where)
                            message = f"{err} (with optimizer {spec.text}, line {line})"
                            raise self.fail(p_where, message) from None
                    for seed in seeds:
                        cell = Cell(prob.name, spec.text, spec.canonical, str(policy), seed,
                                    settings[prob.name], x64)  # fmt: skip
                        if cell.id in seen:
                            raise self.fail(o_where, (
                                f"{spec.text} is the same cell as {seen[cell.id][0]} (line "
                                f"{line_of(self.lines, seen[cell.id][1])}): both are "
                                f"{spec.canonical}; remove one"))  # fmt: skip
                        seen[cell.id] = (spec.text, o_where)
                        cells.append(cell)
        if not cells:
            raise SweepFileError(f"{self.path}:1: the sweep has no cells")
        if len(cells) > MAX_CELLS:
            raise SweepFileError(f"{self.path}:1: {len(cells)} cells; at most {MAX_CELLS} per "
                                 "sweep file (split it)")  # fmt: skip
        from optimorph.problems.models import n_params  # JAX: only once a file is loaded

        params = {name: n_params(prob.init) for name, prob in problems.items()}
        work = {name: float(settings[name]["batch_size"] * max(params[name], 1))
                for name in problems}  # fmt: skip
        planned = batches(cells, program_of, max_lanes=max_lanes, work_per_step=work)
        plan = self.statistics(problems, precisions, points)
        return Sweep(self.path, self.text, name, tuple(cells), tuple(planned), plan, params)

    def problems(self) -> dict[str, Any]:
        from optimorph.problems import DatasetNotFound, problem

        out: dict[str, Any] = {}
        for value, where in self.strings("problems"):
            try:
                prob = problem(value)
            except (ValueError, DatasetNotFound) as err:
                raise self.fail(where, f"problem {value!r}: {err}") from None
            if prob.name in out:
                raise self.fail(where, f"problem {value!r} is listed twice (as {prob.name}); "
                                       "remove one")  # fmt: skip
            out[prob.name] = prob
        return out

    def precisions(self) -> dict[tuple[str, tuple], Any]:
        from optimorph.precision import precision

        if "precisions" not in self.doc:
            return {("fp32", ("precisions",)): precision("fp32")}
        out, canonical = {}, {}
        for value, where in self.strings("precisions"):
            try:
                policy = precision(value)
            except (ValueError, RuntimeError) as err:
                raise self.fail(where, f"precision {value!r}: {err}") from None
            if str(policy) in canonical:
                raise self.fail(where, f"precision {value!r} is listed twice (as {policy}); "
                                       "remove one")  # fmt: skip
            canonical[str(policy)] = value
            out[value, where] = policy
        return out

    def seeds(self) -> list[int]:
        value = self.doc.get("seeds", 1)
        where = ("seeds",)
        fix = "write seeds = N (seeds 0..N-1) or a list of integers, e.g. seeds = [0, 5, 7]"
        if isinstance(value, bool):
            raise self.fail(where, f"seeds = {value!r}: {fix}")
        if isinstance(value, int):
            if value < 1:
                raise self.fail(where, f"seeds = {value}: give at least one seed; {fix}")
            return list(range(value))
        if not isinstance(value, list) or not value:
            raise self.fail(where, f"seeds = {value!r}: {fix}")
        out = []
        for i, s in enumerate(value):
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32:
                raise self.fail((*where, i), f"seed {s!r} must be an integer in 0..2^32-1")
            if s in out:
                raise self.fail((*where, i), f"seed {s} is listed twice; remove one")
            out.append(s)
        return out

    def statistics(self, problems: Mapping[str, Any], precisions: Mapping, points: list
                   ) -> dict[str, Any] | None:  # fmt: skip
        """The ``[statistics]`` plan, checked against the file's precisions, points, problems."""
        from optimorph.optimizers import resolve

        if "statistics" not in self.doc:
            return None
        table, where = self.doc["statistics"], ("statistics",)
        example = '[statistics] with against = "precision", reference = "fp32"'
        if not isinstance(table, dict):
            raise self.fail(where, f"statistics must be a table: {example}")
        for key in table:
            if key not in STATISTICS:
                raise self.fail((*where, key), f"unknown statistics key {key!r}; valid: "
                                               f"{', '.join(STATISTICS)}")  # fmt: skip
        plan = {**STATISTICS, **table}
        against = plan["against"]
        if against not in ("precision", "optimizer"):
            raise self.fail((*where, "against"), f"against = {against!r}: compare cells that "
                            "differ in precision or in optimizer: against = \"precision\" or "
                            "\"optimizer\"")  # fmt: skip
        if not isinstance(plan["reference"], str):
            example = '"fp32"' if against == "precision" else '"sgd(lr=0.1)"'
            raise self.fail(where, f"statistics: reference is missing; add the {against} "
                                   f"the others are compared with, e.g. reference = {example}")
        ref_where = (*where, "reference")
        if against == "precision":
            names = {str(policy): text for (text, _), policy in precisions.items()}
            canonical = next((c for c, text in names.items() if plan["reference"] in (c, text)),
                             None)  # fmt: skip
            if canonical is None:
                raise self.fail(ref_where, f"reference = {plan['reference']!r} is not among the "
                                           f"precisions: {', '.join(names.values())}")  # fmt: skip
        else:
            try:
                canonical = resolve(plan["reference"]).canonical
            except ValueError as err:
                raise self.fail(ref_where, f"reference = {plan['reference']!r}: {err}") from None
            if canonical not in {spec.canonical for spec, _ in points}:
                raise self.fail(ref_where, f"reference = {plan['reference']!r} is not one of "
                                           "the optimizer points; give one as the file lists "
                                           "it")  # fmt: skip
        plan["reference"] = canonical
        metric = plan["metric"]
        splits = {"train_step", "train", *(n for prob in problems.values() for n in prob.evals)}
        if metric is not None and (not isinstance(metric, str)
                                   or not any(metric.startswith(f"{s}_") for s in splits)):
            held = next(s for s in ("validation", "test", "train") if s in splits)
            raise self.fail((*where, "metric"), f"metric = {metric!r}: give a final number of "
                            f"each cell, a split and a metric: {', '.join(sorted(splits))} then "
                            f"_loss or _accuracy, e.g. metric = \"{held}_loss\" (omitted: the "
                            "ranking rule's)")  # fmt: skip
        for key, low, high in (("margin", 0.0, math.inf), ("alpha", 0.0, 0.5)):
            value = plan[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not low < value < high:
                raise self.fail((*where, key), f"{key} = {value!r} must be a number in "
                                               f"({low:g}, {high:g})")  # fmt: skip
            plan[key] = float(value)
        return plan

    def settings(self, problems: Mapping[str, Any]) -> tuple[dict[str, dict], int]:
        from optimorph.engine.trainer import TrainingError, resolve_settings

        table = self.doc.get("settings", {})
        where = ("settings",)
        if not isinstance(table, dict):
            raise self.fail(where, "settings must be a table: [settings] with steps = N, ...")
        for key in table:
            if key not in SETTINGS:
                raise self.fail((*where, key), f"unknown setting {key!r}; valid: "
                                               f"{', '.join(SETTINGS)}")  # fmt: skip
        values = {}
        for key, (required, default) in SETTINGS.items():
            if key not in table:
                if required:
                    raise self.fail(where, f"settings: {key} is missing; add e.g. {key} = 1000")
                values[key] = default
                continue
            value = table[key]
            if key == "divergence_factor":
                if value is False:  # NaN/inf only
                    value = None
                elif isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise self.fail((*where, key), f"divergence_factor = {value!r}: give a number "
                                                   "> 1, or false for NaN/inf only")  # fmt: skip
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise self.fail((*where, key), f"{key} = {value!r} must be a positive integer")
            values[key] = value
        max_lanes = values.pop("max_lanes")
        resolved = {}
        for name, prob in problems.items():
            try:
                resolved[name] = resolve_settings(prob, **values)
            except TrainingError as err:
                raise self.fail(where, f"settings on {name}: {err}") from None
        return resolved, max_lanes

    def optimizers(self) -> list[tuple[Any, tuple]]:
        """Every optimizer point as ``(resolved spec, key path)``, in file order."""
        items = self.doc["optimizers"]
        if not isinstance(items, list) or not items:
            raise self.fail(("optimizers",), f"optimizers must be a non-empty list; write "
                                             f"{_EXAMPLES['optimizers']}")  # fmt: skip
        out = []
        for i, item in enumerate(items):
            where = ("optimizers", i)
            if isinstance(item, str):
                out += [(spec, where) for spec in self.expand(item, {}, where, where)]
            elif isinstance(item, dict):
                out += [(spec, where) for spec in self.optimizer_table(item, where)]
            else:
                raise self.fail(where, "each optimizer is a spec string or a table with spec = ...")
        return out

    def optimizer_table(self, table: dict, where: tuple) -> list[Any]:
        from optimorph.optimizers import resolve
        from optimorph.optimizers.grid import expand
        from optimorph.spec import SpecError

        if not isinstance(table.get("spec"), str):
            raise self.fail(where, 'an [[optimizers]] table needs spec = "NAME(...)", e.g. '
                                   'spec = "adam(eps=1e-8)"')  # fmt: skip
        spec_where = (*where, "spec")
        try:
            first = resolve(expand(table["spec"]).members[0])
        except SpecError as err:
            raise self.fail(spec_where, str(err)) from None
        if first.entry is None and len(table) > 1:
            raise self.fail(spec_where, f"{first.text} is a user factory: give its arguments "
                                        "inside spec = \"...\"")  # fmt: skip
        names = [h.name for h in first.entry.hparams] if first.entry else []
        fixed, axes = {}, {}
        for key, value in table.items():
            if key == "spec":
                continue
            if key not in names:
                valid = "; ".join(h.describe() for h in first.entry.hparams)
                raise self.fail((*where, key), f"{first.name} has no hyperparameter {key!r}; "
                                               f"valid: {valid}")  # fmt: skip
            if isinstance(value, (list, dict)):
                axes[key] = self.axis(value, (*where, key), key)
            else:
                fixed[key] = self.spec_value(value, (*where, key), key)
        return self.expand(table["spec"], {**fixed, **axes}, spec_where, where,
                           axis_keys=set(axes))  # fmt: skip

    def expand(self, text: str, extra: dict, spec_where: tuple, where: tuple,
               axis_keys: set = frozenset()) -> list[Any]:  # fmt: skip
        """The resolved specs of a spec string (with its own grids) and the table's values."""
        from optimorph import spec as spec_lib
        from optimorph.optimizers import resolve
        from optimorph.optimizers.grid import expand
        from optimorph.spec import Call, SpecError

        try:
            members = expand(text).members
        except SpecError as err:
            raise self.fail(spec_where, str(err)) from None
        out = []
        for member in members:
            call = spec_lib.parse(member)
            kwargs = dict(call.kwargs)
            if len(call.args) == 1:  # "sgd(0.1)": the learning rate, as resolve reads it
                kwargs.setdefault("lr", call.args[0])
            elif call.args:
                raise self.fail(spec_where, f"{text}: give hyperparameters by name, "
                                            "e.g. sgd(lr=0.1)")  # fmt: skip
            twice = sorted(set(kwargs) & set(extra))
            if twice:
                raise self.fail((*where, twice[0]), f"{twice[0]} is given in spec = {text!r} and "
                                                    "as a key; give it once")  # fmt: skip
            fixed = {k: v for k, v in extra.items() if k not in axis_keys}
            for key in axis_keys:  # each value alone: an error points at its own line
                for i, value in enumerate(extra[key]):
                    try:
                        resolve(str(Call(call.name, (), {**kwargs, **fixed, key: value})))
                    except SpecError as err:
                        raise self.fail((*where, key, i), str(err)) from None
            keys = sorted(axis_keys, key=list(extra).index)
            for point in itertools.product(*(extra[k] for k in keys)):
                built = str(Call(call.name, (), {**kwargs, **fixed, **dict(zip(keys, point))}))
                try:
                    out.append(resolve(built if extra else member))
                except SpecError as err:
                    raise self.fail(spec_where if not extra else where, str(err)) from None
        return out

    def axis(self, value: Any, where: tuple, key: str) -> list:
        """The values of an axis: a list, or a table {values | log | lin, n, one_minus_beta}."""
        from optimorph.optimizers.grid import axis_values
        from optimorph.spec import Call, SpecError

        usage = (f"write {key} = [a, b, ...] or {key} = {{ log = [low, high], n = N }} "
                 "(lin for linear spacing; one_minus_beta = true for values 1 - x)")  # fmt: skip
        if isinstance(value, list):
            if not value:
                raise self.fail(where, f"{key} = []: an axis needs at least one value; {usage}")
            return [self.spec_value(v, (*where, i), key) for i, v in enumerate(value)]
        unknown = [k for k in value if k not in AXIS_KEYS]
        if unknown:
            raise self.fail((*where, unknown[0]), f"{key}: unknown key {unknown[0]!r} in a range; "
                                                  f"valid: {', '.join(AXIS_KEYS)}")  # fmt: skip
        kinds = [k for k in ("values", "log", "lin") if k in value]
        if len(kinds) != 1:
            raise self.fail(where, f"{key}: give exactly one of values, log or lin; {usage}")
        kind = kinds[0]
        flip = value.get("one_minus_beta", False)
        if not isinstance(flip, bool):
            raise self.fail((*where, "one_minus_beta"), "one_minus_beta must be true or false")
        if kind == "values":
            if "n" in value:
                raise self.fail((*where, "n"), f"{key}: n goes with log or lin, not values")
            points = self.axis(value["values"], (*where, "values"), key)
        else:
            ends, n = value[kind], value.get("n")
            if not (isinstance(ends, list) and len(ends) == 2):
                raise self.fail((*where, kind), f"{key}: {kind} = [low, high]; {usage}")
            if n is None:
                raise self.fail(where, f"{key}: a range needs n = N points; {usage}")
            call = Call("logspace" if kind == "log" else "linspace", (*ends, n))
            try:
                points = axis_values(key, call, f"{key} = {kind} {ends}, n = {n}")
            except SpecError as err:
                raise self.fail(where, str(err)) from None
        if flip:
            bad = [p for p in points if isinstance(p, bool) or not isinstance(p, (int, float))
                   or not 0 < p <= 1]  # fmt: skip
            if bad:
                raise self.fail(where, f"{key}: one_minus_beta takes gaps 1 - beta in (0, 1], "
                                       f"got {bad[0]!r}")  # fmt: skip
            # 12 significant digits: 1 - 0.001 is the double nearest 0.999, as the user wrote it.
            points = [float(f"{1 - p:.12g}") for p in points]
        return points

    def spec_value(self, value: Any, where: tuple, key: str) -> Any:
        """A TOML scalar as a hyperparameter value; a string is read as a spec value."""
        from optimorph import spec as spec_lib
        from optimorph.spec import SpecError

        if isinstance(value, str):
            try:
                return spec_lib.parse(f"_({key}={value})").kwargs[key]
            except SpecError:
                message = (f"{key} = {value!r} is not a spec value such as "
                           "'power_law(0.1, tau=5e4)' or a bare word")  # fmt: skip
                raise self.fail(where, message) from None
        if isinstance(value, (bool, int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                raise self.fail(where, f"{key} = {value!r} must be finite")
            return value
        raise self.fail(where, f"{key} = {value!r}: a hyperparameter is a number, a boolean "
                               "or a spec value in a string")  # fmt: skip

    def strings(self, key: str) -> list[tuple[str, tuple]]:
        """A key holding a string or a non-empty list of strings, each with its key path."""
        value = self.doc[key]
        if isinstance(value, str):
            return [(value, (key,))]
        if not isinstance(value, list) or not value:
            raise self.fail((key,), f"{key} must be a non-empty list of strings; write "
                                    f"{_EXAMPLES[key]}")  # fmt: skip
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail((key, i), f"{key}[{i}] = {item!r} must be a string; write "
                                          f"{_EXAMPLES[key]}")  # fmt: skip
        return [(item, (key, i)) for i, item in enumerate(value)]


_EXAMPLES = {
    "problems": 'problems = ["two-moons(n=500)"]',
    "precisions": 'precisions = ["fp32", "bf16,v=fp32"]',
    "optimizers": 'optimizers = ["sgd(lr=[0.01, 0.1])"] or an [[optimizers]] table',
}
