"""The trainer records each optimizer's visited states (train(visit_every=...)): the states the
one-step simulation defect replays, taken from the training run itself."""

import itertools

import jax
import numpy as np
import pytest

from optimorph.engine.trainer import TrainingError, train
from optimorph.equivalence import defect as defect_lib
from optimorph.equivalence.compare import compare
from optimorph.equivalence.defect import one_step

LSQ = "least-squares(n=64, d=8)"
ADAM = "adam(lr=0.01, b2=0.99, eps=1e-4)"
RUN = dict(seeds=2, steps=40, batch_size=8, eval_every=10, progress=False)


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def at(stacked, k):
    return jax.tree.map(lambda x: x[k], stacked)


@pytest.mark.parametrize("prec", ["fp16", "bf16", "fp32", "fp64"])
def test_visited_states_are_the_runs_states_and_one_step_continues_them(prec):
    r = train(LSQ, [ADAM, "sgd(lr=0.05)"], precision=prec, record_params=True, visit_every=10,
              **RUN)  # fmt: skip
    assert r.visit_steps.tolist() == [0, 10, 20, 30]
    for o, spec in enumerate(r.optimizers):
        params, state, grads = r.visited[o]
        for k in range(4):  # the first seed's parameters at each evaluation, bit for bit
            np.testing.assert_array_equal(flat(at(params, k)), r.trajectory[o, 0, k])
        counts = [x for x in jax.tree.leaves(state) if x.dtype == np.int32]
        assert [np.asarray(c).tolist() for c in counts] == [[0, 10, 20, 30]] * len(counts)
        assert jax.tree.structure(grads) == jax.tree.structure(params)

    every_step = train(LSQ, ADAM, precision=prec, visit_every=1, **RUN).visited[0]
    for k, k1 in itertools.pairwise(range(6)):
        p, s, g = at(every_step, k)
        new_p, new_s = one_step(ADAM, prec, p, s, g)
        np.testing.assert_array_equal(flat(new_p), flat(at(every_step[0], k1)))
        np.testing.assert_array_equal(flat(new_s), flat(at(every_step[1], k1)))


def test_visits_off_the_evaluation_grid_change_nothing_else():
    plain = train(LSQ, ADAM, record_params=True, **RUN)
    visited = train(LSQ, ADAM, record_params=True, visit_every=4, **RUN)
    assert visited.visit_steps.tolist() == list(range(0, 40, 4))
    np.testing.assert_array_equal(visited.train_loss, plain.train_loss)
    np.testing.assert_array_equal(visited.trajectory, plain.trajectory)
    assert plain.visited is None and plain.visit_steps is None


def test_one_seed_keeps_its_visits_while_the_carry_is_donated():
    # With one seed the first-seed lanes are the whole carry: they must be copies.
    r = train(LSQ, ADAM, **{**RUN, "seeds": 1}, visit_every=10, record_params=True)
    for k in range(4):
        np.testing.assert_array_equal(flat(at(r.visited[0][0], k)), r.trajectory[0, 0, k])


def test_an_interrupted_run_resumes_with_the_same_visited_states(tmp_path,
                                                                 interrupt_at_checkpoint):
    kw = dict(RUN, chunk_steps=10, visit_every=10)
    full = train(LSQ, [ADAM, "sgd(lr=0.05)"], **kw)
    disarm = interrupt_at_checkpoint(2)
    with pytest.raises(KeyboardInterrupt):
        train(LSQ, [ADAM, "sgd(lr=0.05)"], checkpoint_dir=tmp_path, **kw)
    disarm()
    resumed = train(LSQ, [ADAM, "sgd(lr=0.05)"], checkpoint_dir=tmp_path, **kw)
    for a, b in zip(full.visited, resumed.visited, strict=True):
        np.testing.assert_array_equal(flat(a), flat(b))
    again = train(LSQ, [ADAM, "sgd(lr=0.05)"], checkpoint_dir=tmp_path, **kw)  # all from disk
    for a, b in zip(full.visited, again.visited, strict=True):
        np.testing.assert_array_equal(flat(a), flat(b))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(visit_every=3, log_every=2), "multiple of log_every=2"),
        (dict(visit_every=0), "visit_every must be a positive integer"),
        (dict(visit_every=10, precision="bf16,rounding=stochastic"), "round-to-nearest"),
    ],
)
def test_bad_visit_settings_say_what_to_change(kw, message):
    with pytest.raises(TrainingError, match=message):
        train(LSQ, ADAM, **{**RUN, **kw})


def test_compare_replays_the_training_runs_states_without_running_them_again():
    defect_lib._VISIT.clear()
    c = compare("momentum(lr=0.05, beta=0.9)", "momentum(lr=0.05, beta=0.9, form='ema')",
                problem=LSQ, precision="fp32", seeds=2, steps=40, batch_size=8,
                progress=False)  # fmt: skip
    v = c.pairs["fp32"][0]
    assert v.map != "fitted" and 0 <= v.defect_ab < 1e-5 and 0 <= v.defect_ba < 1e-5
    assert not defect_lib._VISIT, "no second run compiled for the visited states"
