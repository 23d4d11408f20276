"""float64 reference tests: 200 steps against torch.optim on a random problem, 1e-10 relative."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from optimorph.optimizers import optimizer

STEPS = 200

# (optimorph spec, torch constructor)
CASES = {
    "sgd": ("sgd(lr=0.05)", lambda p: torch.optim.SGD(p, lr=0.05)),
    "momentum": (
        "momentum(lr=0.05, beta=0.9, form='pytorch')",
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    ),
    "nesterov": (
        "nesterov(lr=0.05, beta=0.9)",
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    ),
    "adam": (
        "adam(lr=0.01, b1=0.9, b2=0.99, eps=1e-8)",
        lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.99), eps=1e-8),
    ),
    "adamw": (
        "adamw(lr=0.01, b1=0.8, b2=0.999, eps=1e-7, weight_decay=0.1)",
        lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.8, 0.999), eps=1e-7, weight_decay=0.1),
    ),
    "rmsprop": (
        "rmsprop(lr=0.01, beta=0.95, eps=1e-8)",
        lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.95, eps=1e-8),
    ),
    "adagrad": (
        "adagrad(lr=0.1, eps=1e-10)",
        lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-10),
    ),
}


def _problem(seed=0, n=64, d=12, k=3):
    """A small two-layer least-squares problem: non-quadratic, so trajectories really differ."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(n, k))
    w1 = rng.normal(size=(d, 8)) / np.sqrt(d)
    w2 = rng.normal(size=(8, k)) / np.sqrt(8)
    return x, y, {"w1": w1, "w2": w2}


def _loss_jax(params, x, y):
    h = jnp.tanh(x @ params["w1"])
    return jnp.mean((h @ params["w2"] - y) ** 2)


def _run_optimorph(spec, x, y, params):
    tx = optimizer(spec)
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    grad = jax.jit(jax.grad(_loss_jax))
    step = jax.jit(tx.update)
    for _ in range(STEPS):
        g = grad(params, x, y)
        updates, state = step(g, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params


def _run_torch(make, x, y, params):
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    opt = make(list(tp.values()))
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = torch.mean((torch.tanh(xt @ tp["w1"]) @ tp["w2"] - yt) ** 2)
        loss.backward()
        opt.step()
    return {k: v.detach().numpy() for k, v in tp.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_in_float64(name):
    spec, make = CASES[name]
    x, y, params = _problem()
    ours = _run_optimorph(spec, x, y, params)
    ref = _run_torch(make, x, y, params)
    for key in params:
        moved = np.linalg.norm(ref[key] - params[key])
        assert moved > 1e-3, "the reference must actually move, or the comparison is empty"
        np.testing.assert_allclose(np.asarray(ours[key]), ref[key], rtol=1e-10, atol=0)
