"""The norms anthology's experiments (seeds/001), reproduced: the computations.

* :func:`norms_least_squares` - steepest descent under l2, l_inf, l1, spectral, max-column
  (l1 -> l2) and max-row (l2 -> l_inf) norms on a least-squares problem with a matrix of weights
  (d x outputs), each norm's learning rate picked from a stated grid by a stated rule; and
  Shampoo without accumulation beside spectral steepest descent (the same steps in real
  arithmetic).
* :func:`orthogonalization` - SVD, cubic and quintic Newton-Schulz, Polar Express and Shampoo's
  inverse fourth roots on Gaussian matrices from 64 x 64 to 1024 x 1024, tall and wide, at fp32
  and bf16: the band of singular values reached, the error against a float64 SVD, the time.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from optimorph.engine import train
from optimorph.experiments.findings import above, all_of, at_least, at_most, below, finding
from optimorph.norms.orthogonalize import quality

__all__ = [
    "NormsLeastSquaresConfig",
    "OrthogonalizationConfig",
    "norms_least_squares",
    "orthogonalization",
    "select",
]


def select(result, indices: list[int]):
    """The runs of ``result`` at optimizer ``indices`` (a TrainResult of those rows only)."""
    pick = np.asarray(indices)
    return dataclasses.replace(
        result,
        optimizers=[result.optimizers[i] for i in indices],
        train_loss=result.train_loss[pick],
        evals={k: v[pick] for k, v in result.evals.items()},
        diverged_at=result.diverged_at[pick],
        final_params=[result.final_params[i] for i in indices] if result.final_params else [],
        probes={k: v[pick] for k, v in result.probes.items()},
        stalled=None if result.stalled is None else result.stalled[pick],
        replica_distance=None,
        trajectory=None if result.trajectory is None else result.trajectory[pick],
        rounded_hparams={o: m for o, m in result.rounded_hparams.items()
                         if o in {result.optimizers[i] for i in indices}},  # fmt: skip
        config=_select_config(result.config, indices),
    )


def _select_config(config: dict, indices: list[int]) -> dict:
    """The run's config with its per-optimizer lists cut to the selected rows."""
    out = dict(config)
    for key in ("optimizers", "optimizers_canonical", "state_bytes_per_param"):
        if isinstance(out.get(key), list):
            out[key] = [out[key][i] for i in indices]
    return out


@dataclasses.dataclass(frozen=True)
class NormsLeastSquaresConfig:
    """Steepest descent under six norms on matrix-valued linear regression."""

    problem: str = "least-squares(n=256, d=32, outputs=16, hetero=10, noise=0.1)"
    norms: tuple[str, ...] = ("l2", "linf", "l1", "spectral", "l1_to_l2", "l2_to_linf")
    # The tuning grid spans decades: a dual-scaled step is lr ||g||_*, whose size differs by
    # orders of magnitude between norms (||g||_1 sums every entry, ||g||_inf takes one).
    lrs: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)
    steps: int = 500
    batch: int | None = None  # full batch: the anthology's deterministic setting
    seeds: int = 3
    precision: str = "fp64"

    @classmethod
    def quick(cls) -> NormsLeastSquaresConfig:
        return cls(lrs=(1e-4, 1e-3, 0.01, 0.1), steps=100, seeds=2)


