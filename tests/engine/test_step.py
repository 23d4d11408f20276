"""One step: training, noise replicas, the simulation defect and the phase diagram share it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimorph
from optimorph.engine import step, train
from optimorph.equivalence.defect import visited_states
from optimorph.precision import TracedBits, precision, round_to_bits

PRECISIONS = ["fp16", "bf16", "bf16,v=fp32", "e5m2", "fp64"]
LSQ = optimorph.problem("least-squares(n=48, d=6, hetero=10)")
ADAM = "adam(lr=0.01, b2=0.99, eps=0.001)"  # b2, eps survive storage at every precision above
RUN = dict(seeds=[2], steps=40, batch_size=8, eval_every=10, progress=False)


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize("prec", PRECISIONS)
def test_replica_zero_of_a_comparison_is_bit_identical_to_a_plain_run(prec):
    plain = train(LSQ, ADAM, precision=prec, record_params=True, **RUN)
    noisy = train(LSQ, ADAM, precision=prec, record_params=True, replicas=3, **RUN)
    np.testing.assert_array_equal(noisy.train_loss, plain.train_loss)
    np.testing.assert_array_equal(noisy.trajectory, plain.trajectory)
    assert noisy.replica_distance[0, 0, -1].min() > 0, "the noisy replicas did move apart"


@pytest.mark.parametrize("prec", PRECISIONS)
def test_defect_visits_the_engines_states_bit_for_bit(prec):
    result = train(LSQ, ADAM, precision=prec, record_params=True, **RUN)
    visited = visited_states(LSQ, ADAM, prec, seed=2, steps=40, every=10, batch_size=8)
    assert [int(s.count) for _, s, _ in visited] == [0, 10, 20, 30]
    for k, (params, _, _) in enumerate(visited):
        np.testing.assert_array_equal(flat(params), result.trajectory[0, 0, k])


def test_traced_bits_policy_is_the_native_policy_on_fp16s_normal_range():
    """The phase diagram's traced-width policy runs the same step as an e11m10 policy."""
    tx = optimorph.optimizer("momentum(lr=0.05, beta=0.9)")
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal(50))}
    grads = {"w": jnp.asarray(rng.standard_normal(50))}
    native = precision("e11m10")
    a = jax.jit(lambda p, g: step.apply_update(tx, native, p, tx.init(p), None, g))(
        native.cast_params(params), native.round_grads(grads)
    )
    traced = TracedBits(jnp.asarray(10))
    b = jax.jit(lambda p, g: step.apply_update(tx, traced, p, tx.init(p), None, g))(
        traced.cast_params(params), traced.round_grads(grads)
    )
    np.testing.assert_array_equal(flat(a.params), flat(b.params))
    np.testing.assert_array_equal(flat(a.state), flat(b.state))
    assert float(round_to_bits(jnp.float64(1 + 2**-11), 10)) == 1.0


def test_batch_order_is_a_fresh_permutation_per_epoch():
    order = step.BatchOrder(n=10, batch_size=4)  # 2 steps per epoch, 2 examples dropped
    key = jax.random.key(0)
    perm, seen = order.permutation(key, 0), []
    for t in range(4):
        perm = order.advance(key, perm, jnp.asarray(t))
        seen.append(np.asarray(order.batch((jnp.arange(10),), perm, jnp.asarray(t))[0]))
    epoch0, epoch1 = np.concatenate(seen[:2]), np.concatenate(seen[2:])
    assert len(set(epoch0)) == len(set(epoch1)) == 8  # no repeats inside an epoch
    assert not np.array_equal(epoch0, epoch1)
    np.testing.assert_array_equal(epoch0, np.asarray(order.permutation(key, 0))[:8])


def test_schedule_parameters_are_marked_by_structure_and_stay_unrounded():
    spec = optimorph.resolve("sgd(lr=power_law(0.15, tau=50001, alpha=1))")
    assert spec.traced_values() == {"lr": {"lr0": 0.15, "tau": 50001.0, "alpha": 1.0}}
    hv = step.stored_hparams(spec, precision("bf16"))
    assert float(hv["lr"]["tau"]) == 50001.0  # not representable in bf16: kept exact
    assert step.numeric_hparams(optimorph.resolve("adam(b2=0.999)"))["b2"] == 0.999
    rounded = step.stored_hparams(optimorph.resolve("adam(b2=0.999)"), precision("bf16"))
    assert float(rounded["b2"]) == 1.0  # stored in bf16, as the engine stores it


@pytest.mark.parametrize(
    "spec, prec, message",
    [
        ("adam", "bf16,nu=fp32", "adam has no state slot 'nu'; its slots are count, m, v"),
        ("sgd", "fp16,v=fp32", "sgd has no state slot 'v'"),
        ("adam", "bf16,param=fp32", "no state slot 'param'"),
    ],
)
def test_precision_slots_are_checked_against_the_optimizers_state(spec, prec, message):
    with pytest.raises(ValueError, match=message):
        train(LSQ, spec, precision=prec, **RUN)


def test_precision_slots_that_exist_are_accepted():
    r = train(LSQ, ADAM, precision="bf16,v=fp32", keep_params=False, **RUN)
    assert r.config["precision"] == "bf16,v=fp32"
