"""Is A the same algorithm as B at precision p? The noise-floor rule of DESIGN.md section 3.

For each precision every optimizer is trained once (seeds paired: same initialisation and
batches) together with k noisy replicas of itself, whose spread is its rounding noise floor
N(t). A pair (A, B) is **p-equivalent** when

    d(t) = ||theta_A(t) - theta_B(t)|| <= C * max(N_A(t), N_B(t), u_p ||theta_A(t)||)

at every evaluation t <= T (C = 10 by default), and the state maps between them have bounded
condition numbers (kappa <= ``kappa_max``). Choices added to the definition (all arguments):
- over seeds, the rule is applied to the median over seeds of the ratio at each t, so one
  unlucky seed does not decide; ``ratio_per_seed`` keeps every seed's maximum;
- t = 0 is skipped (d = 0 = floor there);
- a run whose parameters went NaN/inf where the other's did not is a difference, reported with
  its first step; both went NaN/inf is undecidable (not equivalent), unless the trajectories are
  bit-identical, NaN included, over at least one finite evaluation after step 0 (equivalent: the
  same computation, broken the same way at the same step). Two runs broken before any finite
  evaluation carry no evidence, even an optimizer against itself: undecidable, each cause named
  (NaN/inf at step k, or a loss blow-up above ``divergence_factor`` x the first loss);
- a verdict reached while both optimizers had most of their updates absorbed by rounding
  (stagnation > ``stall_limit``) is flagged ``stalled``: collapse by stalling is not evidence
  that the algorithms are the same;
- a verdict the distance decided although some seeds' own maxima of d/floor lie on the other
  side of C is **seed-split** (:func:`seed_split`): it stands, but ``classes`` also gives the
  range of class counts had those verdicts gone the other way, since such a verdict can move
  with the last bits of a run (two CPUs gave the medium proposal16 MLP 5 and 7 classes at fp16
  from two pairs at d/floor 9.3 and 9.5);
- trajectories within the floor whose final metric differs beyond doubt and beyond the margin
  (paired t-test p < 0.05 and |mean difference| > the TOST margin: :func:`outcome_differs`) are
  **different**: where training is chaotic at p (Adam at bf16 on a small network), the floor
  can grow wide enough to hold a systematically worse run, and the verdict must not say
  "equivalent" of two runs whose losses clearly differ.
Final performance is compared with a paired t-test and a TOST equivalence test whose margin is
stated up front (``margin``, a fraction of max(|mean A|, |mean B|) of the final metric, or
absolute with ``margin_relative=False``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from optimorph import stats
from optimorph.engine import step as step_lib
from optimorph.engine import train
from optimorph.engine.parallel import default_workers, map_cells
from optimorph.engine.progress import Progress
from optimorph.equivalence import defect as defect_lib
from optimorph.equivalence import diagnosis
from optimorph.equivalence import theory
from optimorph.optimizers import resolve
from optimorph.precision import precision as make_precision
from optimorph.precision import require_x64
from optimorph.problems import Problem
from optimorph.problems import problem as make_problem
from optimorph.timing import Phases

__all__ = [
    "PairVerdict",
    "Comparison",
    "TrajectoryVerdict",
    "measure",
    "compare",
    "trajectory_verdict",
    "floor_ratio",
    "FloorRatio",
    "outcome_differs",
    "seed_split",
    "DEFAULTS",
]

DEFAULTS = {
    "C": 10.0,  # DESIGN.md section 3
    "replicas": 4,  # k noisy replicas per run
    "kappa_max": 1e4,  # bound on kappa(phi), kappa(psi)
    "margin": 0.05,  # TOST margin on the final metric: a fraction of max(|mean A|, |mean B|)
    "margin_relative": True,  # False: "margin" is absolute, in the metric's units
    "stall_limit": 0.5,  # mean fraction of absorbed updates above which a run counts as stalled
    "visits": 20,  # visited states per run for defects, intrinsic errors and theory checks
}


@dataclasses.dataclass
class PairVerdict:
    """Everything measured about one pair at one precision, and the verdict with its reasons."""

    a: str
    b: str
    precision: str
    equivalent: bool
    reason: str
    distance_ratio: float
    ratio_per_seed: list[float]
    growth_exponent: float
    defect_ab: float
    defect_ba: float
    defect_ab_median: float
    defect_ba_median: float
    kappa_phi: float
    kappa_psi: float
    map: str
    map_residual: float | None
    stalled: bool
    stalled_a: float
    stalled_b: float
    first_nan_a: int | None
    first_nan_b: int | None
    intrinsic_error_a: float
    intrinsic_error_b: float
    p_value: float
    tost_p_value: float
    tost_margin: float
    final_metric: str
    theory: dict
    decided: bool = True  # False: both diverged with nothing to compare (undecidable)
    # How each run diverged by the engine's rule, over seeds ("NaN/inf at step 1 in 3 of 3
    # seeds", "diverged at step 12 (loss above 1e4 x its first value) ..."); None: it did not.
    diverged_a: str | None = None
    diverged_b: str | None = None
    # Why p_value / tost_p_value are NaN (one seed, a non-finite final value); empty otherwise.
    tests_note: str = ""
    # Paired difference of the final metric over seeds, mean(A - B) and its 95% CI (NaN when a
    # seed diverged or there is one seed).
    final_diff: float = math.nan
    final_diff_ci: tuple[float, float] = (math.nan, math.nan)
    # Where the distance decided the verdict: how many seeds' own maximum d/floor lie on the
    # other side of C, and the verdict the pair would get if they had decided (None: every seed
    # agrees, or the distance did not decide). See :func:`seed_split`.
    seeds_against: int = 0
    alternative: bool | None = None
    # Curves for figures: [S, E] arrays over evaluation steps.
    eval_steps: np.ndarray = dataclasses.field(repr=False, default=None)
    distance: np.ndarray = dataclasses.field(repr=False, default=None)
    floor_a: np.ndarray = dataclasses.field(repr=False, default=None)
    floor_b: np.ndarray = dataclasses.field(repr=False, default=None)
    # Seed 0's parameter trajectories [E, P] (state maps act as the identity on parameters).
    path_a: np.ndarray = dataclasses.field(repr=False, default=None)
    path_b: np.ndarray = dataclasses.field(repr=False, default=None)
    diagnosis: dict | None = None  # a 'different' verdict's step, slot and cause (diagnosis.py)

    def panel(self, precision: str) -> dict:
        """This pair's curves as a panel of ``report.equivalence_figures.divergence_grid``."""
        return {
            "t": self.eval_steps,
            "d": self.distance,
            "floor_a": self.floor_a,
            "floor_b": self.floor_b,
            "labels": ("A", "B"),
            "pair": f"A: {self.a}\nB: {self.b}",
            "precision": precision,
        }

    @property
    def stall_warning(self) -> str:
        """Why a verdict on two mostly stalled runs is no evidence ('' when they did not stall)."""
        return _stall_warning(self.stalled_a, self.stalled_b) if self.stalled else ""

    @property
    def outcome(self) -> str:
        """``"equivalent"``, ``"different"`` or ``"undecidable"`` (both diverged, differently or
        before any finite step: nothing can be said about the algorithms at this precision)."""
        if not self.decided:
            return "undecidable"
        return "equivalent" if self.equivalent else "different"

    def summary(self) -> dict:
        """The JSON-able numbers (no curves), names as in the CLI's ``--json`` output."""
        out = {"outcome": self.outcome}
        for f in dataclasses.fields(self):
            if f.name in ("eval_steps", "distance", "floor_a", "floor_b", "path_a", "path_b"):
                continue
            out[f.name] = _jsonable(getattr(self, f.name))
        return out