def norms_least_squares(config: NormsLeastSquaresConfig, *, checkpoints: str | None = None):
    """Every (norm, lr) of the grid; each norm's best lr by the lowest mean final train loss
    over seeds among runs that did not diverge (fixed before the runs)."""
    specs = [f"steepest(lr={lr!r}, norm='{n}')" for n in config.norms for lr in config.lrs]
    r = train(config.problem, specs, seeds=config.seeds, steps=config.steps,
              batch_size=config.batch, precision=config.precision, progress=True,
              checkpoint_dir=f"{checkpoints}/grid" if checkpoints else None)  # fmt: skip
    final = r.train_loss[:, :, -1]
    ok = (r.diverged_at < 0).all(axis=1) & np.isfinite(final).all(axis=1)
    score = np.where(ok, final.mean(axis=1), np.inf)
    k = len(config.lrs)
    best, rows = [], []
    start = float(np.mean(r.train_loss[0, :, 0]))
    for j, norm in enumerate(config.norms):
        i = j * k + int(np.argmin(score[j * k : (j + 1) * k]))
        best.append(i)
        rows.append((norm, config.lrs[i - j * k], float(score[i])))
    tuned = select(r, best)
    # Shampoo without accumulation beside unit-step spectral descent, at the unit step's own
    # tuned rate among the grid (a second, small program: few lanes).
    pair = ["shampoo(lr={}, accumulate=false, eps=0)",
            "steepest(lr={}, norm='spectral', scale='unit')"]
    unit = train(config.problem, [pair[1].format(lr) for lr in config.lrs], seeds=config.seeds,
                 steps=config.steps, batch_size=config.batch, precision=config.precision,
                 progress=True,
                 checkpoint_dir=f"{checkpoints}/unit" if checkpoints else None)  # fmt: skip
    unit_final = np.where((unit.diverged_at < 0).all(axis=1),
                          unit.train_loss[:, :, -1].mean(axis=1), np.inf)  # fmt: skip
    unit_lr = config.lrs[int(np.argmin(unit_final))]
    both = train(config.problem, [p.format(unit_lr) for p in pair], seeds=config.seeds,
                 steps=config.steps, batch_size=config.batch, precision=config.precision,
                 record_params=True, progress=True,
                 checkpoint_dir=f"{checkpoints}/pair" if checkpoints else None)  # fmt: skip
    gap = np.abs(both.trajectory[0] - both.trajectory[1])  # [S, E, P]
    scale = np.abs(both.trajectory[0]).max()
    apart = gap.max(axis=(0, 2)) > 1e-6 * max(scale, 1.0)  # per evaluation
    # Near the optimum G is tiny and U V^T of a tiny G follows its rounding: unit steps of size
    # lr then amplify ulp differences. Say where the two runs separate.
    split = f"; identical to 1e-6 up to step {int(both.eval_steps[np.argmax(apart)]) - 1}" if (
        apart.any()) else ""
    ranked = sorted(rows, key=lambda row: row[2])
    findings = [
        finding(
            "Steepest descent converges under every norm on linear regression (a tuned step)",
            f"final train loss / initial ({start:.3g}) with each norm's best lr: "
            + ", ".join(f"{nm} (lr {lr:g}) {loss / start:.2e}" for nm, lr, loss in rows),
            below(0.05, "final / initial train loss", each="norm").judge(
                [loss / start for _, _, loss in rows]
            ),
            judged_at_quick=False,  # the quick variant's 100 steps and 4 rates are too few
        ),
        finding(
            "The norm decides the convergence rate (the anthology: compare the rates)",
            "ranked by final loss: " + " < ".join(f"{nm} {loss:.3g}" for nm, _, loss in ranked)
            + f"; worst / best {ranked[-1][2] / ranked[0][2]:.3g}",
            above(2, "worst / best final loss").judge(ranked[-1][2] / ranked[0][2]),
            judged_at_quick=False,  # rates tuned on the quick variant's coarse grid
        ),
        finding(
            "Shampoo without accumulation is steepest descent under the spectral norm (unit "
            "step): the same trajectory",
            f"largest parameter difference at lr {unit_lr:g} (the unit step's best), every "
            f"seed and evaluation: {gap.max():.3g} (parameters up to {scale:.3g}; "
            f"{config.precision}){split}",
            at_most(1e-6, "largest difference / max(1, largest parameter)").judge(
                gap.max() / max(scale, 1.0)
            ),
        ),
    ]
    table = [{"norm": nm, "best_lr": lr, "final_loss": loss} for nm, lr, loss in rows]
    return {"result": tuned, "findings": findings, "tables": {"norms": _finite(table)}}


@dataclasses.dataclass(frozen=True)
class OrthogonalizationConfig:
    """Orthogonalizers against the SVD across shapes and formats."""

    methods: tuple[str, ...] = ("svd", "cubic", "quintic", "polar-express", "shampoo-roots")
    shapes: tuple[tuple[int, int], ...] = ((64, 64), (256, 256), (1024, 1024), (1024, 256),
                                           (256, 1024))  # fmt: skip
    precisions: tuple[str, ...] = ("fp32", "bf16")
    repeats: int = 5
    seed: int = 0

    @classmethod
    def quick(cls) -> OrthogonalizationConfig:
        return cls(shapes=((64, 64), (128, 32), (32, 128)), repeats=2)


