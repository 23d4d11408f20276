"""Implementations: is your framework's Adam the Adam you think? (issue 19)

Every optimizer that optimorph, optax and torch.optim share, each implementation run as a spec
(``torch:Adam(lr=0.001)`` steps torch.optim itself, :mod:`optimorph.optimizers.external`), judged
pair by pair at fp32, bf16 and fp16 on a small MLP. Each pair is something users assume to be
one algorithm:

* **torch vs optax**: ``torch.optim.X(lr)`` against ``optax.x(lr)``, both at their defaults;
* **match-torch spec**: torch's default against the optimorph spec that
  ``optimorph list optimizers --match torch`` prints for it (:data:`~optimorph.optimizers.
  external.MATCH_TORCH`, documented as p-equivalent at fp32 and fp64);
* **code paths**: torch's for-loop, ``foreach`` and ``fused`` Adam against each other (torch
  tests them against each other in float64 only);
* **traps**: torch ``Adam(weight_decay=)`` (coupled L2) against ``AdamW``; optax's RMSprop with
  torch's decay (eps inside the square root alone); the RAdam paper's threshold 4 against
  torch's 5.

The verdict is the noise-floor rule of :mod:`optimorph.equivalence.compare`, applied by
:func:`~optimorph.equivalence.compare.trajectory_verdict` to runs trained together (seeds paired,
``k`` noisy replicas each): p-equivalent when the median over seeds of d(t) / max(N_A, N_B,
u ||theta||) stays <= C at every evaluation after step 0, different when it does not or when
one run alone went NaN/inf, undecidable when both did (differently). It is ``compare``'s verdict
without the state maps' condition numbers (a compiled simulation per pair, ~20 s each on 2
cores: ``optimorph compare A B`` gives the full verdict). A pair found different is diagnosed
(:func:`optimorph.equivalence.diagnosis.diagnose`): the first step and state slot where the two
part, and the most likely named cause.

Each pair's finding is the user's assumption: "A is B, p-equivalent at every precision run",
judged by the rule ``d/floor <= C for every precision``, where d/floor is the verdict's ratio,
inf when one run alone diverged and NaN (open) when the verdict is undecidable; so the finding
holds exactly when every verdict is "equivalent". The findings are listed with the pairs that
are not what users assume first. Not run: torch's float32 step counter, which parts from an
integer counter only after 2^24 steps (named by the ``float32-step`` cause of ``optimorph
compare``, tested in tests/equivalence/test_diagnosis.py).

The precisions are judged in worker processes (one per core), each (precision, optimizer) cell
on its own; a finished cell is stored in ``cells/`` and not run again by ``--resume``.

>>> [f"{p.kind}: {p.b}" for p in selected(ImplementationsConfig.quick()) if p.family == "Adam"]
['torch vs optax: optax:adam(0.001)', 'code paths: torch:Adam(lr=0.001, fused=True)']
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

from optimorph.engine.parallel import map_cells
from optimorph.experiments.findings import FAILED, HELD, OPEN, at_most, finding
from optimorph.optimizers.external import MATCH_TORCH
from optimorph.results import store

__all__ = ["ImplementationsConfig", "Pair", "PAIRS", "FAMILIES", "run", "findings"]


@dataclasses.dataclass(frozen=True)
class Pair:
    """Two implementations users take for one algorithm.

    Attributes:
      family: the optimizer (``Adam``, ``RMSprop``, ...): pairs of one family train together.
      kind: ``torch vs optax``, ``match-torch spec``, ``code paths`` or ``trap``.
      a, b: the two specs.
      assumption: the assumption, in the words of the libraries (the finding's claim).
    """

    family: str
    kind: str
    a: str
    b: str
    assumption: str


def _match(torch_default: str) -> str:
    """optimorph's match-torch spec for ``torch:<torch_default>``."""
    return MATCH_TORCH[torch_default][0]


_ADAM, _ADAMW = "torch:Adam(lr=0.001)", "torch:AdamW(lr=0.001)"
_MOMENTUM = "torch:SGD(lr=0.001, momentum=0.9)"
_NESTEROV = "torch:SGD(lr=0.001, momentum=0.9, nesterov=True)"
_RMSPROP, _ADAGRAD = "torch:RMSprop(lr=0.01)", "torch:Adagrad(lr=0.01)"
_NADAM, _RADAM = "torch:NAdam(lr=0.002)", "torch:RAdam(lr=0.001)"

# torch's defaults throughout (its learning rates included), optax at the same rate.
PAIRS: tuple[Pair, ...] = (
    Pair("Adam", "torch vs optax", _ADAM, "optax:adam(0.001)",
         "optax.adam(1e-3) is torch.optim.Adam(lr=1e-3)"),
    Pair("Adam", "match-torch spec", _ADAM, _match("Adam"),
         f"optimorph's {_match('Adam')} is torch.optim.Adam(lr=1e-3)"),
    Pair("Adam", "code paths", _ADAM, "torch:Adam(lr=0.001, fused=True)",
         "torch's fused Adam is its for-loop Adam"),
    Pair("Adam", "code paths", _ADAM, "torch:Adam(lr=0.001, foreach=True)",
         "torch's foreach Adam is its for-loop Adam"),
    Pair("Adam", "code paths", "torch:Adam(lr=0.001, foreach=True)",
         "torch:Adam(lr=0.001, fused=True)", "torch's fused Adam is its foreach Adam"),
    Pair("AdamW", "torch vs optax", _ADAMW, "optax:adamw(0.001)",
         "optax.adamw(1e-3) is torch.optim.AdamW(lr=1e-3)"),
    Pair("AdamW", "match-torch spec", _ADAMW, _match("AdamW"),
         f"optimorph's {_match('AdamW')} is torch.optim.AdamW(lr=1e-3)"),
    Pair("AdamW", "trap", "torch:Adam(lr=0.001, weight_decay=0.01)", _ADAMW,
         "torch.optim.Adam(lr=1e-3, weight_decay=1e-2) is AdamW(lr=1e-3) (its default "
         "weight_decay is 1e-2)"),
    Pair("SGD momentum", "torch vs optax", _MOMENTUM, "optax:sgd(0.001, momentum=0.9)",
         "optax.sgd(1e-3, momentum=0.9) is torch.optim.SGD(lr=1e-3, momentum=0.9)"),
    Pair("SGD momentum", "match-torch spec", _MOMENTUM, _match("SGD(momentum=0.9)"),
         f"optimorph's {_match('SGD(momentum=0.9)')} is torch.optim.SGD(lr=1e-3, "
         "momentum=0.9)"),
    Pair("Nesterov", "torch vs optax", _NESTEROV,
         "optax:sgd(0.001, momentum=0.9, nesterov=True)",
         "optax.sgd(1e-3, momentum=0.9, nesterov=True) is torch.optim.SGD(lr=1e-3, "
         "momentum=0.9, nesterov=True)"),
    Pair("Nesterov", "match-torch spec", _NESTEROV, _match("SGD(momentum=0.9, nesterov=True)"),
         f"optimorph's {_match('SGD(momentum=0.9, nesterov=True)')} is torch.optim.SGD(lr=1e-3, "
         "momentum=0.9, nesterov=True)"),
    Pair("RMSprop", "torch vs optax", _RMSPROP, "optax:rmsprop(0.01)",
         "optax.rmsprop(1e-2) is torch.optim.RMSprop(lr=1e-2)"),
    Pair("RMSprop", "match-torch spec", _RMSPROP, _match("RMSprop"),
         f"optimorph's {_match('RMSprop')} is torch.optim.RMSprop(lr=1e-2)"),
    Pair("RMSprop", "trap", _RMSPROP, "optax:rmsprop(0.01, decay=0.99)",
         "optax.rmsprop(1e-2, decay=0.99), given torch's decay, is torch.optim.RMSprop(lr=1e-2)"),
    Pair("Adagrad", "torch vs optax", _ADAGRAD, "optax:adagrad(0.01)",
         "optax.adagrad(1e-2) is torch.optim.Adagrad(lr=1e-2)"),
    Pair("Adagrad", "match-torch spec", _ADAGRAD, _match("Adagrad"),
         f"optimorph's {_match('Adagrad')} is torch.optim.Adagrad(lr=1e-2)"),
    Pair("NAdam", "torch vs optax", _NADAM, "optax:nadam(0.002)",
         "optax.nadam(2e-3) is torch.optim.NAdam(lr=2e-3)"),
    Pair("RAdam", "torch vs optax", _RADAM, "optax:radam(0.001)",
         "optax.radam(1e-3) is torch.optim.RAdam(lr=1e-3)"),
    Pair("RAdam", "trap", _RADAM, "radam(lr=0.001, threshold=4)",
         "the RAdam paper's rectification threshold (4) gives torch.optim.RAdam (whose code "
         "uses 5)"),
)  # fmt: skip
FAMILIES = tuple(dict.fromkeys(p.family for p in PAIRS))


@dataclasses.dataclass(frozen=True)
class ImplementationsConfig:
    """Every setting of the recipe, fixed before any number is seen (STYLE.md item 11)."""

    problem: str = "two-moons(n=256, widths=[16], test_n=256)"  # a 2-16-2 MLP, full batch
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    families: tuple[str, ...] = FAMILIES
    kinds: tuple[str, ...] = ("torch vs optax", "match-torch spec", "code paths", "trap")
    code_paths: tuple[str, ...] = ("foreach", "fused")  # torch paths besides the for-loop
    seeds: int = 3
    steps: int = 100
    evals: int = 10  # evaluations after step 0 (where d/floor is measured)
    replicas: int = 3
    C: float = 10.0
    diagnose_steps: int = 64  # steps looked at for where a different pair parts
    workers: int | None = None  # processes (None: one per core)

    @classmethod
    def quick(cls) -> ImplementationsConfig:
        """Adam, AdamW, RMSprop and Adagrad, torch against optax, the traps and torch's fused
        Adam against its for-loop (on CPU foreach is the for-loop bit for bit), at fp32 and
        bf16; 2 seeds of 30 steps with 2 replicas. The time is compilation: each
        implementation is a program of its own (about 9 s of CPU each, 22 of them)."""
        return cls(
            precisions=("fp32", "bf16"),
            families=("Adam", "AdamW", "RMSprop", "Adagrad"),
            kinds=("torch vs optax", "trap", "code paths"),
            code_paths=("fused",),
            seeds=2,
            steps=30,
            evals=5,
            replicas=2,
            diagnose_steps=16,
        )


def selected(config: ImplementationsConfig) -> list[Pair]:
    """The pairs of the config's families and kinds (code-path pairs: between the for-loop
    and the config's ``code_paths``), in the order of :data:`PAIRS`."""
    kinds = tuple(dict.fromkeys(p.kind for p in PAIRS))
    for what, given, valid in (("families", config.families, FAMILIES),
                               ("kinds", config.kinds, kinds),
                               ("code_paths", config.code_paths, ("foreach", "fused"))):
        unknown = sorted(set(given) - set(valid))
        if unknown:
            raise ValueError(f"implementations: unknown {what} {unknown}; valid: {list(valid)}")
    if config.seeds < 2:
        raise ValueError("implementations: seeds must be >= 2 (d/floor is a median over seeds)")
    paths = {"for-loop", *config.code_paths}
    return [p for p in PAIRS if p.family in config.families and p.kind in config.kinds
            and (p.kind != "code paths" or {_path(p.a), _path(p.b)} <= paths)]  # fmt: skip


def _path(spec: str) -> str:
    """torch's code path of a ``torch:Adam(...)`` spec: fused, foreach or the for-loop."""
    return "fused" if "fused=True" in spec else "foreach" if "foreach=True" in spec else "for-loop"


def run(config: ImplementationsConfig, out: Path, progress: bool = True) -> list[dict]:
    """Judge every selected pair at every precision, store ``table_verdicts.json`` (one row per
    pair and precision; each cell's rows, with the diagnoses' per-slot distances, under
    ``cells/``) and return the findings."""
    from optimorph.precision import require_x64

    require_x64("the implementations recipe (noise floors)")
    pairs = selected(config)
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    cells, done = [], {}
    for precision in config.precisions:
        for family in config.families:
            members = [p for p in pairs if p.family == family]
            if not members:
                continue
            name = _cell_name(precision, family)
            if (out / "cells" / f"{name}.json").exists():
                done[name] = store.read_json(out, f"cells/{name}")
            else:
                cells.append((settings, precision, family, members))
    if done and progress:
        print(f"implementations: resuming; {len(done)} cells done", file=sys.stderr)
    # Longest first: a cell's time is mostly its torch implementations (compiling and stepping).
    cells.sort(key=lambda c: -sum(s.startswith("torch:") for s in _specs(c[3])))

    def save(i: int, rows: list[dict]) -> None:
        _, precision, family, _ = cells[i]
        store.write_json(out, f"cells/{_cell_name(precision, family)}", rows)
        if progress:
            print(f"implementations: {family} at {precision} done", file=sys.stderr)

    map_cells(judge_cell, cells, workers=config.workers, on_result=save)
    rows = []
    for pair in pairs:  # the table in the order of PAIRS, each pair's precisions together
        for precision in config.precisions:
            cell = store.read_json(out, f"cells/{_cell_name(precision, pair.family)}")
            rows += [r for r in cell if (r["a"], r["b"]) == (pair.a, pair.b)]
    store.write_json(out, "table_verdicts", [_table_row(r) for r in rows])
    return findings(config, rows)


def _cell_name(precision: str, family: str) -> str:
    return f"{precision}-{family}".replace(" ", "_")


def _specs(pairs: list[Pair]) -> list[str]:
    return list(dict.fromkeys(s for p in pairs for s in (p.a, p.b)))


def judge_cell(cell: tuple) -> list[dict]:
    """One (precision, family) cell: train every implementation of the family's pairs once
    (with replicas), judge each pair, diagnose the different ones. Returns one row per pair."""
    from optimorph.equivalence.compare import measure, trajectory_verdict
    from optimorph.equivalence.diagnosis import diagnose
    from optimorph.problems import problem

    settings, precision, family, pairs = cell
    specs = _specs(pairs)
    prob = problem(settings["problem"])
    steps = settings["steps"]
    runs = measure(prob, specs, precision=precision, seeds=settings["seeds"], steps=steps,
                   eval_every=max(steps // settings["evals"], 1),
                   replicas=settings["replicas"], progress=False)  # fmt: skip
    rows = []
    for pair in pairs:
        i, j = specs.index(pair.a), specs.index(pair.b)
        v = trajectory_verdict(runs, i, runs, j, precision, settings["C"])
        row = {
            "family": family, "kind": pair.kind, "a": pair.a, "b": pair.b,
            "precision": precision, "outcome": v.outcome, "d_floor": _finite(v.distance_ratio),
            "judged": _finite(judged_ratio(v.outcome, v.by_distance, v.distance_ratio)),
            "by_distance": v.by_distance,
            "reason": v.reason + v.note, "diagnosis": None,
        }  # fmt: skip
        if v.outcome == "different":
            looked = min(steps, settings["diagnose_steps"])
            d = diagnose(pair.a, pair.b, prob, precision, steps=looked, run_steps=steps)
            row["diagnosis"] = _json(d.as_dict())
        rows.append(row)
    return rows


def judged_ratio(outcome: str, by_distance: bool, distance_ratio: float) -> float:
    """The value the findings' rule judges: d/floor when the verdict rests on it, inf when it
    is 'different' because one run alone diverged, NaN when it is undecidable."""
    if outcome == "undecidable":
        return math.nan
    if outcome == "different" and not by_distance:
        return math.inf
    return distance_ratio


def _finite(x: float) -> float | str | None:
    """JSON holds no inf or NaN: ``"inf"`` / ``"-inf"`` and None (not measured)."""
    if math.isnan(x):
        return None
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _json(x: Any) -> Any:
    """``x`` with every float made JSON (:func:`_finite`), tuples as lists."""
    if isinstance(x, dict):
        return {k: _json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json(v) for v in x]
    return _finite(float(x)) if isinstance(x, float) else x


def _number(x: float | str | None) -> float:
    return math.nan if x is None else float(x)


def _parts_at(d: dict | None) -> str:
    if not d:
        return ""
    if d["step"] is None:
        return "no slot parted in the steps looked at"
    names = d.get("slot_names")
    own = f" ({names[0]} / {names[1]})" if names and names[0] != names[1] else ""
    return f"step {d['step']}, {d['slot']}{own}"


def _table_row(r: dict) -> dict:
    """A stored row as the report's verdict table shows it."""
    d = r["diagnosis"]
    return {
        "optimizer": r["family"],
        "kind": r["kind"],
        "A": r["a"],
        "B": r["b"],
        "precision": r["precision"],
        "verdict": r["outcome"],
        "d/floor": "n/a" if r["outcome"] == "undecidable" or r["d_floor"] is None
        else r["d_floor"],
        "parts at": _parts_at(d),
        "named cause: evidence": (f"{d['cause']}: {d['evidence']}" if d["cause"]
                                  else "none matched") if d else "",
    }  # fmt: skip


def _verdict_text(r: dict) -> str:
    if r["outcome"] == "undecidable":
        return f"{r['precision']}: undecidable (both runs NaN/inf)"
    text = f"{r['precision']}: {r['outcome']}, "
    if r["outcome"] == "different" and r["judged"] == "inf" and not r.get("by_distance"):
        text += "one run alone went NaN/inf"
    else:
        text += f"d/floor {_number(r['d_floor']):.3g}"
    d = r["diagnosis"]
    if d:
        where = _parts_at(d)
        text += f", {'parts at ' if d['step'] is not None else ''}{where}, cause "
        text += f"[{d['cause'] or 'none matched'}]"
    return text


def findings(config: ImplementationsConfig, rows: list[dict]) -> list[dict]:
    """One finding per pair, the user's assumption (the rule fixed here, STYLE.md item 11),
    the pairs that are not what users assume first."""
    rule = at_most(config.C, "d/floor", each="precision")
    out = []
    for pair in selected(config):
        mine = [r for r in rows if (r["a"], r["b"]) == (pair.a, pair.b)]
        if not mine:
            continue
        names = [r["precision"] for r in mine]
        precisions = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        claim = (f"{pair.assumption}: p-equivalent at {precisions} ({pair.kind}; "
                 f"A {pair.a}, B {pair.b})")  # fmt: skip
        measured = "; ".join(_verdict_text(r) for r in mine)
        out.append(finding(claim, measured, rule.judge([_number(r["judged"]) for r in mine])))
    order = {FAILED: 0, OPEN: 1, HELD: 2}
    return sorted(out, key=lambda f: order.get(f["status"], 3))  # stable: PAIRS order within