@dataclasses.dataclass
class Comparison:
    """Per precision, the verdicts of every measured pair."""

    problem: str
    optimizers: list[str]
    precisions: list[str]
    pairs: dict[str, list[PairVerdict]]  # precision -> verdicts
    settings: dict
    # precision -> where its time went ({phase: {"wall_s", "compile_s"}}, see optimorph.timing)
    timing: dict = dataclasses.field(default_factory=dict)

    def verdict(self, a: str, b: str, precision: str) -> PairVerdict:
        for v in self.pairs[precision]:
            if {v.a, v.b} == {a, b}:
                return v
        raise KeyError((a, b, precision))


@dataclasses.dataclass
class _Runs:
    """One precision's training of every optimizer, with replicas and trajectories."""

    result: Any  # TrainResult
    floor: np.ndarray  # [O, S, E]
    norm: np.ndarray  # [O, S, E] ||theta||


def measure(
    problem: Any,
    optimizers: Sequence[Any],
    *,
    precision: str,
    seeds: int = 5,
    steps: int = 500,
    batch_size: int | None = None,
    eval_every: int | None = None,
    replicas: int = DEFAULTS["replicas"],
    progress: bool | str = True,
    checkpoint_dir: Any = None,
    visit_every: int | None = None,
    final_metrics_only: bool = False,
) -> _Runs:
    """Train every optimizer once at ``precision`` with noise replicas and recorded trajectories
    (and, with ``visit_every``, each optimizer's visited states; with ``final_metrics_only``,
    the evaluation metrics at step 0 and the last step only: see :func:`train`)."""
    result = train(
        problem,
        list(optimizers),
        seeds=seeds,
        steps=steps,
        batch_size=batch_size,
        precision=precision,
        eval_every=eval_every,
        replicas=replicas,
        record_params=True,
        track_stalled=True,
        visit_every=visit_every,
        final_metrics_only=final_metrics_only,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        keep_params=False,
    )
    return _Runs(result, result.noise_floor(), np.linalg.norm(result.trajectory, axis=-1))


def compare(
    a: Any,
    b: Any,
    *,
    problem: Any,
    precision: str | Sequence[str] = "fp32",
    seeds: int = 5,
    steps: int = 500,
    batch_size: int | None = None,
    eval_every: int | None = None,
    phi: Any = None,
    progress: bool = True,
    checkpoint_dir: Any = None,
    workers: int | None = 1,
    diagnose: bool = False,
    **settings: Any,
) -> Comparison:
    """Compare two optimizers at one or several precisions.

    Args:
      a, b: spec strings, registered names or any optax GradientTransformation.
      problem: a Problem or problem spec.
      precision: one precision spec or several (``["fp16", "fp32", "fp64"]``).
      seeds, steps, batch_size, eval_every: the training runs (seeds are paired).
      phi: a :class:`~optimorph.equivalence.maps.StateMap` from A to B; default: the registered
        exact map, else a fitted one.
      checkpoint_dir: keep training checkpoints here; an interrupted comparison rerun with the
        same arguments resumes its training where it stopped.
      workers: processes judging the precisions (None: one per core); the verdicts are the
        same with any number.
      diagnose: for each pair found different, name the first step and state slot where they
        part and the most likely known cause (:mod:`optimorph.equivalence.diagnosis`; seconds per
        verdict; the command line does it).
      **settings: override ``DEFAULTS`` (C, replicas, kappa_max, margin, stall_limit).

    Returns:
      A :class:`Comparison`; ``comparison.pairs[p][0]`` is the verdict at precision p.

    >>> import jax; jax.config.update("jax_enable_x64", True)
    >>> c = compare("sgd(lr=0.05)", "momentum(lr=0.05, beta=0)",
    ...             problem="quadratic(dim=4, kappa=10)", precision="fp32", seeds=2, steps=40,
    ...             progress=False)
    >>> c.pairs["fp32"][0].equivalent
    True
    """
    run = dict(
        seeds=seeds,
        steps=steps,
        batch_size=batch_size,
        eval_every=eval_every,
        checkpoint_dir=checkpoint_dir,
    )
    maps = {(0, 1): phi} if phi is not None else {}
    comparison = _evaluate(
        [a, b], problem, precision, run, progress, settings, maps=maps, workers=workers
    )
    if not diagnose:
        return comparison
    return diagnosis.attach(comparison, problem, run, pair=(a, b))


def _evaluate(
    optimizers, problem, precision, run, progress, settings, maps=None, pairs=None, workers=1
):
    """Train each optimizer once per precision, then judge the pairs (all by default).

    Precisions are independent: with ``workers`` > 1 (None: one per core) they run in worker
    processes, when everything a worker needs can be sent to it (spec strings, a problem spec,
    no hand-made state maps); otherwise here, one after another. The verdicts are the same.
    """
    require_x64("numerical equivalence (noise floors and emulated formats)")
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; valid: {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **settings}
    prob = problem if isinstance(problem, Problem) else make_problem(problem)
    specs = [resolve(o) for o in optimizers]
    for spec in specs:  # checked before any training
        if spec.entry is not None and "value_fn" in spec.entry.needs:
            raise ValueError(
                f"{spec.text}: compare replays one step from stored gradients, and "
                f"{spec.entry.name} needs the loss itself (value_fn); train it with "
                "optimorph train instead"
            )
    names = [s.text for s in specs]
    precisions = [precision] if isinstance(precision, str) else list(precision)
    for p in precisions:  # checked before any training
        _check_floor_policy(make_precision(p))
    pairs = pairs or list(itertools.combinations(range(len(specs)), 2))
    sendable = isinstance(problem, str) and not maps and all(s.custom is None for s in specs)
    workers = (default_workers() if workers is None else int(workers)) if sendable else 1
    if workers > 1 and len(precisions) > 1:
        cells = [(names, problem, p, run, cfg, pairs) for p in precisions]
        bar = Progress(len(cells), "precisions", enabled=progress, unit="precisions")
        judged = map_cells(
            _precision_cell, cells, workers=workers, on_result=lambda i, _: bar.advance(1)
        )
    else:
        judged = [_judge(prob, specs, p, run, cfg, maps, pairs, progress) for p in precisions]
    out = {p: verdicts for p, (verdicts, _) in zip(precisions, judged, strict=True)}
    timing = {p: t for p, (_, t) in zip(precisions, judged, strict=True)}
    settings_out = {**cfg, **{k: v for k, v in run.items() if k != "checkpoint_dir"}}
    return Comparison(prob.name, names, precisions, out, settings_out, timing)