def orthogonalization(config: OrthogonalizationConfig, *, checkpoints: str | None = None):
    """Every (method, shape, precision): singular-value band, error, seconds per call."""
    rows = []
    for p in config.precisions:
        for shape in config.shapes:
            for m in config.methods:
                q = quality(m, tuple(shape), p, seed=config.seed, repeats=config.repeats)
                rows.append({"method": m, "shape": f"{shape[0]}x{shape[1]}", "precision": p, **q})

    def of(method: str, precision: str) -> list[dict]:
        return [r for r in rows if r["method"] == method and r["precision"] == precision]

    findings = []
    if "quintic" in config.methods and "fp32" in config.precisions:
        # The band depends on the shape class, stated before measuring: a rectangular Gaussian
        # matrix has its smallest singular value well away from 0 (about |sqrt(m) - sqrt(n)|),
        # a square one does not, and 5 quintic steps cannot lift a singular value near 0.
        band = of("quintic", "fp32")
        rect = [r for r in band if _rows_cols(r["shape"])[0] != _rows_cols(r["shape"])[1]]
        square = [r for r in band if r not in rect]
        parts, checks = [], []
        if rect:
            lo, hi = min(r["sigma_min"] for r in rect), max(r["sigma_max"] for r in rect)
            parts.append(f"rectangular ({len(rect)} shapes) [{lo:.3f}, {hi:.3f}]")
            checks += [at_least(0.6, "rectangular sigma_min").judge(lo),
                       below(0.95, "rectangular sigma_min").judge(lo),
                       above(1.0, "rectangular sigma_max").judge(hi),
                       at_most(1.3, "rectangular sigma_max").judge(hi)]  # fmt: skip
        if square:
            lo, hi = min(r["sigma_min"] for r in square), max(r["sigma_max"] for r in square)
            parts.append(f"square ({len(square)} shapes) [{lo:.3g}, {hi:.3f}]")
            checks.append(at_most(1.3, "square sigma_max").judge(hi))
        findings.append(finding(
            "The quintic Newton-Schulz (3.4445, -4.7750, 2.0315), 5 steps, is fast but only "
            "approximate: on rectangular matrices its singular values end in 0.6..1.3; on square "
            "Gaussian matrices only the top is bounded (<= 1.3): the smallest follow the "
            "input's, which shrink toward 0 as the size grows",
            "fp32 bands: " + "; ".join(parts) + "; error vs SVD "
            + ", ".join(f"{r['shape']} {r['error']:.3f}" for r in band),
            all_of(*checks),
        ))  # fmt: skip
    if {"cubic", "svd"} <= set(config.methods) and "fp32" in config.precisions:
        cubic = of("cubic", "fp32")
        findings.append(finding(
            "The cubic iteration converges to U V^T (singular values in (0, sqrt 3)), slowly "
            "for small singular values",
            "fp32 error vs SVD after 12 steps: "
            + ", ".join(f"{r['shape']} {r['error']:.2g} (sigma_min {r['sigma_min']:.2f})"
                        for r in cubic),
            None,
        ))  # fmt: skip
    if {"polar-express", "quintic"} <= set(config.methods) and "fp32" in config.precisions:
        pe, qu = of("polar-express", "fp32"), of("quintic", "fp32")
        findings.append(finding(
            "Polar Express (per-step coefficients) is closer to U V^T than the fixed quintic at "
            "the same 5 steps",
            ", ".join(f"{a['shape']}: {a['error']:.3f} vs {b['error']:.3f}"
                      for a, b in zip(pe, qu, strict=True)),
            below(0, "Polar Express minus quintic error", each="shape").judge(
                [a["error"] - b["error"] for a, b in zip(pe, qu, strict=True)]),
        ))  # fmt: skip
    if "shampoo-roots" in config.methods and "fp32" in config.precisions:
        roots = of("shampoo-roots", "fp32")
        worst = max(r["error"] for r in roots)
        findings.append(finding(
            "Shampoo's inverse fourth roots give U V^T exactly (roots in float64)",
            f"largest fp32 error vs SVD: {worst:.2g}",
            below(1e-5, "largest fp32 error vs SVD").judge(worst),
        ))  # fmt: skip
    if "bf16" in config.precisions and "fp32" in config.precisions:
        costs = [(m, float(np.median([r["error"] for r in of(m, "bf16")])),
                  float(np.median([r["error"] for r in of(m, "fp32")])))
                 for m in config.methods]  # fmt: skip
        findings.append(finding(
            "(measured; the peers run bf16 without checking) bf16 costs accuracy: median error "
            "bf16 vs fp32",
            ", ".join(f"{m} {b:.3g} vs {f:.3g}" for m, b, f in costs),
            None,
        ))  # fmt: skip
    return {"findings": findings, "tables": {"orthogonalizers": _finite(rows)}}


