"""torch.optim as optimizer specs (optimorph.optimizers.external): verdicts, lanes, state view."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimorph
from optimorph.equivalence.compare import DEFAULTS, measure
from optimorph.optimizers import external, resolve
from optimorph.spec import SpecError

torch = pytest.importorskip("torch")

MLP = "two-moons(n=32, widths=[4], test_n=32)"
RUN = dict(seeds=2, steps=20, progress=False)

# torch's optimizer and the optimorph spec with the same conventions.
SAME = [
    ("torch:Adam(lr=1e-3)", "adam(lr=1e-3)"),
    ("torch:AdamW(lr=1e-3)", "adamw(lr=1e-3, weight_decay=0.01)"),
    ("torch:SGD(lr=0.05, momentum=0.9)", "momentum(lr=0.05, beta=0.9, form='pytorch')"),
    ("torch:RMSprop(lr=1e-3)", "rmsprop(lr=1e-3, beta=0.99, eps=1e-8)"),
]
# Adagrad and Nesterov: step for step below (a training program per optimizer and precision
# costs ~8 s of CPU here; the implementations recipe measures their d/floor on the MLP). Not
# matched at all: NAdam (torch's momentum schedule has no optimorph form; even momentum_decay=0
# leaves mu_t = b1 / 2, d/floor ~1e5 at fp32) and RAdam (optimorph's radam is p-equivalent to
# torch's at fp32, d/floor ~1, but not at fp64, ~2e7: eps is added to sqrt(v_hat) there, to
# sqrt(v) in torch); MATCH_TORCH says "none" for both.
STEP_FOR_STEP = [
    ("torch:Adagrad", external.MATCH_TORCH["Adagrad"][0]),  # as `--match torch` prints it
    ("torch:SGD(lr=0.05, momentum=0.9, nesterov=True)", "nesterov(lr=0.05, beta=0.9)"),
]


def _ratios(runs, i, j, precision):
    """compare's noise-floor rule: the median over seeds of d / max(N_A, N_B, u ||theta||),
    its maximum over evaluations after step 0."""
    r = runs.result
    u = optimorph.precision(precision).unit_roundoff
    d = np.linalg.norm(r.trajectory[i] - r.trajectory[j], axis=-1)
    floor = np.maximum.reduce([runs.floor[i], runs.floor[j], u * runs.norm[i]])
    ratio = np.where(d == 0, 0.0, d / floor)[:, 1:]
    return float(np.max(np.median(ratio, axis=0)))


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_torch_matches_the_optimorph_spec_with_its_conventions(precision):
    specs = [s for pair in SAME for s in pair]
    runs = measure(optimorph.problem(MLP), specs, precision=precision, **RUN)
    for k, (a, b) in enumerate(SAME):
        ratio = _ratios(runs, 2 * k, 2 * k + 1, precision)
        assert ratio <= DEFAULTS["C"], (a, b, precision, ratio)
        # and not trivially: the runs moved
        assert np.linalg.norm(runs.result.trajectory[2 * k, 0, -1] - runs.result.trajectory[
            2 * k, 0, 0]) > 0  # fmt: skip


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
@pytest.mark.parametrize("a, b", STEP_FOR_STEP)
def test_torch_takes_the_steps_of_its_match_torch_spec(a, b, precision):
    """Ten steps of diagnosis's crafted gradients (1, 1e-6, 0, -0.01, one coordinate each) from
    the same parameters: every step and every aligned state slot within 4 ulps."""
    from optimorph.equivalence.diagnosis import trace

    ta, tb = trace(a, precision), trace(b, precision)
    u = optimorph.precision(precision).unit_roundoff
    assert set(ta.slots) == set(tb.slots) and np.abs(ta.updates[:, 0]).min() > 0
    for x, y in [(ta.updates, tb.updates)] + [(ta.slots[r], tb.slots[r]) for r in ta.slots]:
        scale = 2 * u * np.maximum(np.abs(x), np.abs(y))
        assert np.all(np.abs(x - y) <= 4 * scale), (a, b, precision, x, y)


def test_the_match_torch_table_names_no_spec_for_nadam_and_radam():
    assert external.MATCH_TORCH["NAdam"][0] == external.MATCH_TORCH["RAdam"][0] == "none"
    assert "not at fp64" in external.MATCH_TORCH["RAdam"][1]


def test_torch_code_paths_agree_at_bf16():
    paths = ["torch:Adam(lr=1e-3, foreach=False)", "torch:Adam(lr=1e-3, foreach=True)",
             "torch:Adam(lr=1e-3, fused=True)"]  # fmt: skip
    runs = measure(optimorph.problem(MLP), paths, precision="bf16", **RUN)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert _ratios(runs, i, j, "bf16") <= DEFAULTS["C"], (paths[i], paths[j])


def test_the_state_is_named_as_torch_names_it():
    p = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
    assert resolve("torch:Adam").build().init(p)._fields == ("count", "exp_avg", "exp_avg_sq")
    assert resolve("torch:RMSprop").build().init(p)._fields == ("count", "square_avg")
    adagrad = resolve("torch:Adagrad(initial_accumulator_value=0.25)").build().init(p)
    assert adagrad._fields == ("count", "sum") and float(adagrad.sum["w"][0, 0]) == 0.25
    nadam = resolve("torch:NAdam").build()
    state = nadam.update(p, nadam.init(p), p)[1]
    assert state._fields == ("count", "exp_avg", "exp_avg_sq", "mu_product")
    mu = external.export_state(state)["mu_product"]["b"]
    assert mu.dtype == np.float32 and 0.4 < float(mu) < 0.5  # b1 (1 - 0.5 * 0.96^0.004)
    # a slot override names torch's slot
    policy = optimorph.precision("bf16,exp_avg_sq=fp32")
    policy.check_slots(resolve("torch:Adam").build().init(p), "torch:Adam")


def test_lanes_compute_what_single_runs_compute():
    tx = resolve("torch:Adam(lr=0.01, fused=True)").build()
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}
    grads = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}
    state = jax.vmap(tx.init)(params)
    step = jax.jit(jax.vmap(tx.update))
    u1, s1 = step(grads, state, params)
    u2, _ = step(grads, s1, params)
    for k in range(3):
        one = jax.tree.map(lambda x, k=k: x[k], (grads, state, params))
        v1, t1 = jax.jit(tx.update)(*one)
        v2, _ = jax.jit(tx.update)(one[0], t1, one[2])
        assert np.array_equal(v1["w"], u1["w"][k]) and np.array_equal(v2["w"], u2["w"][k])


def _grads(rng, n):
    return [{"w": jnp.asarray(rng.normal(size=5), jnp.float32)} for _ in range(n)]


def test_the_state_view_round_trips_and_continues_in_torch():
    tx = resolve("torch:Adam(lr=0.01, betas=(0.8, 0.99))").build()
    grads = _grads(np.random.default_rng(1), 6)
    params = {"w": jnp.linspace(-1, 1, 5, dtype=jnp.float32)}
    step = jax.jit(tx.update)

    def run(params, state, gs):
        out = []
        for g in gs:
            u, state = step(g, state, params)
            params = optimorph.precision("fp32").cast_params(
                jax.tree.map(lambda p, u: p.astype(jnp.float64) + u, params, u))
            out.append(params["w"])
        return params, state, out

    p3, s3, _ = run(params, tx.init(params), grads[:3])
    _, _, straight = run(p3, s3, grads[3:])
    view = external.export_state(s3)
    assert set(view) == {"step", "exp_avg", "exp_avg_sq"} and view["step"] == 3
    again = external.import_state(tx.init(params), view)
    _, _, resumed = run(p3, again, grads[3:])
    assert all(np.array_equal(a, b) for a, b in zip(straight, resumed, strict=True))
    # the same state loaded into a real torch.optim.Adam continues to the same bits
    opt, (w,) = external.to_torch(tx, s3, p3)
    for g, want in zip(grads[3:], straight, strict=True):
        w.grad = torch.from_numpy(np.array(g["w"]))
        opt.step()
        assert np.array_equal(w.detach().numpy(), np.asarray(want))


def test_a_torch_spec_without_torch_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(SpecError, match=r"pip install 'optimorph\[torch\]'"):
        resolve("torch:Adam(lr=1e-3)")


def test_bad_torch_specs_are_one_line_errors():
    with pytest.raises(SpecError, match="torch:LBFGS: not supported; one of Adam"):
        resolve("torch:LBFGS")
    with pytest.raises(SpecError, match="torch:Adam: .*unexpected keyword argument 'beta1'"):
        resolve("torch:Adam(beta1=0.9)")


def test_optax_factories_need_no_opt_in():
    spec = resolve("optax:adam(1e-3)")
    assert spec.entry is None and spec.defaults["b1"] == 0.9