def _check_floor_policy(policy) -> None:
    """The noise floor's replicas perturb a round-to-nearest sum: a policy that rounds
    stochastically as a whole, or with Kahan, has no floor here (one line, before training)."""
    if policy.rounding != "nearest" or policy.kahan:
        raise ValueError(
            f"precision {policy.name!r}: the noise floor's replicas perturb a round-to-nearest "
            "step, so compare needs rounding=nearest without kahan for the policy as a whole; "
            "stochastic rounding inside one role's format is judged "
            "(e.g. 'bf16,grads=mxfp4(rounding=stochastic)')"
        )


def _precision_cell(cell) -> tuple[list[PairVerdict], dict]:
    """One precision's verdicts and timing in a worker process (spec strings and a problem
    spec in)."""
    names, problem, p, run, cfg, pairs = cell
    specs = [resolve(n) for n in names]
    return _judge(make_problem(problem), specs, p, run, cfg, None, pairs, progress=False)


def _judge(prob, specs, p, run, cfg, maps, pairs, progress) -> tuple[list[PairVerdict], dict]:
    """Train every optimizer at precision ``p`` (with replicas, recording each one's visited
    states), then judge each pair; with where the time went (training, then per pair: defects,
    intrinsic errors, theory checks)."""
    p_name = str(make_precision(p))
    phases = Phases()
    every = _visit_interval(run["steps"], int(cfg["visits"]))
    with phases("train"):
        # The verdicts read the final metric only, and the trajectories are recorded at every
        # evaluation either way: the metrics between cost most of a CNN's training.
        runs = measure(prob, specs, precision=p, replicas=int(cfg["replicas"]), progress=progress,
                       visit_every=every, final_metrics_only=True, **run)  # fmt: skip
    # Defects, intrinsic errors and theory checks take seconds per pair: show progress.
    label = f"pairs at {p_name}"
    if isinstance(progress, str):  # a worker's tag, as the trainer's lines carry it
        label = f"{progress}: {label}"
    bar = Progress(len(pairs), label, enabled=bool(progress), unit="pairs")
    visited = runs.result.visited
    # Visits are the first seed's; a keyed policy replays them with that seed's draws.
    replay = {"visit_steps": runs.result.visit_steps, "seed": runs.result.seeds[0]}
    # Per optimizer, once each: an optimizer belongs to several pairs.
    intrinsic = functools.cache(lambda i: _intrinsic_error(specs[i], p, visited[i], **replay))
    checks = functools.cache(lambda i: _theory(prob, visited[i]))
    out = []
    for i, j in pairs:
        smap = (maps or {}).get((i, j))
        with phases("defects"):
            dfx = defect_lib.simulation_defect(specs[i], specs[j], prob, p, smap=smap,
                                               visited=(visited[i], visited[j]),
                                               **replay)  # fmt: skip
        with phases("intrinsic errors"):
            errors = (intrinsic(i), intrinsic(j))
        with phases("theory checks"):
            theory_i = checks(i)
        out.append(_pair_verdict(specs, i, j, p_name, runs, cfg, dfx, errors, theory_i))
        bar.advance(1)
    return out, phases.as_dict()