def _rows_cols(shape: str) -> tuple[int, int]:
    rows, cols = shape.split("x")
    return int(rows), int(cols)


def _finite(rows: list[dict]) -> list[dict]:
    return [{k: (v if not isinstance(v, float) or math.isfinite(v) else None)
             for k, v in r.items()} for r in rows]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ModularConfig:
    """A small embedding model on modular addition, trained by four optimizers."""

    p: int = 97
    train_fraction: float = 0.5
    steps: int = 3000
    batch: int = 256
    seeds: int = 2
    # One stated rate each (departure: the anthology gives no settings); momentum 0.9 for the
    # norm-based methods, Adam's defaults otherwise.
    modular_lr: float = 0.03  # from a pilot grid {0.003, 0.01, 0.03} at 1500 steps (0.1 fails)
    muon_lr: float = 0.02
    adam_lr: float = 1e-3
    sgd_lr: float = 0.5

    @classmethod
    def quick(cls) -> ModularConfig:
        return cls(p=23, steps=300, batch=64, seeds=1)

    @property
    def problem(self) -> str:
        return f"modular-addition(p={self.p}, train_fraction={self.train_fraction!r})"

    @property
    def optimizers(self) -> list[str]:
        return [
            # Newton-Schulz, not the SVD, for U V^T: jaxlib 0.10.2's batched LAPACK SVD can
            # hang inside the compiled loop on CPU (docs/architecture.md, numerical caveats).
            f"modular(lr={self.modular_lr!r}, beta=0.9, scale='unit', "
            "orthogonalizer='polar-express')",
            f"muon(lr={self.muon_lr!r})",
            f"adam(lr={self.adam_lr!r})",
            f"sgd(lr={self.sgd_lr!r})",
        ]


def modular_norm(config: ModularConfig, *, checkpoints: str | None = None) -> dict:
    """Train and test accuracy of modular-norm descent, Muon, Adam and SGD."""
    eval_every = config.steps // 20 if config.steps % 20 == 0 else config.steps
    r = train(config.problem, config.optimizers, seeds=config.seeds, steps=config.steps,
              batch_size=config.batch, eval_every=eval_every, progress=True,
              checkpoint_dir=f"{checkpoints}/train" if checkpoints else None)  # fmt: skip
    train_acc = r.evals["train/accuracy"][:, :, -1].mean(axis=1)
    test_acc = r.evals["test/accuracy"][:, :, -1].mean(axis=1)
    names = ["modular", "muon", "adam", "sgd"]
    table = [{"optimizer": o, "train_accuracy": float(a), "test_accuracy": float(b)}
             for o, a, b in zip(r.optimizers, train_acc, test_acc, strict=True)]  # fmt: skip
    findings = [
        finding(
            "A per-layer norm (l1 -> RMS for the embedding, RMS -> RMS for dense layers, sign "
            "descent for biases) gives a working optimizer: modular-norm descent fits the task",
            f"train accuracy after {config.steps} steps: modular {train_acc[0]:.3f}",
            at_least(0.99, "modular train accuracy").judge(train_acc[0]),
            judged_at_quick=False,  # the quick variant trains 300 steps on a smaller task
        ),
        finding(
            "(measured; the anthology makes no claim) train / test accuracy of each optimizer",
            ", ".join(f"{n} {a:.3f} / {b:.3f}" for n, a, b in zip(names, train_acc, test_acc,
                                                                  strict=True)),  # fmt: skip
            None,
        ),
    ]
    return {"result": r, "findings": findings, "tables": {"accuracy": _finite(table)}}
