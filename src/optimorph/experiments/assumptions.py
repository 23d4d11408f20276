"""The empirical-assumptions study, reproduced at laptop scale: the computations.

Three studies (seeds/003; definitions in docs/reference.md, section "Trajectory probes"), each a
typed config with a ``quick()`` variant and a function returning train results and findings:

* :func:`convex` - GD on synthetic least squares (100 iterations, lr 0.1; the study's setting)
  and AdamW / SGD on logistic regression over scikit-learn's bundled real datasets (the study
  used OpenML's Aloi, Poker, Connect-4 and Covertype, which need a download): convexity gaps,
  convexity ratio against an x* from a longer earlier run, update correlation.
* :func:`deep` - SGD with momentum and AdamW on an MLP and a CNN on Fashion-MNIST (digits when
  its files are absent; the study used ResNet-18 on CIFAR-10 and ImageNet), constant and cosine
  learning rates, every probe.
* :func:`edge_of_stability` - full-batch GD on a tanh MLP at several learning rates (the study's
  replication of Cohen et al. on a tanh network): sharpness against 2/lr, smoothness beside it.

Every statistic a finding uses (which steps, which threshold) is fixed here, before any number
is seen; the rounding allowance for "gap <= 0" is derived from the run's format.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from optimorph.engine import train
from optimorph.experiments.findings import above, all_of, at_least, at_most, below, finding, within
from optimorph.precision import precision as make_precision
from optimorph.probes.trajectory import make_probes
from optimorph.problems import DatasetNotFound, problem

__all__ = [
    "ConvexConfig",
    "DeepConfig",
    "EdgeConfig",
    "convex",
    "deep",
    "edge_of_stability",
    "gap_allowance",
]


def gap_allowance(loss: np.ndarray, precision: str, ulps: float = 8.0) -> np.ndarray:
    """Per-step rounding allowance for a convexity gap: ``ulps`` unit roundoffs of the format
    times |f| (the gap is a difference of two losses and an inner product of the loss's size)."""
    u = make_precision(precision).unit_roundoff
    return ulps * u * (np.abs(loss) + 1e-6)


def _n_train(prob) -> int:
    return int(np.shape(prob.train[0])[0])


def _frac(x: np.ndarray) -> str:
    return f"{100 * x:.1f}%"


# ---------------------------------------------------------------------------------------------
# Convex problems


@dataclasses.dataclass(frozen=True)
class ConvexConfig:
    """GD on least squares, AdamW and SGD on logistic regression over real datasets."""

    ls_problem: str = "least-squares(n=200, d=20, hetero=1, noise=0.1)"
    ls_steps: int = 100  # the study: 100 iterations, lr 0.1, every iteration reported
    ls_lr: float = 0.1
    datasets: tuple[str, ...] = ("breast_cancer", "digits", "wine", "iris")  # departure: OpenML
    batch: int = 64  # the study's batch size
    epochs: int = 40
    adamw_lr: float = 0.01  # departure: the study tuned by grid search; one stated rate here
    sgd_lr: float = 0.1
    weight_decay: float = 0.0  # f has no penalty term; decay would move x* off the minimizer
    reference_steps: int = 2000  # x*: the last iterate of an earlier full-batch AdamW run
    seeds: int = 3
    precision: str = "fp32"
    allowance_ulps: float = 8.0

    @classmethod
    def quick(cls) -> ConvexConfig:
        return cls(datasets=("breast_cancer", "wine"), epochs=8, reference_steps=300, seeds=2)


def convex(config: ConvexConfig, *, checkpoints: str | None = None) -> dict:
    """Run the convex studies; ``{"results": {name: TrainResult}, "findings": [...]}``."""
    results, findings = {}, []
    gd = train(
        config.ls_problem,
        f"sgd(lr={config.ls_lr!r})",
        seeds=config.seeds,
        steps=config.ls_steps,
        precision=config.precision,
        probes=make_probes("gap,smooth,corr"),
        checkpoint_dir=_sub(checkpoints, "least-squares"),
        progress=False,
    )
    results["least-squares"] = gd
    gap = gd.probes["inst_gap"][0]
    room = gap - gap_allowance(gd.train_loss[0], config.precision, config.allowance_ulps)
    corr = gd.probes["update_corr"][0][:, 1:]  # step 0 has no previous update
    findings += [
        finding(
            "GD on least squares: every convexity gap is <= 0 (the loss is convex)",
            f"largest gap {gap.max():.3g} (rounding allowance {config.allowance_ulps:g} u |f|), "
            f"{_frac(np.mean(gap < 0))} of the {gap.size} gaps strictly negative",
            at_most(0, "largest gap minus rounding allowance").judge(room.max()),
        ),
        finding(
            "GD on least squares: the update correlation is negative at every step",
            f"largest update correlation {np.nanmax(corr):.3g}, mean {np.nanmean(corr):.3g}",
            below(0, "largest update correlation").judge(np.nanmax(corr)),
        ),
    ]

    rows = []  # (dataset, optimizer, max room, frac negative, final ratio, mean corr)
    ref_rows = []  # (dataset, optimizer, max room, frac negative) of the gap against x*
    for name in config.datasets:
        prob = problem(f"logistic(dataset={name})")
        ref = train(prob, f"adamw(lr={config.adamw_lr!r}, weight_decay=0.0)", seeds=[0],
                    steps=config.reference_steps, precision=config.precision,
                    checkpoint_dir=_sub(checkpoints, f"{name}-reference"), progress=False)  # fmt: skip
        x_star = _seed(ref.final_params[0], 0)
        steps = config.epochs * max(_n_train(prob) // config.batch, 1)
        r = train(
            prob,
            [
                f"adamw(lr={config.adamw_lr!r}, weight_decay={config.weight_decay!r})",
                f"sgd(lr={config.sgd_lr!r})",
            ],
            seeds=config.seeds,
            steps=steps,
            batch_size=config.batch,
            precision=config.precision,
            probes=make_probes(
                "gap,smooth,corr,ratio",
                reference=x_star,
                steps_per_epoch=max(_n_train(prob) // config.batch, 1),
            ),
            checkpoint_dir=_sub(checkpoints, name),
            progress=False,
        )
        results[f"logistic-{name}"] = r
        for i, opt in enumerate(r.optimizers):
            g = r.probes["inst_gap"][i]
            slack = g - gap_allowance(r.train_loss[i], config.precision, config.allowance_ulps)
            ratio = r.probes["convexity_ratio"][i][:, -1]
            c = r.probes["update_corr"][i]
            rg = r.probes["ref_gap"][i]
            ref_slack = rg - gap_allowance(r.train_loss[i], config.precision,
                                           config.allowance_ulps)  # fmt: skip
            rows.append((name, opt.split("(")[0], float(slack.max()), float(np.mean(g < 0)),
                         float(np.min(ratio)), float(np.nanmean(c))))  # fmt: skip
            ref_rows.append((name, opt.split("(")[0], float(ref_slack.max()),
                             float(np.mean(rg < 0))))  # fmt: skip
    worst = max(rows, key=lambda row: row[2])
    worst_ref = max(ref_rows, key=lambda row: row[2])
    lowest = min(rows, key=lambda row: row[4])
    findings += [
        finding(
            "Logistic regression (convex in x for every minibatch): no gap above rounding, for "
            "AdamW and SGD on every dataset",
            f"{len(rows)} runs; largest gap minus allowance {worst[2]:.3g} ({worst[0]}, "
            f"{worst[1]}); share of negative gaps "
            + ", ".join(f"{d}/{o} {_frac(f)}" for d, o, _, f, _, _ in rows),
            at_most(0, "largest gap minus rounding allowance").judge(worst[2]),
        ),
        finding(
            "Logistic regression: no gap against x* above rounding either, "
            "f(x_t, z_t) - f(x*, z_t) - <grad f(x_t, z_t), x_t - x*> <= 0",
            f"largest gap minus allowance {worst_ref[2]:.3g} ({worst_ref[0]}, {worst_ref[1]}); "
            "share of negative gaps "
            + ", ".join(f"{d}/{o} {_frac(f)}" for d, o, _, f in ref_rows),
            at_most(0, "largest gap against x* minus rounding allowance").judge(worst_ref[2]),
        ),
        finding(
            "Logistic regression: the convexity ratio sum <grad F, x - x*> / sum [F - F(x*)] "
            "is >= 1",
            f"smallest final ratio {lowest[4]:.4f} ({lowest[0]}, {lowest[1]}); all: "
            + ", ".join(f"{d}/{o} {q:.3f}" for d, o, _, _, q, _ in rows),
            at_least(1 - 1e-3, "smallest final convexity ratio").judge(lowest[4]),
        ),
        finding(
            "(no claim in the study) Mean update correlation with minibatches on logistic "
            "regression",
            ", ".join(f"{d}/{o} {c:.3g}" for d, o, _, _, _, c in rows),
            None,
        ),
    ]
    return {"results": results, "findings": findings}


# ---------------------------------------------------------------------------------------------
# Deep networks


@dataclasses.dataclass(frozen=True)
class DeepConfig:
    """SGD-momentum and AdamW on an MLP and a CNN, constant and cosine learning rates."""

    dataset: str = "fashion-mnist"
    fallback: str = "digits"  # when Fashion-MNIST's files are absent
    models: tuple[str, ...] = ("mlp", "cnn")
    n_train: int = 10_000  # departure: a 10k-image subset (CPU budget); None is all 60k
    batch: int = 128  # the study's CIFAR-10 batch size
    epochs: int = 8  # departure: the study trained 200 epochs of ResNet-18
    sgdm_lr: float = 0.05
    beta: float = 0.9
    adamw_lr: float = 1e-3
    weight_decay: float = 5e-4
    schedules: tuple[str, ...] = ("constant", "cosine")
    sharpness_every: int = 200
    track_band: tuple[float, float] = (0.5, 1.5)  # "tracks": median exp_smooth / sharpness
    seeds: int = 2
    precision: str = "fp32"
    allowance_ulps: float = 8.0

    @classmethod
    def quick(cls) -> DeepConfig:
        return cls(models=("mlp",), n_train=2048, epochs=4, batch=64, sharpness_every=32,
                   seeds=1)  # fmt: skip

    def problem_spec(self, dataset: str, model: str) -> str:
        if dataset in ("fashion-mnist", "mnist"):
            return f"{dataset}(model={model}, n_train={self.n_train})"
        return f"{dataset}(model={model})"

    def optimizers(self, steps: int) -> list[str]:
        out = []
        for sched in self.schedules:
            for kind, lr0 in (("sgdm", self.sgdm_lr), ("adamw", self.adamw_lr)):
                lr = repr(lr0) if sched == "constant" else f"cosine({lr0!r}, steps={steps})"
                out.append(
                    f"momentum(lr={lr}, beta={self.beta!r})"
                    if kind == "sgdm"
                    else f"adamw(lr={lr}, weight_decay={self.weight_decay!r})"
                )
        return out


def deep(config: DeepConfig, *, checkpoints: str | None = None) -> dict:
    """Run the deep-network studies; ``{"results", "findings", "dataset"}``."""
    results, runs = {}, []  # runs: (model, optimizer text, schedule, probes of that row)
    dataset = config.dataset
    for model in config.models:
        try:
            prob = problem(config.problem_spec(dataset, model))
        except DatasetNotFound:
            dataset = config.fallback
            prob = problem(config.problem_spec(dataset, model))
        per_epoch = max(_n_train(prob) // config.batch, 1)
        steps = config.epochs * per_epoch
        r = train(
            prob,
            config.optimizers(steps),
            seeds=config.seeds,
            steps=steps,
            batch_size=config.batch,
            precision=config.precision,
            probes=make_probes("all", every=config.sharpness_every, steps_per_epoch=per_epoch),
            checkpoint_dir=_sub(checkpoints, model),
            progress=True,
        )
        results[model] = r
        for i, opt in enumerate(r.optimizers):
            sched = "cosine" if "cosine(" in opt else "constant"
            runs.append((model, opt, sched, {k: v[i] for k, v in r.probes.items()}, r, i))

    def label(run) -> str:
        return f"{run[0]}/{run[1].split('(')[0]}/{run[2]}"

    mixed, corr_pos = [], []
    for run in runs:
        model, opt, sched, p, r, i = run
        gap = p["inst_gap"]
        allowance = gap_allowance(r.train_loss[i], config.precision, config.allowance_ulps)
        pos, neg = float(np.mean(gap > allowance)), float(np.mean(gap < -allowance))
        mixed.append((label(run), pos, neg))
        corr_pos.append((label(run), float(np.nanmean(p["update_corr"]))))
    smooth_rows = []
    for model in config.models:
        for kind in ("momentum", "adamw"):
            late = {}
            for run in runs:
                if run[0] == model and run[1].startswith(kind):
                    s = run[3]["exp_smooth"]
                    late[run[2]] = float(np.nanmean(s[:, -max(1, s.shape[-1] // 10) :]))
            if {"constant", "cosine"} <= set(late):
                smooth_rows.append((f"{model}/{kind}", late["constant"], late["cosine"]))
    tracking = [(label(run), *smoothness_over_sharpness(run[3])) for run in runs]
    t_lo, t_hi = config.track_band
    n_pos = sum(c > 0 for _, c in corr_pos)
    rises = sum(cos > const for _, const, cos in smooth_rows)
    findings = [
        finding(
            "Convexity gaps have mixed sign on deep networks (some steps convex, some not)",
            "share of gaps above / below the rounding allowance: "
            + ", ".join(f"{n} {_frac(a)} / {_frac(b)}" for n, a, b in mixed),
            at_least(0.01, "smaller of the two shares", each="run").judge(
                [min(a, b) for _, a, b in mixed]
            ),
        ),
        finding(
            "The update correlation <grad f(x_t, z_t), x_t - x_{t-1}> is positive on average "
            "(the descent-lemma picture predicts negative)",
            f"positive in {n_pos} of {len(corr_pos)} runs: "
            + ", ".join(f"{n} {c:.3g}" for n, c in corr_pos),
            at_least(0.75, "share of runs with a positive mean").judge(
                n_pos / len(corr_pos) if corr_pos else float("nan")
            ),
        ),
        finding(
            "Smoothness rises as the learning rate falls: a cosine schedule ends with larger "
            "smoothness than a constant rate",
            "exp_smooth over the last 10% of steps, constant vs cosine: "
            + ", ".join(f"{n} {a:.3g} vs {b:.3g}" for n, a, b in smooth_rows),
            above(0.5, "share of (model, optimizer) pairs ending smoother under cosine").judge(
                rises / len(smooth_rows) if smooth_rows else float("nan")
            ),
            judged_at_quick=False,  # the sharpening a falling rate allows takes a long run
        ),
        finding(
            "Smoothness tracks sharpness: exp_smooth is close to the top Hessian eigenvalue of "
            "the full-batch loss where sharpness was measured",
            "median exp_smooth / sharpness (inst_smooth / sharpness) over the measurements: "
            + ", ".join(f"{n} {e:.2f} ({i:.2f})" for n, i, e in tracking),
            within(t_lo, t_hi, "median exp_smooth / sharpness", each="run").judge(
                [e for _, _, e in tracking]
            ),
        ),
    ]
    return {"results": results, "findings": findings, "dataset": dataset}


def smoothness_over_sharpness(probes: dict) -> tuple[float, float]:
    """Median over seeds and measured steps of inst_smooth / sharpness and of exp_smooth /
    sharpness (``probes``: [S, T] series of one optimizer); NaN without a measurement."""
    sharp = probes["sharpness"]
    at = np.isfinite(sharp) & (sharp > 0)
    if not at.any():
        return float("nan"), float("nan")
    return (float(np.nanmedian(probes["inst_smooth"][at] / sharp[at])),
            float(np.nanmedian(probes["exp_smooth"][at] / sharp[at])))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Edge of stability


@dataclasses.dataclass(frozen=True)
class EdgeConfig:
    """Full-batch GD on a tanh MLP at several learning rates: sharpness against 2/lr; full-batch
    Adam (``adam_lrs``) on the same problem: preconditioned sharpness against 38/lr.

    The edge-of-stability phase of a run is the ``window`` steps after its sharpness first
    reaches ``reach`` x 2/lr; "hovers" and "smoothness tracks sharpness" are judged there. With
    cross-entropy the phase ends: as the loss goes to 0 the sharpness falls (Cohen et al. 2021
    saw the same), so a window at the end of the run would judge another regime.
    """

    dataset: str = "fashion-mnist"
    fallback: str = "digits"
    n_train: int = 1000  # Cohen et al. used a 5k subset of CIFAR-10; a 1k subset here
    widths: tuple[int, ...] = (64, 64)
    lrs: tuple[float, ...] = (0.05, 0.1, 0.2)
    adam_lrs: tuple[float, ...] = (1e-3,)  # full-batch Adam: preconditioned sharpness vs 38/lr
    # Adam's first measurements are left out of the judgement: after t steps v_hat averages t
    # squared gradients, and at t = 1 P = (1 - b1)|g| makes P^-1 H huge where g is tiny.
    adam_skip: int = 50
    steps: int = 4000
    sharpness_every: int = 25
    lanczos_steps: int = 20
    seeds: int = 1
    precision: str = "fp32"
    reach: float = 0.9  # the phase starts when sharpness >= reach * 2/lr
    window: int = 800  # ... and lasts this many steps
    band: tuple[float, float] = (0.7, 1.3)  # "hovers": median sharpness / (2/lr) in this band
    track_band: tuple[float, float] = (0.5, 1.5)  # "tracks": median inst_smooth / sharpness

    @classmethod
    def quick(cls) -> EdgeConfig:
        return cls(n_train=400, lrs=(0.1, 0.4), adam_lrs=(0.004,), steps=600, sharpness_every=20,
                   window=200)  # fmt: skip

    def problem_spec(self, dataset: str) -> str:
        widths = "[" + ", ".join(map(str, self.widths)) + "]"
        extra = f", n_train={self.n_train}" if dataset in ("fashion-mnist", "mnist") else ""
        return f"{dataset}(model=mlp, widths={widths}, activation=tanh{extra})"


def edge_of_stability(config: EdgeConfig, *, checkpoints: str | None = None) -> dict:
    """Full-batch GD at each learning rate with sharpness every k steps and smoothness."""
    from optimorph.probes.trajectory import sharpness_probe

    try:
        prob, dataset = problem(config.problem_spec(config.dataset)), config.dataset
    except DatasetNotFound:
        prob, dataset = problem(config.problem_spec(config.fallback)), config.fallback
    probes = make_probes("smooth")
    probes.append(sharpness_probe(every=config.sharpness_every, lanczos_steps=config.lanczos_steps))
    r = train(
        prob,
        [f"sgd(lr={lr!r})" for lr in config.lrs],
        seeds=config.seeds,
        steps=config.steps,
        batch_size=None,  # full batch: gradient descent
        precision=config.precision,
        probes=probes,
        checkpoint_dir=_sub(checkpoints, "gd"),
        progress=True,
    )
    rows = [_edge_row(config, lr, {k: v[i] for k, v in r.probes.items()}, r.steps)
            for i, lr in enumerate(config.lrs)]  # fmt: skip
    results = {"gd": r}
    adam_rows = []
    if config.adam_lrs:
        b1 = 0.9
        results["adam"] = ra = train(
            prob, [f"adam(lr={lr!r}, b1={b1!r})" for lr in config.adam_lrs], seeds=config.seeds,
            steps=config.steps, batch_size=None, precision=config.precision, probes=probes,
            checkpoint_dir=_sub(checkpoints, "adam"), progress=True,
        )  # fmt: skip
        adam_rows = [_edge_row(config, lr, {k: v[i] for k, v in ra.probes.items()}, ra.steps,
                               key="precond_sharpness", factor=(2 + 2 * b1) / (1 - b1),
                               skip=config.adam_skip)
                     for i, lr in enumerate(config.adam_lrs)]  # fmt: skip
    lo, hi = config.band
    t_lo, t_hi = config.track_band
    phased = [row for row in rows if row["start"] is not None]
    findings = [
        finding(
            "Under full-batch GD the sharpness rises to 2/lr",
            "max sharpness / (2/lr): "
            + ", ".join(f"lr {row['lr']:g}: {row['max'] / row['edge']:.2f}" for row in rows),
            at_least(config.reach, "max sharpness / (2/lr)", each="lr").judge(
                [row["max"] / row["edge"] for row in rows]
            ),
        ),
        finding(
            "... and then hovers at 2/lr (the edge of stability)",
            f"median sharpness / (2/lr) over the {config.window} steps after it reached 2/lr: "
            + ", ".join(f"lr {row['lr']:g}: {row['hover']:.2f} (from step {row['start']})"
                        for row in phased),  # fmt: skip
            within(lo, hi, "median sharpness / (2/lr) after reaching it", each="lr").judge(
                [row["hover"] for row in rows]  # NaN where it never reached 2/lr: undecided
            ),
        ),
        finding(
            "A smaller learning rate hovers at a larger sharpness (the boundary 2/lr moves up)",
            "median sharpness in the phase: "
            + ", ".join(f"lr {row['lr']:g}: {row['hover'] * row['edge']:.3g}" for row in phased),
            above(1, "phase sharpness at an lr / at the next larger lr",
                  each="pair of neighbouring lrs").judge(
                [a["hover"] * a["edge"] / (b["hover"] * b["edge"])
                 for a, b in zip(*_by_lr(rows))]
            ),  # fmt: skip
        ),
        finding(
            "Smoothness tracks sharpness (the study's inst_smooth / exp_smooth against the top "
            "Hessian eigenvalue)",
            "in the phase, median inst_smooth / sharpness: "
            + ", ".join(f"lr {row['lr']:g}: {row['track']:.2f}" for row in phased)
            + "; exp_smooth / sharpness: "
            + ", ".join(f"lr {row['lr']:g}: {row['track_exp']:.2f}" for row in phased),
            within(t_lo, t_hi, "median inst_smooth / sharpness in the phase", each="lr").judge(
                [row["track"] for row in phased]
            ),
        ),
        finding(
            "(Cohen et al. 2021, not the study) With cross-entropy the sharpness falls again as "
            "the loss goes to 0",
            "final sharpness / (2/lr): "
            + ", ".join(f"lr {row['lr']:g}: {row['final'] / row['edge']:.2f}" for row in rows),
            None,
        ),
    ]
    if adam_rows:
        findings.append(finding(
            "(Cohen et al. 2022, not the study) Under full-batch Adam the preconditioned sharpness "
            "rises to (2 + 2 b1)/((1 - b1) lr) = 38/lr and hovers there",
            f"from step {config.adam_skip} on, max / edge: "
            + ", ".join(f"lr {row['lr']:g}: {row['max'] / row['edge']:.2f}" for row in adam_rows)
            + "; final / edge: "
            + ", ".join(f"lr {row['lr']:g}: {row['final'] / row['edge']:.2f}" for row in adam_rows)
            + f"; median / edge over the {config.window} steps after it reached the edge: "
            + ", ".join(f"lr {row['lr']:g}: {row['hover']:.2f} (from step {row['start']})"
                        if row["start"] is not None else f"lr {row['lr']:g}: never reached"
                        for row in adam_rows)
            + "; plain sharpness at the end: "
            + ", ".join(f"lr {row['lr']:g}: {row['final_plain']:.3g}" for row in adam_rows),
            all_of(
                at_least(config.reach, "max / edge", each="lr").judge(
                    [row["max"] / row["edge"] for row in adam_rows]),
                within(lo, hi, "median / edge after reaching it", each="lr").judge(
                    [row["hover"] for row in adam_rows]),
            ),
        ))  # fmt: skip
    return {"results": results, "findings": findings, "dataset": dataset}


def _edge_row(
    config: EdgeConfig, lr: float, probes: dict, steps: np.ndarray, *,
    key: str = "sharpness", factor: float = 2.0, skip: int = 0,
) -> dict:  # fmt: skip
    """One learning rate's edge-of-stability numbers (medians over seeds, then over time) for
    the probe output ``key`` against its edge ``factor / lr``, from step ``skip`` on."""
    sharp = _seed_median(probes[key])
    inst = _seed_median(probes["inst_smooth"])
    exp_s = _seed_median(probes["exp_smooth"])
    plain = _seed_median(probes["sharpness"])
    at = np.flatnonzero(np.isfinite(sharp) & (steps >= skip))
    edge = factor / lr
    reached = at[sharp[at] >= config.reach * edge]
    row = {"lr": lr, "edge": edge, "max": np.nan, "start": None, "final": np.nan,
           "final_plain": np.nan, "hover": np.nan, "track": np.nan,
           "track_exp": np.nan}  # fmt: skip
    if not at.size:  # no measurement at all (steps below skip, or every one NaN)
        return row
    row.update(max=float(np.max(sharp[at])), final=float(sharp[at[-1]]),
               final_plain=float(plain[at[-1]]))  # fmt: skip
    if reached.size:
        first = int(reached[0])
        phase = at[(at >= first) & (steps[at] <= steps[first] + config.window)]
        median = float(np.median(sharp[phase]))
        row.update(start=int(steps[first]), hover=median / edge,
                   track=float(np.nanmedian(inst[phase])) / median,
                   track_exp=float(np.nanmedian(exp_s[phase])) / median)  # fmt: skip
    return row


def _by_lr(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Neighbouring pairs (smaller lr, next larger lr) of the rows, sorted by lr."""
    ordered = sorted(rows, key=lambda row: row["lr"])
    return ordered[:-1], ordered[1:]


def _seed_median(x: np.ndarray) -> np.ndarray:
    """Median over seeds (axis 0) of a [S, T] series, NaN where no seed has a value (sharpness
    is measured every k steps only)."""
    out = np.full(x.shape[1:], np.nan)
    ok = np.isfinite(x).any(axis=0)
    out[ok] = np.nanmedian(x[:, ok], axis=0)
    return out


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _sub(checkpoints: str | None, name: str) -> str | None:
    return f"{checkpoints}/{name}" if checkpoints else None


def _seed(tree: Any, k: int) -> Any:
    import jax

    return jax.tree.map(lambda a: a[k], tree)