def _visit_interval(steps: int, visits: int) -> int:
    """Steps between visited states: ``visits`` of them, evenly spaced from step 0.

    >>> _visit_interval(500, 20), _visit_interval(10, 20)
    (25, 1)
    """
    return max(steps // visits, 1)


@dataclasses.dataclass(frozen=True)
class TrajectoryVerdict:
    """The noise-floor rule on two measured runs, without the state maps (see
    :func:`trajectory_verdict`).

    Attributes:
      equivalent, decided, reason: the verdict as :class:`PairVerdict` gives it, before the
        state maps' condition numbers are checked (the final metric's check included).
      by_distance: both runs stayed finite, so the verdict rests on d/floor (the only case
        where ``compare`` goes on to check the state maps).
      note: the engine's divergence rule fired without NaN/inf parameters ('' otherwise); it
        follows the reason.
      distance_ratio: max over evaluations after step 0 of the median over seeds of d / floor.
      ratio_per_seed: each seed's maximum.
      distance: ``[S, E]`` d(t) per seed.
      diverged_a, diverged_b: how each run diverged (a phrase), None if it did not.
      nan_a, nan_b: the first step with NaN/inf parameters, None if they stayed finite.
    """

    equivalent: bool
    decided: bool
    reason: str
    by_distance: bool
    note: str
    distance_ratio: float
    ratio_per_seed: list[float]
    distance: np.ndarray = dataclasses.field(repr=False)
    diverged_a: str | None
    diverged_b: str | None
    nan_a: int | None
    nan_b: int | None

    @property
    def outcome(self) -> str:
        """``"equivalent"``, ``"different"`` or ``"undecidable"``, as :class:`PairVerdict`."""
        if not self.decided:
            return "undecidable"
        return "equivalent" if self.equivalent else "different"


def outcome_differs(fa: Any, fb: Any, margin: float = DEFAULTS["margin"],
                    relative: bool = DEFAULTS["margin_relative"]) -> str | None:  # fmt: skip
    """Why the final metric of A and B (``fa``, ``fb``: one value per paired seed) differs
    beyond doubt and beyond the margin, or None: the paired t-test rejects equality at 5% (its
    95% CI excludes 0) and the mean difference exceeds the TOST margin (``margin``, a fraction
    of max(|mean A|, |mean B|) when ``relative``). A trajectory verdict of "equivalent" that
    this contradicts is overruled (module doc).

    >>> outcome_differs([0.64, 0.60, 0.66], [0.46, 0.45, 0.47]) is not None
    True
    >>> outcome_differs([0.461, 0.459, 0.463], [0.46, 0.45, 0.47]) is None
    True
    """
    with np.errstate(all="ignore"):
        test = stats.paired_t_test(fa, fb)
        band = float(stats.tost(fa, fb, margin, relative=relative).margin)
    if not (math.isfinite(test.p_value) and test.p_value < 0.05 and abs(test.mean_diff) > band):
        return None
    return (
        f"the final metric differs: A - B = {test.mean_diff:+.3g} (95% CI {test.ci_low:.3g}.."
        f"{test.ci_high:.3g}, p = {test.p_value:.2g}), beyond the +-{band:.3g} margin"
    )


def seed_split(tv: TrajectoryVerdict, C: float, equivalent: bool,
               could_join: bool) -> tuple[int, bool | None]:  # fmt: skip
    """How firmly the distance decided a verdict: ``(seeds against, alternative)``.

    The rule reads the median over seeds of d/floor, so a verdict can stand while some seeds'
    own maxima (``tv.ratio_per_seed``) lie on the other side of C; such a verdict rests on a few
    seeds and can move with the last bits of a run (another CPU's kernels, another jaxlib).
    ``seeds against`` counts them; ``alternative`` is the verdict the pair gets if they had
    decided: False for an equivalent pair with seeds above C; True for a pair different by
    distance alone with seeds at or below C, when the rest of the rule would let it join
    (``could_join``: the state maps' condition numbers bounded and the final metric not
    differing); None when every seed agrees, or the distance did not decide the verdict.

    >>> tv = TrajectoryVerdict(True, True, "", True, "", 9.3, [19.9, 6.2, 10.3, 9.3, 7.8],
    ...                        np.zeros((5, 2)), None, None, None, None)
    >>> seed_split(tv, 10.0, True, True)
    (2, False)
    >>> seed_split(dataclasses.replace(tv, ratio_per_seed=[5.0, 6.0]), 10.0, True, True)
    (0, None)
    """
    if not (tv.by_distance and tv.decided):
        return 0, None
    per_seed = np.asarray(tv.ratio_per_seed, dtype=float)
    if tv.distance_ratio <= C:  # the distance said equivalent
        against = int(np.sum(per_seed > C))
        return against, (False if against and equivalent else None)
    against = int(np.sum(per_seed <= C))
    return against, (True if against and could_join else None)


@dataclasses.dataclass(frozen=True)
class FloorRatio:
    """d(t) against the noise floor for one pair of runs (DESIGN.md section 3).

    Attributes:
      distance: ``[S, E]`` d(t) = ||theta_A(t) - theta_B(t)|| per seed and evaluation (NaN
        where a run broke).
      ratio: ``[S, E]`` d / max(N_A, N_B, u ||theta_A||), 0 where d = 0 (also where the floor
        is 0), NaN where a run broke.
      max_median: max over evaluations after step 0 of the median over seeds of ``ratio``
        (the number the verdict compares with C; inf when no evaluation is finite).
      per_seed: each seed's maximum over evaluations after step 0 (inf likewise).
    """

    distance: np.ndarray = dataclasses.field(repr=False)
    ratio: np.ndarray = dataclasses.field(repr=False)
    max_median: float
    per_seed: list[float]


def floor_ratio(runs_a: _Runs, i: int, runs_b: _Runs, j: int, u: float) -> FloorRatio:
    """Optimizer ``i`` of ``runs_a`` against optimizer ``j`` of ``runs_b`` (:func:`measure`
    results with the same seeds and evaluations, or cells with the same fields): d(t), d /
    floor and its maxima, with ``u`` the unit roundoff of the parameters' format. The one
    computation of d/floor: :func:`trajectory_verdict` and the low-bit recipes use it.

    >>> import jax; jax.config.update("jax_enable_x64", True)
    >>> runs = measure("quadratic(dim=4, kappa=10)", ["sgd(lr=0.05)", "sgd(lr=0.05)"],
    ...                precision="fp32", seeds=2, steps=20, progress=False)
    >>> floor_ratio(runs, 0, runs, 1, 2.0**-24).max_median  # the same computation twice
    0.0
    """
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in diverged runs: NaN
        d = np.linalg.norm(runs_a.result.trajectory[i] - runs_b.result.trajectory[j], axis=-1)
    floor = np.maximum.reduce([runs_a.floor[i], runs_b.floor[j], u * runs_a.norm[i]])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d == 0, 0.0, d / floor)
    after = ratio[:, 1:]  # t = 0 is the shared initialisation
    med = np.median(after, axis=0)
    max_median = float(np.nanmax(med)) if np.isfinite(med).any() else math.inf
    per_seed = [float(np.nanmax(x)) if np.isfinite(x).any() else math.inf for x in after]
    return FloorRatio(distance=d, ratio=ratio, max_median=max_median, per_seed=per_seed)


