"""The textbook NumPy training loop of the optimizers tour: the peer optimorph is timed against.

A 2-64-64-2 ReLU MLP with a softmax cross-entropy loss, forward and backward written by hand,
SGD on the tour's power-law schedule, one minibatch per Python iteration (the loop the tour ran
for its figures). Used by the ``batch-size`` recipe to project the NumPy time of a sweep and by
``benchmarks/engine.py``.

>>> import numpy as np
>>> x = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
>>> y = (x[:, 0] > 0).astype(np.int64)
>>> losses = sgd_loop(x, y, batch=8, steps=300)
>>> bool(losses[-50:].mean() < losses[:50].mean())
True
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["sgd_loop", "steps_per_second", "WIDTHS"]

WIDTHS = (2, 64, 64, 2)


def _init(rng: np.random.Generator, widths=WIDTHS) -> list[np.ndarray]:
    params = []
    for d_in, d_out in zip(widths[:-1], widths[1:], strict=True):
        bound = 1 / np.sqrt(d_in)
        params.append(rng.uniform(-bound, bound, (d_in, d_out)).astype(np.float32))
        params.append(rng.uniform(-bound, bound, d_out).astype(np.float32))
    return params


def sgd_loop(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch: int,
    steps: int,
    lr0: float = 0.15,
    tau: float = 5e4,
    alpha: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Train the MLP with SGD for ``steps`` minibatches; returns the per-step losses."""
    rng = np.random.default_rng(seed)
    w1, b1, w2, b2, w3, b3 = _init(rng)
    n = len(x)
    perm, pos = rng.permutation(n), 0
    losses = np.empty(steps)
    for t in range(1, steps + 1):
        if pos + batch > n:
            perm, pos = rng.permutation(n), 0
        idx = perm[pos : pos + batch]
        pos += batch
        xb, yb = x[idx], y[idx]
        h1 = np.maximum(xb @ w1 + b1, 0)
        h2 = np.maximum(h1 @ w2 + b2, 0)
        z = h2 @ w3 + b3
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        losses[t - 1] = -np.mean(np.log(p[np.arange(len(yb)), yb] + 1e-30))
        dz = p
        dz[np.arange(len(yb)), yb] -= 1
        dz /= len(yb)
        dw3, db3 = h2.T @ dz, dz.sum(0)
        dh2 = (dz @ w3.T) * (h2 > 0)
        dw2, db2 = h1.T @ dh2, dh2.sum(0)
        dh1 = (dh2 @ w2.T) * (h1 > 0)
        dw1, db1 = xb.T @ dh1, dh1.sum(0)
        lr = lr0 / (1 + t / tau) ** alpha
        for w, g in ((w1, dw1), (b1, db1), (w2, dw2), (b2, db2), (w3, dw3), (b3, db3)):
            w -= lr * g
    return losses


def steps_per_second(x: np.ndarray, y: np.ndarray, batch: int, steps: int) -> float:
    """Steps per second of :func:`sgd_loop` at this batch size (one run of ``steps`` steps)."""
    start = time.perf_counter()
    sgd_loop(x, y, batch=batch, steps=steps)
    return steps / (time.perf_counter() - start)
