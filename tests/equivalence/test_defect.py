"""The one-step simulation defect: exact maps give rounding-sized defects, fitted ones do not."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimorph.engine.trainer import train
from optimorph.equivalence import defect as defect_lib
from optimorph.equivalence.defect import one_step, simulation_defect, visited_states
from optimorph.precision import FP16, FP32
from optimorph.problems import problem

LSQ = problem("least-squares(n=64, d=8)")
RUN = {"steps": 100, "every": 10, "batch_size": 16}
FORMS = [("pytorch", "ema"), ("pytorch", "heavy_ball"), ("ema", "heavy_ball")]


def momentum(form):
    return f"momentum(lr=0.05, beta=0.9, form='{form}')"


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def test_visited_states_are_the_engines_states():
    # Same seed -> same init and batches, same rounding: bit for bit the engine's trajectory.
    result = train(
        LSQ,
        momentum("pytorch"),
        seeds=[3],
        steps=50,
        batch_size=16,
        precision="fp16",
        eval_every=10,
        record_params=True,
        progress=False,
    )
    visited = visited_states(
        LSQ, momentum("pytorch"), "fp16", seed=3, steps=50, every=10, batch_size=16
    )
    assert [int(s.count) for _, s, _ in visited] == [0, 10, 20, 30, 40]
    for k, (params, state, grads) in enumerate(visited):
        assert params["dense0"]["w"].dtype == state.m["dense0"]["w"].dtype == np.float16
        assert grads["dense0"]["w"].dtype == np.float16
        np.testing.assert_array_equal(flat(params), result.trajectory[0, 0, k])


def test_one_step_continues_the_run():
    visited = visited_states(LSQ, "adam(lr=0.01, b2=0.99)", "bf16", steps=4, every=1, batch_size=16)
    for (params, state, grads), (params_next, state_next, _) in itertools.pairwise(visited):
        new_params, new_state = one_step("adam(lr=0.01, b2=0.99)", "bf16", params, state, grads)
        np.testing.assert_array_equal(flat(new_params), flat(params_next))
        np.testing.assert_array_equal(flat(new_state), flat(state_next))


@pytest.mark.parametrize("a, b", FORMS)
def test_momentum_forms_defect_is_float64_rounding(a, b):
    d = simulation_defect(momentum(a), momentum(b), LSQ, "fp64", **RUN)
    assert d.map_kind == "exact" and d.residual is None and len(d.ab) == len(d.ba) == 10
    for value in (d.ab_max, d.ba_max):
        assert 0.0 <= value < 1e-14
    assert d.ab_median <= d.ab_max and d.ba_median <= d.ba_max


@pytest.mark.parametrize("a, b", FORMS)
def test_momentum_forms_defect_at_fp16_is_of_the_order_of_the_unit_roundoff(a, b):
    d = simulation_defect(momentum(a), momentum(b), LSQ, "fp16", **RUN)
    u = FP16.unit_roundoff
    for value in (d.ab_max, d.ba_max):
        assert u / 20 < value < 10 * u  # rounding shows (not zero) and stays rounding-sized
    assert d.kappa_phi == d.kappa_psi


def test_adam_without_memory_is_signsgd_at_fp32_to_a_fraction_of_an_ulp():
    # Eager, g / sqrt(g^2) is exactly +-1 (IEEE); under jit XLA computes the division another
    # way and the update is sometimes 1 ulp off -lr sign(g): a defect far below fp32's unit
    # roundoff, in a few states only.
    d = simulation_defect(
        "adam(lr=0.01, b1=0, b2=0, eps=0)", "signsgd(lr=0.01)", LSQ, "fp32", **RUN
    )
    assert d.map_kind == "exact" and d.dropped == ("m", "v")
    assert d.ab_max <= FP32.unit_roundoff / 8 and d.ba_max <= FP32.unit_roundoff / 8
    assert d.ab_median == d.ba_median == 0.0


def test_adam_with_b1_zero_is_rmsprop_at_fp64():
    d = simulation_defect(
        "adam(lr=0.01, b1=0, b2=0.99, bias_correction=False)",
        "rmsprop(lr=0.01, beta=0.99)",
        LSQ,
        "fp64",
        **RUN,
    )
    assert d.map_kind == "exact" and d.dropped == ("m",) and d.kappa_phi == 1.0
    assert d.ab_max <= 1e-15 and d.ba_max <= 1e-15


def test_sgd_and_signsgd_are_far_apart_on_a_heterogeneous_problem():
    d = simulation_defect(
        "sgd(lr=1e-4)",
        "signsgd(lr=1e-4)",
        "least-squares(hetero=100)",
        "fp64",
        steps=50,
        every=10,
    )
    assert d.map_kind == "fitted" and d.residual > 0.1
    assert d.ab_max > 1e-2 and d.ba_max > 1e-2


def test_defect_refuses_kahan_and_bad_steps():
    with pytest.raises(ValueError, match="without kahan"):
        simulation_defect("sgd", "sgd", LSQ, "fp32,kahan=true", steps=10, every=5)
    with pytest.raises(ValueError, match="divide"):
        visited_states(LSQ, "sgd", "fp32", steps=10, every=3)


@pytest.mark.parametrize("prec", ["fp32,v=bnb8(block=64)", "fp32,m=ao4(block=32)",
                                  "fp32,rounding=stochastic"])  # fmt: skip
def test_an_optimizer_simulates_itself_exactly_under_block_and_random_formats(prec):
    # phi = identity: the mapped state is the stored one, so rounding it again changes nothing,
    # provided each visited state's blocks are its own (a code map's blocks run over the
    # flattened tensor) and the replay draws the run's random numbers.
    d = simulation_defect("adam(lr=0.01)", "adam(lr=0.01)", LSQ, prec, steps=40, every=10,
                          batch_size=16)  # fmt: skip
    assert d.map_kind == "exact" and d.ab_max == 0 and d.ba_max == 0


@pytest.mark.parametrize(
    "a, b", [(momentum("pytorch"), momentum("ema")), ("adam(lr=0.01)", "rmsprop(lr=0.01)")]
)
def test_a_repeated_defect_compiles_nothing(a, b):
    # The exact map is built again and the fitted one refitted on equal states: the second call
    # finds every program (steppers, visited-state runs, roundings) compiled, and the numbers
    # are the same.
    run = {"steps": 20, "every": 10, "batch_size": 16}
    first = simulation_defect(a, b, LSQ, "fp32", **run)
    compiled = []

    def count(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(duration)

    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        again = simulation_defect(a, b, LSQ, "fp32", **run)
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert again == first and first.map_kind == ("exact" if "momentum" in a else "fitted")
    assert compiled == []


def test_unstack_slices_exactly_keeping_dtypes_weak_types_and_keys():
    stacked = {
        "bf16": jnp.arange(6, dtype=jnp.bfloat16).reshape(3, 2),
        "count": jnp.arange(3, dtype=jnp.int32),
        "weak": jax.jit(lambda: jnp.broadcast_to(1.5, (3,)))(),
        "key": jax.random.split(jax.random.key(0), 3),
    }
    assert stacked["weak"].weak_type
    for i, row in enumerate(defect_lib.unstack(stacked)):
        for name, x in row.items():
            want = stacked[name][i]
            assert isinstance(x, jax.Array) and x.dtype == want.dtype and x.shape == want.shape
            assert getattr(x, "weak_type", None) == getattr(want, "weak_type", None)
            if name == "key":
                x, want = jax.random.key_data(x), jax.random.key_data(want)
            np.testing.assert_array_equal(np.asarray(x), np.asarray(want))