def trajectory_verdict(
    runs_a: _Runs, i: int, runs_b: _Runs, j: int, precision: str, C: float = DEFAULTS["C"],
    margin: float = DEFAULTS["margin"], margin_relative: bool = DEFAULTS["margin_relative"],
) -> TrajectoryVerdict:  # fmt: skip
    """Optimizer ``i`` of ``runs_a`` against optimizer ``j`` of ``runs_b`` (two
    :func:`measure` results with the same seeds, steps and evaluations, or the same one twice)
    by the noise-floor rule of this module, NaN/inf cases included, and the final metric's check
    (:func:`outcome_differs`, with ``margin``): everything of ``compare``'s verdict except the
    state maps' condition numbers, which cost a compiled simulation per pair.

    >>> import jax; jax.config.update("jax_enable_x64", True)
    >>> runs = measure("quadratic(dim=4, kappa=10)", ["sgd(lr=0.05)", "momentum(lr=0.05, beta=0)"],
    ...                precision="fp32", seeds=2, steps=40, progress=False)
    >>> trajectory_verdict(runs, 0, runs, 1, "fp32").outcome
    'equivalent'
    """
    ra, rb = runs_a.result, runs_b.result
    fr = floor_ratio(runs_a, i, runs_b, j, make_precision(precision).unit_roundoff)
    d, distance_ratio, per_seed = fr.distance, fr.max_median, fr.per_seed

    broke_a = _divergence(ra, i, ra.config.get("divergence_factor"))
    broke_b = _divergence(rb, j, rb.config.get("divergence_factor"))
    nan_a = broke_a.nan_step if broke_a else None
    nan_b = broke_b.nan_step if broke_b else None
    said_a = broke_a.describe() if broke_a else None
    said_b = broke_b.describe() if broke_b else None
    decided, named, by_distance = True, False, False  # named: the reason names both divergences
    if nan_a is not None and nan_b is not None:
        equivalent, named = False, True
        last = _last_shared_finite(ra.trajectory[i], rb.trajectory[j], ra.eval_steps)
        same = _identical(ra.trajectory[i], rb.trajectory[j]) and np.array_equal(
            ra.diverged_at[i], rb.diverged_at[j]
        )
        if same and last is not None:
            equivalent = True  # the same computation: the format breaks both the same way
            reason = (
                f"identical trajectories, bit for bit through step {last} (the last finite "
                f"evaluation) and NaN/inf included after it: both {said_a} (equivalent as "
                "computations, useless as optimizers at this precision)"
            )
        else:
            # Two runs broken before any finite evaluation after step 0 are no evidence either
            # way, even an optimizer against itself: t = 0 is the shared initialisation.
            decided = False
            what = (
                "both diverged before any finite evaluation after step 0: nothing to compare"
                if last is None
                else "both diverged, differently"
            )
            reason = f"undecidable: {what} (A: {said_a}; B: {said_b})"
    elif nan_a is not None or nan_b is not None:
        equivalent, named = False, True
        who, said, other, said_other = (
            ("A", said_a, "B", said_b) if nan_a is not None else ("B", said_b, "A", said_a)
        )
        reason = f"{who}: {said}; {other}'s parameters stayed finite"
        if said_other:
            reason += f" ({other}: {said_other})"
    else:
        by_distance = True
        equivalent = distance_ratio <= C
        reason = (
            f"d/floor <= {distance_ratio:.3g} <= C={C:g}"
            if equivalent
            else f"d/floor reached {distance_ratio:.3g} > C={C:g}"
        )
        key = _final_metric(ra.evals)
        differs = equivalent and outcome_differs(
            ra.evals[key][i, :, -1], rb.evals[key][j, :, -1], margin, margin_relative
        )
        if differs:
            equivalent = False
            reason = (f"d/floor {distance_ratio:.3g} <= C={C:g}, but {differs}: the floor is "
                      "too wide to tell the two apart")  # fmt: skip
    note = ""
    if not named and (said_a or said_b):
        # The engine's divergence without NaN/inf parameters (an overflowing loss, a loss
        # blow-up): the verdict above compared finite trajectories, but say what broke.
        said = "; ".join(f"{w}: {t}" for w, t in (("A", said_a), ("B", said_b)) if t)
        note = f"; no NaN/inf parameters, but the engine's divergence rule fired ({said})"
    return TrajectoryVerdict(
        equivalent=equivalent, decided=decided, reason=reason, by_distance=by_distance,
        note=note, distance_ratio=distance_ratio, ratio_per_seed=per_seed, distance=d,
        diverged_a=said_a, diverged_b=said_b, nan_a=nan_a, nan_b=nan_b,
    )  # fmt: skip


def _pair_verdict(specs, i, j, p_name, runs, cfg, dfx, intrinsic, checks) -> PairVerdict:
    """The verdict on optimizers i and j from their runs, their defect and the per-optimizer
    measurements on visited states (intrinsic errors of both, theory checks of i)."""
    r = runs.result
    tv = trajectory_verdict(runs, i, runs, j, p_name, cfg["C"], cfg["margin"],
                            bool(cfg["margin_relative"]))  # fmt: skip
    d, distance_ratio = tv.distance, tv.distance_ratio
    t = r.eval_steps[1:].astype(float)
    growth = stats.growth_exponent(t, np.median(d[:, 1:], axis=0))[0]
    stalled_a = float(np.nanmean(r.stalled[i]))
    stalled_b = float(np.nanmean(r.stalled[j]))
    stalled = stalled_a > cfg["stall_limit"] and stalled_b > cfg["stall_limit"]
    intrinsic_a, intrinsic_b = intrinsic

    key = _final_metric(r.evals)
    fa, fb = r.evals[key][i, :, -1], r.evals[key][j, :, -1]
    with np.errstate(all="ignore"):  # huge but finite losses of a diverging run
        ttest = stats.paired_t_test(fa, fb)
        tost = stats.tost(fa, fb, cfg["margin"], relative=bool(cfg["margin_relative"]))
    margin = float(tost.margin)
    tests_note = _tests_note(
        fa, fb, key, r.trajectory[[i, j], :, -1], p_name, ttest.p_value, tost.p_value, ttest.note
    )

    kappa_ok = max(dfx.kappa_phi, dfx.kappa_psi) <= cfg["kappa_max"]
    equivalent, decided, reason = tv.equivalent, tv.decided, tv.reason
    if tv.by_distance and equivalent:
        if kappa_ok:
            reason += ", kappa bounded"
        else:
            equivalent = False
            reason = (
                f"d/floor {distance_ratio:.3g} <= C but kappa(phi)={dfx.kappa_phi:.3g}, "
                f"kappa(psi)={dfx.kappa_psi:.3g} exceed {cfg['kappa_max']:g}"
            )
    reason += tv.note
    if decided and not equivalent:
        reason += _default_mismatch(specs[i], specs[j])
    if stalled:
        reason += f"; WARNING: {_stall_warning(stalled_a, stalled_b)}"
    said_a, said_b, nan_a, nan_b = tv.diverged_a, tv.diverged_b, tv.nan_a, tv.nan_b
    per_seed = tv.ratio_per_seed
    against, alternative = seed_split(
        tv, cfg["C"], equivalent,
        kappa_ok and not outcome_differs(fa, fb, cfg["margin"], bool(cfg["margin_relative"])),
    )  # fmt: skip
    if alternative is not None:
        side = "above" if alternative is False else "at or below"
        reason += (f"; seed-split: {against} of {len(per_seed)} seeds' own d/floor {side} C "
                   f"(it would be {'equivalent' if alternative else 'different'} had they "
                   "decided)")  # fmt: skip
    return PairVerdict(
        a=specs[i].text,
        b=specs[j].text,
        precision=p_name,
        equivalent=equivalent,
        reason=reason,
        distance_ratio=distance_ratio,
        ratio_per_seed=per_seed,
        growth_exponent=float(growth),
        defect_ab=dfx.ab_max,
        defect_ba=dfx.ba_max,
        defect_ab_median=dfx.ab_median,
        defect_ba_median=dfx.ba_median,
        kappa_phi=dfx.kappa_phi,
        kappa_psi=dfx.kappa_psi,
        map=dfx.map_name if dfx.map_kind == "exact" else "fitted",
        map_residual=dfx.residual,
        stalled=stalled,
        stalled_a=stalled_a,
        stalled_b=stalled_b,
        first_nan_a=nan_a,
        first_nan_b=nan_b,
        intrinsic_error_a=intrinsic_a,
        intrinsic_error_b=intrinsic_b,
        p_value=ttest.p_value,
        tost_p_value=tost.p_value,
        tost_margin=margin,
        final_metric=key,
        theory=checks,
        decided=decided,
        diverged_a=said_a,
        diverged_b=said_b,
        tests_note=tests_note,
        final_diff=float(ttest.mean_diff),
        final_diff_ci=(float(ttest.ci_low), float(ttest.ci_high)),
        seeds_against=against,
        alternative=alternative,
        eval_steps=r.eval_steps,
        distance=d,
        floor_a=runs.floor[i],
        floor_b=runs.floor[j],
        path_a=r.trajectory[i, 0],
        path_b=r.trajectory[j, 0],
    )


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-equal trajectories, NaN in the same places counting as equal."""
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


def _last_shared_finite(a: np.ndarray, b: np.ndarray, eval_steps: np.ndarray) -> int | None:
    """The last evaluation step after step 0 at which both trajectories ([S, E, P]) were finite
    in some seed, else None: step 0 is the shared initialisation and shows nothing.

    >>> a = np.array([[[1.0], [2.0], [np.nan]]])
    >>> _last_shared_finite(a, a, np.array([0, 5, 10])), _last_shared_finite(a[:, ::2], a, [0, 5])
    (5, None)
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return None
    both = (np.isfinite(a).all(axis=-1) & np.isfinite(b).all(axis=-1)).any(axis=0)  # [E]
    later = np.flatnonzero(both[1:])
    return int(eval_steps[later[-1] + 1]) if later.size else None


