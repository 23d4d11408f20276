"""optimorph.linalg: LAPACK decompositions that never run batched (jaxlib 0.10.2's thread-pool
deadlock), with every lane's result the unbatched call's, bit for bit."""

import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimorph import linalg
from optimorph.optimizers import REGISTRY, optimizer
from optimorph.probes.hessian import lanczos

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "optimorph"


def _equal(a, b):
    """Exact equality of two pytrees: structure, shape, dtype and every bit."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), strict=True)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_a_vmapped_decomposition_is_the_unbatched_call_in_every_lane(dtype):
    keys = jax.random.split(jax.random.key(0), 2)
    g = jax.random.normal(keys[0], (5, 12, 7), dtype)
    sym = g @ jnp.swapaxes(g, 1, 2) + jnp.eye(12, dtype=dtype)[None]
    rhs = jax.random.normal(keys[1], (12,), dtype)
    cases = {
        "svd": (lambda a: linalg.svd(a), g),
        "svd reduced": (lambda a: linalg.svd(a, full_matrices=False), g),
        "singular values": (lambda a: linalg.svd(a, compute_uv=False), g),
        "eigh": (linalg.eigh, sym),
        "solve": (lambda a: linalg.solve(a, rhs), sym),
        "solve matrix": (lambda a: linalg.solve(a, a[..., :3]), sym),
    }
    for name, (fn, lanes) in cases.items():
        one = jax.jit(fn)
        expected = [one(lanes[i]) for i in range(lanes.shape[0])]
        expected = jax.tree.map(lambda *xs: jnp.stack(xs), *expected)
        _equal(jax.jit(jax.vmap(fn))(lanes), expected)  # lanes of a compiled program
        _equal(jax.jit(fn)(lanes), expected)  # leading batch dimensions
        nested = jax.jit(jax.vmap(jax.vmap(fn)))(lanes.reshape(1, *lanes.shape))
        _equal(jax.tree.map(lambda x: x[0], nested), expected)
    # Only some arguments batched: the unbatched ones are shared by every lane.
    solve_lanes = jax.jit(jax.vmap(linalg.solve, in_axes=(None, 0)))(sym[0], g[:, :, 0])
    _equal(solve_lanes, jnp.stack([jax.jit(linalg.solve)(sym[0], g[i, :, 0]) for i in range(5)]))


def test_no_lapack_call_in_the_package_bypasses_optimorph_linalg():
    """A decomposition called directly would run batched under the trainer's vmap again."""
    lapack = re.compile(
        r"(jnp|jax\.numpy)\.linalg\.(svd|svdvals|eig\w*|solve|inv|pinv|lstsq|qr|cholesky|det|"
        r"slogdet|matrix_rank|tensorsolve|tensorinv|cond|matrix_norm)\b"
        r"|scipy\.linalg|lax\.linalg|linalg\.norm\([^)]*ord="
    )
    found = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "linalg.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if lapack.search(line)
    ]
    assert not found, "call these through optimorph.linalg:\n" + "\n".join(found)


def _variants():
    """Every registered optimizer at its defaults, and once with each value of each choice."""
    for name in sorted(REGISTRY):
        yield name, {}
        for h in REGISTRY[name].hparams:
            for choice in h.choices or ():
                if choice != h.default:
                    yield name, {h.name: choice}


def _batched_lapack_calls(lowered_text):
    calls = [line for line in lowered_text.splitlines() if "custom_call @lapack_" in line]
    return [c.strip()[:160] for c in calls if 'num_batch_dims = "0"' not in c]


def test_no_vmapped_optimizer_step_or_probe_makes_a_batched_lapack_call():
    """The trainer runs lanes as vmap: a LAPACK call there must still be one matrix at a time
    (num_batch_dims = 0), so jaxlib never takes its blocking thread-pool path."""
    lanes = 3
    params = {"w": jnp.ones((6, 4)) + jnp.eye(6, 4), "b": jnp.ones(4)}

    def loss(p):
        return 0.5 * jnp.sum(jnp.square(p["w"])) + jnp.sum(jnp.cos(p["b"]))

    stack = jax.tree.map(lambda x: jnp.stack([x * (1 + i) for i in range(lanes)]), params)
    bad = {}
    for name, kwargs in _variants():
        tx = optimizer(name, **kwargs)
        extra = {"value_fn": loss} if "value_fn" in REGISTRY[name].needs else {}

        def step(p, tx=tx, extra=extra):
            return tx.update(jax.grad(loss)(p), tx.init(p), p, **extra)

        calls = _batched_lapack_calls(jax.jit(jax.vmap(step)).lower(stack).as_text())
        if calls:
            bad[f"{name}{kwargs}"] = calls
    probe = jax.vmap(lambda v: lanczos(lambda u: 2.0 * u, v, 5))
    calls = _batched_lapack_calls(jax.jit(probe).lower(jnp.ones((lanes, 8))).as_text())
    if calls:
        bad["lanczos"] = calls
    example = next(iter(bad.values()), None)
    assert not bad, f"batched LAPACK calls in: {', '.join(bad)}; e.g. {example}"


# The smallest reproducer of the hang through optimorph's own code: one optimizer step per scan
# step, lanes by vmap, inside jit (the trainer's structure). Before optimorph.linalg, jaxlib 0.10.2
# left both threads of a 2-core machine's pool in lapack_sgesdd_ffi -> BlockingCounter::Wait for
# ever (0% CPU) in 4 of 5 tries with OPENBLAS_NUM_THREADS=1 (with OpenBLAS's own threads it hung
# far less often). Fixed, it takes about 10 s, most of it starting Python and compiling.
REPRODUCER = """
import jax, jax.numpy as jnp, optimorph
def run(spec, shapes, lanes, steps):
    tx = optimorph.optimizer(spec)
    def lane(key):
        def body(carry, t):
            p, s = carry
            u, s = tx.update(jax.tree.map(lambda x: jnp.sin(x + t), p), s, p)
            return (jax.tree.map(jnp.add, p, u), s), None
        p = {k: jax.random.normal(jax.random.fold_in(key, i), s) for i, (k, s) in enumerate(shapes)}
        return jax.lax.scan(body, (p, tx.init(p)), jnp.arange(steps, dtype=jnp.float32))[0][0]
    keys = jax.random.split(jax.random.key(0), lanes)
    jax.block_until_ready(jax.jit(jax.vmap(lane))(keys))
run("shampoo", [("w0", (2, 64)), ("w1", (64, 64)), ("w2", (64, 2))], 11, 100)
run("modular", [("embed", (97, 64)), ("dense0", (128, 128)), ("dense1", (128, 97))], 11, 30)
print("finished")
"""


def test_vmapped_shampoo_and_modular_steps_in_a_compiled_loop_finish():
    """Both hung for ever on jaxlib 0.10.2 (every pool thread in BlockingCounter::Wait)."""
    # The settings under which it hung most often: one OpenBLAS thread, XLA's default optimization
    # (the test config's --xla_backend_optimization_level=0 changes the thunk graph).
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "XLA_FLAGS": ""}
    try:
        out = subprocess.run(
            [sys.executable, "-c", REPRODUCER], capture_output=True, text=True, timeout=120, env=env
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the compiled loop did not finish in {e.timeout} s (hung)") from None
    assert out.returncode == 0 and "finished" in out.stdout, out.stderr[-3000:]
