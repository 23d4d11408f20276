"""Generated problems: noisy two moons, stretched moons, a diagonal quadratic, least squares.

Every generator takes a data ``seed`` (default 0), distinct from the training seeds that drive
initialisation and batch order; the same arguments always give the same data. The training set and
each evaluation set draw from independent streams of ``numpy.random.SeedSequence(seed)``, so
changing ``test_n`` leaves the training set unchanged.

>>> p = two_moons(n=100, flip=0.1)
>>> p.name, p.n_train, sorted(p.evals)
('two-moons(n=100, noise=0.1, flip=0.1)', 100, ['test', 'test_noisy'])
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from optimorph.problems.base import Batch, Problem
from optimorph.problems.models import Activation, embedding_mlp, linear, mlp, n_params
from optimorph.problems.registry import check, registered
from optimorph.problems.supervised import classification_problem, regression_problem

__all__ = ["two_moons", "stretched_moons", "quadratic", "least_squares"]


def _moons(rng: np.random.Generator, n: int, noise: float) -> Batch:
    # sklearn is imported on use: importing it costs about a second.
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=noise, random_state=int(rng.integers(2**31)))
    return x.astype(np.float32), y.astype(np.int32)


def _flip(rng: np.random.Generator, y: np.ndarray, fraction: float) -> np.ndarray:
    """Exactly ``round(fraction * n)`` labels flipped (chosen without replacement), not each
    label with probability ``fraction``, so the noise level is the same for every seed."""
    flipped = y.copy()
    idx = rng.choice(len(y), size=round(fraction * len(y)), replace=False)
    flipped[idx] = 1 - flipped[idx]
    return flipped


def _check_moons(n: int, noise: float, test_n: int, widths: tuple[int, ...]) -> None:
    check(n > 0, "n", n, "n > 0")
    check(noise >= 0, "noise", noise, "noise >= 0")
    check(test_n > 0, "test_n", test_n, "test_n > 0")
    check(len(widths) > 0 and min(widths) > 0, "widths", widths, "a non-empty list of ints > 0")


@registered("two-moons", shown=("n", "noise", "flip"), validation=True)
def two_moons(
    *,
    n: int = 500,
    noise: float = 0.1,
    flip: float = 0.1,
    test_n: int = 500,
    test_sets: int = 1,
    widths: tuple[int, ...] = (64, 64),
    activation: Activation = "relu",
    seed: int = 0,
) -> Problem:
    """Two interleaving moons with noisy labels, an MLP 2-64-64-2 and cross-entropy.

    Points come from ``sklearn.datasets.make_moons`` with Gaussian noise of std ``noise``;
    exactly ``round(flip * n)`` training labels are flipped. Evaluation sets are fresh points:
    ``test`` with clean labels, ``test_noisy`` with the same flip rate. With ``test_sets=k > 1``
    there are k of each, named ``test_0 .. test_{k-1}`` and ``test_noisy_0 ..``, for a mean and a
    spread over test sets.

    Args:
      n: training points.
      noise: std of the Gaussian noise added to the points.
      flip: fraction of training labels flipped, in [0, 0.5).
      test_n: points per evaluation set.
      test_sets: number of clean (and of noisy) evaluation sets.
      widths: hidden layer widths of the MLP.
      activation: the MLP's activation.
      seed: data seed.

    >>> p = two_moons(n=50, test_sets=2)
    >>> sorted(p.evals), p.info["n_params"]
    (['test_0', 'test_1', 'test_noisy_0', 'test_noisy_1'], 4482)
    """
    _check_moons(n, noise, test_n, widths)
    check(0 <= flip < 0.5, "flip", flip, "0 <= flip < 0.5")
    check(test_sets >= 1, "test_sets", test_sets, "test_sets >= 1")
    train_seq, *test_seqs = np.random.SeedSequence(seed).spawn(1 + 2 * test_sets)
    rng = np.random.default_rng(train_seq)
    x, y = _moons(rng, n, noise)
    train = (x, _flip(rng, y, flip))
    evals = {}
    for i in range(test_sets):
        suffix = f"_{i}" if test_sets > 1 else ""
        clean_rng, noisy_rng = (np.random.default_rng(s) for s in test_seqs[2 * i : 2 * i + 2])
        evals[f"test{suffix}"] = _moons(clean_rng, test_n, noise)
        x_noisy, y_noisy = _moons(noisy_rng, test_n, noise)
        evals[f"test_noisy{suffix}"] = (x_noisy, _flip(noisy_rng, y_noisy, flip))
    return classification_problem(
        *mlp([2, *widths, 2], activation),
        train,
        evals,
        n_classes=2,
        info={"source": "sklearn.datasets.make_moons", "n_flipped": round(flip * n)},
    )


@registered("stretched-moons", shown=("n", "sx", "sy", "noise"), validation=True)
def stretched_moons(
    *,
    n: int = 500,
    sx: float = 0.1,
    sy: float = 10.0,
    noise: float = 0.0,
    test_n: int = 500,
    widths: tuple[int, ...] = (64, 64),
    activation: Activation = "relu",
    seed: int = 0,
) -> Problem:
    """Two moons with x scaled by 0.1 and y by 10 (ill-conditioned), an MLP 2-64-64-2.

    The seed paper's setting for SGD vs momentum: clean labels, no noise; SGD stalls at a
    half-plane cut where momentum finds the moons. Evaluation set ``test``: fresh points, same
    stretch.

    Args:
      n: training points.
      sx: factor on the first coordinate.
      sy: factor on the second coordinate.
      noise: std of the Gaussian noise added before stretching.
      test_n: points in the evaluation set.
      widths: hidden layer widths of the MLP.
      activation: the MLP's activation.
      seed: data seed.

    >>> x = stretched_moons(n=200).train[0]
    >>> bool(abs(x[:, 0]).max() < 0.25 and abs(x[:, 1]).max() > 5)
    True
    """
    _check_moons(n, noise, test_n, widths)
    check(sx > 0, "sx", sx, "sx > 0")
    check(sy > 0, "sy", sy, "sy > 0")
    stretch = np.array([sx, sy], np.float32)
    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    sets = {}
    for set_name, seq, size in (("train", train_seq, n), ("test", test_seq, test_n)):
        x, y = _moons(np.random.default_rng(seq), size, noise)
        sets[set_name] = (x * stretch, y)
    return classification_problem(
        *mlp([2, *widths, 2], activation),
        sets["train"],
        {"test": sets["test"]},
        n_classes=2,
        info={"source": "sklearn.datasets.make_moons", "stretch": [sx, sy]},
    )


@registered("quadratic", shown=("dim", "kappa"))
def quadratic(*, dim: int = 100, kappa: float = 100.0) -> Problem:
    """A diagonal quadratic 0.5 * sum_i lambda_i x_i^2, lambda log-spaced from 1 to kappa.

    f(x) = 0.5 * sum_i lambda_i x_i^2 with lambda_i = kappa**(i / (dim - 1)), so the Hessian's
    condition number is exactly ``kappa`` and the minimum is f(0) = 0. The start x0 ~ N(0, I)
    comes from the init key. There is no data: ``train`` is one dummy example and every step is
    full-batch. Params ``{"x": (dim,)}``; metric: loss.

    Args:
      dim: number of coordinates.
      kappa: condition number (largest over smallest curvature), >= 1.

    >>> p = quadratic(dim=3, kappa=4)
    >>> float(p.loss({"x": jnp.ones(3, jnp.float32)}, p.train))  # 0.5 * (1 + 2 + 4)
    3.5
    """
    check(dim >= 1, "dim", dim, "dim >= 1")
    check(kappa >= 1, "kappa", kappa, "kappa >= 1")
    check(dim > 1 or kappa == 1, "kappa", kappa, "kappa == 1 when dim == 1")
    curvatures = jnp.asarray(np.geomspace(1.0, kappa, dim), jnp.float32)

    def init(key: jax.Array) -> dict:
        return {"x": jax.random.normal(key, (dim,), jnp.float32)}

    def loss(params: dict, batch: Batch) -> jax.Array:
        return 0.5 * jnp.sum(curvatures * jnp.square(params["x"]))

    return Problem(
        name="quadratic",
        init=init,
        loss=loss,
        train=(np.zeros((1, 1), np.float32), np.zeros((1,), np.float32)),
        full_batch=True,
        info={"n_params": n_params(init), "source": "generated", "kappa": kappa, "optimum": 0.0},
    )


@registered("least-squares", shown=("n", "d", "hetero", "noise"), validation=True)
def least_squares(
    *,
    n: int = 200,
    d: int = 20,
    hetero: float = 1.0,
    noise: float = 0.1,
    test_n: int = 200,
    outputs: int = 1,
    seed: int = 0,
) -> Problem:
    """Linear regression whose feature scales spread over a ratio ``hetero`` (half-MSE loss).

    Features X = Z diag(s) with s_j log-spaced from 1 to ``hetero``; the training Z has its
    columns rescaled to RMS exactly 1, so column j of X has RMS exactly s_j and the ratio of the
    largest to the smallest is exactly ``hetero`` (the gradient heterogeneity knob). Targets
    y = X w* + noise * eps with w* ~ N(0, I). Model: ``x @ w`` (no bias, params
    ``{"dense0": {"w": (d, outputs)}}``: a matrix for ``outputs > 1``, what matrix norms act
    on), loss 0.5 * mean((X w - y)^2) over examples and outputs, whose gradient is
    X^T (X w - y) / (n outputs). Evaluation set ``test``: fresh draws (Z ~ N(0, 1), same s and w*).

    Args:
      n: training examples.
      d: features.
      hetero: ratio of the largest to the smallest feature scale, >= 1.
      noise: std of the target noise.
      test_n: examples in the evaluation set.
      outputs: targets per example (the width of w*).
      seed: data seed.

    >>> p = least_squares(n=50, d=4, hetero=100)
    >>> rms = (p.train[0] ** 2).mean(axis=0) ** 0.5
    >>> round(float(rms.max() / rms.min()), 3)
    100.0
    """
    check(n > 0, "n", n, "n > 0")
    check(d > 0, "d", d, "d > 0")
    check(hetero >= 1, "hetero", hetero, "hetero >= 1")
    check(noise >= 0, "noise", noise, "noise >= 0")
    check(test_n > 0, "test_n", test_n, "test_n > 0")
    check(outputs > 0, "outputs", outputs, "outputs > 0")
    w_seq, train_seq, test_seq = np.random.SeedSequence(seed).spawn(3)
    scales = np.geomspace(1.0, hetero, d)
    # One output draws exactly the single-output problem's numbers (its data is unchanged).
    shape = (d,) if outputs == 1 else (d, outputs)
    w_star = np.random.default_rng(w_seq).standard_normal(shape).reshape(d, outputs)

    def draw(seq: np.random.SeedSequence, size: int, unit_rms: bool) -> Batch:
        rng = np.random.default_rng(seq)
        z = rng.standard_normal((size, d))
        if unit_rms:
            z /= np.sqrt(np.mean(z**2, axis=0))
        x = z * scales
        eps = rng.standard_normal(size if outputs == 1 else (size, outputs))
        y = x @ w_star + noise * eps.reshape(size, outputs)
        return x.astype(np.float32), y.astype(np.float32)

    train = draw(train_seq, n, unit_rms=True)
    x64, y64 = (a.astype(np.float64) for a in train)
    residual = y64 - x64 @ np.linalg.lstsq(x64, y64, rcond=None)[0]
    return regression_problem(
        *linear(d, outputs, bias=False),
        train,
        {"test": draw(test_seq, test_n, unit_rms=False)},
        info={
            "source": "generated",
            "feature_scales": [float(scales[0]), float(scales[-1])],
            # Facts for theory checks: the Hessian X^T X / n's conditioning and the best loss.
            "hessian_condition": float(np.linalg.cond(x64.T @ x64 / n)),
            "optimum": float(0.5 * np.mean(residual**2)),
        },
    )


@registered("modular-addition", shown=("p", "train_fraction"), validation=True)
def modular_addition(
    *,
    p: int = 97,
    train_fraction: float = 0.5,
    dim: int = 64,
    width: int = 128,
    activation: Activation = "relu",
    seed: int = 0,
) -> Problem:
    """a + b mod p from the token pair (a, b): every pair once, split into train and test.

    The small algorithmic task of the grokking literature (Power et al. 2022), shipped with
    the code: p^2 examples, ``train_fraction`` of them (a seeded random subset) for training,
    the rest as ``test``. Model: an embedding table (p x dim) for both tokens, concatenated,
    then an MLP (2 dim -> width -> p); cross-entropy over the p residues.

    >>> prob = modular_addition(p=5, train_fraction=0.6)
    >>> prob.train[0].shape, prob.evals["test"][0].shape, int(prob.train[1][0]) == int(
    ...     prob.train[0][0].sum()) % 5
    ((15, 2), (10, 2), True)
    """
    check(p >= 2, "p", p, "p >= 2")
    check(0 < train_fraction < 1, "train_fraction", train_fraction, "0 < train_fraction < 1")
    check(dim > 0 and width > 0, "dim/width", (dim, width), "positive integers")
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    x = np.stack([a.ravel(), b.ravel()], axis=1).astype(np.int32)
    y = ((x[:, 0] + x[:, 1]) % p).astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_train = max(1, min(len(x) - 1, int(round(train_fraction * len(x)))))
    train, test = order[:n_train], order[n_train:]
    init, apply = embedding_mlp(p, 2, dim, [width, p], activation)
    return classification_problem(
        init,
        apply,
        (x[train], y[train]),
        {"test": (x[test], y[test])},
        n_classes=p,
        info={"source": "generated", "n_params": n_params(init)},
    )