@dataclasses.dataclass(frozen=True)
class _Divergence:
    """How one optimizer's runs diverged at one precision, by the engine's rule, over seeds.

    Attributes:
      step: the earliest divergence step over seeds (``TrainResult.diverged_at``).
      blowup: at that step the loss was finite but above ``factor`` x its first value (the
        engine's ``divergence_factor``), not NaN/inf.
      loss_nan: at that step the loss was NaN/inf (the parameters may still be finite: an
        overflowing loss).
      nan_step: the first step with NaN/inf parameters in any seed, None if they stayed finite.
      seeds, of: how many of the seeds diverged.
      factor: the engine's ``divergence_factor``.
      note: hyperparameters the precision rounded (the usual cause), "; "-joined.

    >>> blowup = _Divergence(12, True, False, 40, 1, 3, 1e4, "")
    >>> print(blowup.describe())  # doctest: +NORMALIZE_WHITESPACE
    diverged at step 12 (loss above 1e4 x its first value), NaN/inf parameters by step 40 (1 of 3
    seeds diverged)
    >>> print(_Divergence(1, False, False, 1, 3, 3, 1e4, "eps=1e-08 is stored as 0.0").describe())
    NaN/inf at step 1 (3 of 3 seeds diverged; eps=1e-08 is stored as 0.0)
    """

    step: int
    blowup: bool
    loss_nan: bool
    nan_step: int | None
    seeds: int
    of: int
    factor: float | None
    note: str

    def describe(self) -> str:
        """One phrase: at which step and why (NaN/inf, or the loss above factor x its first)."""
        if self.blowup:
            factor = _short(self.factor)
            text = f"diverged at step {self.step} (loss above {factor} x its first value)"
            text += (
                f", NaN/inf parameters by step {self.nan_step}"
                if self.nan_step is not None
                else ", parameters finite"
            )
        elif self.loss_nan and self.nan_step is None:
            text = f"loss NaN/inf at step {self.step} with finite parameters"
        elif self.loss_nan and self.nan_step > self.step:
            text = f"loss NaN/inf at step {self.step}, NaN/inf parameters by step {self.nan_step}"
        else:
            text = f"NaN/inf at step {self.step}"
        note = f"; {self.note}" if self.note else ""
        return f"{text} ({self.seeds} of {self.of} seeds diverged{note})"


def _divergence(r: Any, o: int, factor: float | None) -> _Divergence | None:
    """Optimizer ``o``'s divergence in the TrainResult ``r`` (``record_params``), or None.

    The loss of step s (before its update) is ``train_loss`` column s - 1 when ``log_every`` is
    1, as in :func:`measure`; with wider windows the loss cannot be told apart and a step counts
    as NaN/inf.
    """
    at = np.asarray(r.diverged_at[o])
    if not (at >= 0).any():
        return None
    per_step = len(r.steps) > 0 and np.array_equal(r.steps, np.arange(1, len(r.steps) + 1))
    loss = np.asarray(r.train_loss[o], np.float64)  # [S, T]
    blowup = np.zeros(at.shape, bool)
    loss_nan = np.zeros(at.shape, bool)
    for seed in np.flatnonzero(at >= 1):
        if not per_step or at[seed] > loss.shape[1]:
            continue
        value, first = loss[seed, at[seed] - 1], loss[seed, 0]
        if np.isfinite(value):
            blowup[seed] = factor is not None and abs(value) > factor * abs(first)
        else:
            loss_nan[seed] = True
    seed = int(np.flatnonzero(at >= 0)[np.argmin(at[at >= 0])])
    rounded = getattr(r, "rounded_hparams", {}).get(r.optimizers[o], [])
    return _Divergence(
        step=int(at[seed]),
        blowup=bool(blowup[seed]),
        loss_nan=bool(loss_nan[seed]),
        nan_step=_first_nan(r.trajectory[o], r.eval_steps, at, blowup),
        seeds=int((at >= 0).sum()),
        of=int(at.size),
        factor=factor,
        note="; ".join(rounded),
    )


def _stall_warning(stalled_a: float, stalled_b: float) -> str:
    return (
        f"both runs mostly stalled (updates absorbed: A {stalled_a:.0%}, B {stalled_b:.0%}): "
        "a collapse by stagnation, not evidence of one algorithm"
    )


def _default_mismatch(a: Any, b: Any) -> str:
    """A clause naming the hyperparameters both specs leave unset whose defaults differ (the
    likely cause of a 'different' verdict), or ''.

    >>> from optimorph.optimizers import resolve
    >>> _default_mismatch(resolve("adamw(lr=1e-3)"), resolve("adamw(lr=1e-3, b2=0.99)"))
    ''
    >>> a, b = resolve("adam(lr=1e-3)"), resolve("adabelief(lr=1e-3)")
    >>> print(_default_mismatch(a, b))  # doctest: +NORMALIZE_WHITESPACE
    ; both specs leave eps (A 1e-08, B 1e-16) at different defaults: set it in both to compare
    the same setting
    """
    plain = (bool, int, float, str)
    differ = [
        f"{name} (A {value!r}, B {b.defaults[name]!r})"
        for name, value in a.defaults.items()
        if name in b.defaults
        and isinstance(value, plain)
        and isinstance(b.defaults[name], plain)
        and value != b.defaults[name]
    ]
    if not differ:
        return ""
    return (
        f"; both specs leave {', '.join(differ)} at different defaults: set "
        f"{'it' if len(differ) == 1 else 'them'} in both to compare the same setting"
    )


def _short(x: float | None) -> str:
    """A factor as written by hand: 1e4 as ``1e4``, 500 as ``500``, 1500 as ``1500``."""
    if x is None:
        return "?"
    mantissa, exponent = f"{x:.0e}".split("e")
    if x < 1000 or float(f"{mantissa}e{exponent}") != x:
        return f"{x:g}"
    return f"{mantissa}e{int(exponent)}"


def _first_nan(
    trajectory: np.ndarray,
    eval_steps: np.ndarray,
    diverged_at: np.ndarray | None = None,
    blowup: np.ndarray | None = None,
) -> int | None:
    """The first step at which some seed's parameters held NaN/inf, else None.

    The trajectory decides, not the loss: an fp16 loss can overflow to inf while the parameters
    (what the verdict compares) stay finite. The trajectory is stored at evaluations only, so
    the step is the engine's per-step divergence step (``diverged_at``, [S]) when it falls in
    the evaluation interval where the parameters broke, else that evaluation's step. A
    divergence step that was a loss blow-up (``blowup``, [S]), not NaN/inf, is not the step the
    parameters broke at: that seed gets the evaluation's step.

    >>> traj = np.array([[[1.0], [1.0], [np.nan]]])  # one seed, evaluations at 0, 10, 20
    >>> _first_nan(traj, np.array([0, 10, 20])), _first_nan(traj, np.array([0, 10, 20]), [13])
    (20, 13)
    >>> _first_nan(traj, np.array([0, 10, 20]), [13], [True])
    20
    """
    bad = ~np.isfinite(trajectory).all(axis=-1)  # [S, E]
    if not bad.any():
        return None
    steps = []
    for seed in np.flatnonzero(bad.any(axis=1)):
        e = int(np.argmax(bad[seed]))
        step = int(eval_steps[e])
        exact = diverged_at is not None and not (blowup is not None and blowup[seed])
        if exact and e > 0 and eval_steps[e - 1] < diverged_at[seed] <= step:
            step = int(diverged_at[seed])
        steps.append(step)
    return min(steps)


def _tests_note(
    fa: np.ndarray,
    fb: np.ndarray,
    metric: str,
    last_params: np.ndarray,
    precision: str,
    p_value: float,
    tost_p_value: float,
    stats_note: str,
) -> str:
    """Why the paired tests gave no p-value, in the terms of this comparison; "" when they did.

    ``last_params`` is ``[2, S, P]``: A's and B's final parameters (finite parameters with a
    non-finite final loss mean the loss itself overflows at ``precision``).

    >>> _tests_note(np.ones(1), np.ones(1), "test/loss", np.ones((2, 1, 3)), "fp32", np.nan,
    ...             np.nan, "")
    'no paired test: 1 seed; paired tests need >= 2 seeds'
    >>> f = np.array([1.0, np.inf, 2.0])
    >>> print(_tests_note(np.ones(3), f, "test/loss", np.ones((2, 3, 1)), "fp16", np.nan, np.nan,
    ...                   ""))  # doctest: +NORMALIZE_WHITESPACE
    no paired test: final test/loss NaN/inf for B in 1 of 3 seeds (parameters finite: the loss
    overflows at fp16); paired tests need a finite final value in every seed on both sides
    """
    if not (math.isnan(p_value) or math.isnan(tost_p_value)):
        return ""
    n = len(fa)
    if n < 2:
        return f"no paired test: {n} seed{'s' if n != 1 else ''}; paired tests need >= 2 seeds"
    parts = []
    for who, f, params in (("A", fa, last_params[0]), ("B", fb, last_params[1])):
        bad = ~np.isfinite(f)
        if not bad.any():
            continue
        finite = np.isfinite(params).all(axis=-1)[bad]  # [bad seeds]
        if finite.all() and np.isinf(f[bad]).all():
            why = f"parameters finite: the loss overflows at {precision}"
        elif finite.all():
            why = "parameters finite"
        elif not finite.any():
            why = "diverged"
        else:
            why = f"{int((~finite).sum())} diverged, {int(finite.sum())} with finite parameters"
        parts.append(f"{who} in {int(bad.sum())} of {n} seeds ({why})")
    if not parts:
        return f"no paired test: {stats_note or 'the test is undefined for these values'}"
    return (
        f"no paired test: final {metric} NaN/inf for {', '.join(parts)}; paired tests need a "
        "finite final value in every seed on both sides"
    )


def _final_metric(evals: dict) -> str:
    for key in ("test/loss", "train/loss"):
        if key in evals:
            return key
    return next(iter(evals))


def _intrinsic_error(spec, p, visited, visit_steps, seed) -> float:
    """Median over visited states of ||U_p(s, g) - U(s, g)|| / ||U(s, g) - s|| on parameters:
    how much of each update rounding at p changes (U computed in float64 without rounding; a
    keyed policy's U_p draws what the run drew)."""
    params, state, grads = visited
    key = step_lib.seed_keys(seed).rounding
    rounded = _rows(defect_lib.one_step(spec, p, params, state, grads, stacked=True,
                                        t=visit_steps, rounding_key=key)[0])  # fmt: skip
    exact = _rows(defect_lib.one_step(spec, "fp64", params, state, grads, stacked=True)[0])
    with np.errstate(invalid="ignore", over="ignore"):
        step = np.linalg.norm(exact - _rows(params), axis=1)
        error = np.linalg.norm(rounded - exact, axis=1)
        errs = error[step > 0] / step[step > 0]
    return float(np.median(errs)) if errs.size else float("nan")


def _theory(prob, visited) -> dict:
    """The proposal's bounds, measured on visited gradients (and Hessian when small)."""
    params, _, grads = visited
    try:
        return _jsonable(theory.theory_checks(prob, defect_lib.unstack(grads),
                                              defect_lib.unstack(params)))  # fmt: skip
    except ValueError as err:  # model too large for an exact Hessian
        return {"note": str(err)}


def _rows(stacked) -> np.ndarray:
    """A stacked tree as one float64 row per leading index."""
    import jax

    leaves = jax.tree.leaves(stacked)
    count = leaves[0].shape[0]
    return np.concatenate([np.asarray(x, np.float64).reshape(count, -1) for x in leaves], axis=1)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else (None if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


@dataclasses.dataclass
class Classes:
    """Per precision: the equivalence classes of the given optimizers, with the verdicts."""

    comparison: Comparison
    classes: dict[str, list[list[str]]]  # precision -> classes (lists of specs as given)
    non_transitive: dict[str, list[tuple[str, str, str]]]
    stalled_pairs: dict[str, list[tuple[str, str]]]
    # Pairs that both diverged, differently: no edge, and a class count that depends on them is
    # no evidence either way.
    undecidable: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)
    # The verdicts of ``classes(also=...)``'s further pairs, in the order given (None: none).
    also: Comparison | None = None
    # precision -> (fewest, most) classes if the seed-split verdicts (PairVerdict.alternative)
    # had gone the other way: how far the count rests on pairs whose seeds disagree.
    class_range: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)


def classes(
    optimizers: Sequence[Any],
    *,
    problem: Any,
    precisions: str | Sequence[str] = ("fp16", "fp32", "fp64"),
    seeds: int = 5,
    steps: int = 500,
    batch_size: int | None = None,
    eval_every: int | None = None,
    progress: bool | str = True,
    checkpoint_dir: Any = None,
    workers: int | None = 1,
    diagnose: bool = False,
    also: Sequence[tuple[Any, Any]] = (),
    **settings: Any,
) -> Classes:
    """The equivalence graph of ``optimizers`` at each precision and its connected components.

    Every optimizer is trained once per precision (with its noise replicas); every pair is then
    judged by :func:`compare`'s rule. Components are the classes; triples with a ~ b, b ~ c but
    not a ~ c are reported (p-equivalence is not transitive in general). ``workers`` > 1 (None:
    one per core) judges the precisions in that many processes, with the same verdicts.
    ``diagnose``: as for :func:`compare`, each pair found different gets the step, slot and
    likely cause where it parts (seconds per pair). ``progress``: a string tags each progress
    line (a worker's job). ``also``: further pairs ``(a, b)`` judged
    on the same training runs, their optimizers trained alongside (once each, with the same
    seeds); they take no part in the classes, and their verdicts are ``Classes.also``, the
    verdicts ``compare(a, b)`` gives on the same settings.

    >>> import jax; jax.config.update("jax_enable_x64", True)
    >>> c = classes(["sgd(lr=0.05)", "momentum(lr=0.05, beta=0)", "signsgd(lr=0.05)"],
    ...             problem="least-squares(n=32, d=4, hetero=30)", precisions="fp64", seeds=2,
    ...             steps=40, progress=False)
    >>> c.classes["fp64"]
    [['sgd(lr=0.05)', 'momentum(lr=0.05, beta=0)'], ['signsgd(lr=0.05)']]
    """
    run = dict(
        seeds=seeds,
        steps=steps,
        batch_size=batch_size,
        eval_every=eval_every,
        checkpoint_dir=checkpoint_dir,
    )
    members = list(optimizers)
    canonical = [resolve(o).canonical for o in members]
    for a, b in also:  # the further pairs' optimizers, each trained once
        for o in (a, b):
            if resolve(o).canonical not in canonical:
                members.append(o)
                canonical.append(resolve(o).canonical)
    n = len(optimizers)
    pairs = list(itertools.combinations(range(n), 2))
    further = [(canonical.index(resolve(a).canonical), canonical.index(resolve(b).canonical))
               for a, b in also]  # fmt: skip
    comp = _evaluate(
        members, problem, precisions, run, progress, settings, pairs=pairs + further,
        workers=workers,
    )  # fmt: skip
    extra, k = None, len(pairs)
    if further:
        extra = dataclasses.replace(comp, pairs={p: v[k:] for p, v in comp.pairs.items()},
                                    timing={})  # fmt: skip
        comp = dataclasses.replace(comp, optimizers=comp.optimizers[:n],
                                   pairs={p: v[:k] for p, v in comp.pairs.items()})  # fmt: skip
    if diagnose:
        given = dict(zip(comp.optimizers, optimizers, strict=True))
        diagnosis.attach(comp, problem, run, given=given)
    return dataclasses.replace(_classes_of(comp), also=extra)


def merge_classes(parts: Sequence[Classes]) -> Classes:
    """One :class:`Classes` from several computed apart (each at its own precisions, the same
    optimizers, problem and settings), e.g. precisions judged as separate jobs."""
    first = parts[0].comparison
    pairs: dict[str, list[PairVerdict]] = {}
    timing: dict[str, dict] = {}
    for part in parts:
        c = part.comparison
        if (c.optimizers, c.problem, c.settings) != (first.optimizers, first.problem, first.settings):
            raise ValueError("merge_classes: the parts compare different optimizers or settings")
        pairs.update(c.pairs)
        timing.update(c.timing)
    comp = Comparison(first.problem, first.optimizers, list(pairs), pairs, first.settings, timing)
    also = None
    if parts[0].also is not None:
        joined = {p: v for part in parts for p, v in part.also.pairs.items()}
        also = dataclasses.replace(parts[0].also, precisions=list(joined), pairs=joined)
    return dataclasses.replace(_classes_of(comp), also=also)


def _classes_of(comp: Comparison) -> Classes:
    """The equivalence graph of a comparison's verdicts at each precision, and its components."""
    from optimorph.equivalence import classes as graph_lib

    names = comp.optimizers
    out, triples, stalled, undecidable, spread = {}, {}, {}, {}, {}
    for p, verdicts in comp.pairs.items():
        undecidable[p] = [(v.a, v.b) for v in verdicts if not v.decided]
        edges = {(v.a, v.b): v.equivalent for v in verdicts}
        graph = graph_lib.equivalence_graph(names, edges)
        out[p] = graph_lib.components(graph)
        triples[p] = graph_lib.non_transitive_triples(graph)
        stalled[p] = [(v.a, v.b) for v in verdicts if v.stalled and v.equivalent]
        # Components only merge as edges are added, so the extremes are every split pair
        # joined and every split pair parted.
        joined = {(v.a, v.b): v.equivalent or v.alternative is True for v in verdicts}
        parted = {(v.a, v.b): v.equivalent and v.alternative is not False for v in verdicts}
        spread[p] = tuple(len(graph_lib.components(graph_lib.equivalence_graph(names, e)))
                          for e in (joined, parted))  # fmt: skip
    return Classes(comp, out, triples, stalled, undecidable, class_range=spread)
