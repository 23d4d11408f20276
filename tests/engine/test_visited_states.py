"""The trainer records each optimizer's visited states (train(visit_every=...)): the states the
one-step simulation defect replays, taken from the training run itself."""

import itertools

import jax
import numpy as np
import pytest

from optimorph.engine.step import seed_keys
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
        (dict(visit_every=10, precision="bf16,kahan=true"), "no Kahan compensation"),
    ],
)
def test_bad_visit_settings_say_what_to_change(kw, message):
    with pytest.raises(TrainingError, match=message):
        train(LSQ, ADAM, **{**RUN, **kw})


# Policies that draw random numbers: the whole step, a state slot's format, and the gradient's
# alone (a random transform; a visit holds the gradient already rounded, so the replayed step
# draws nothing and only the first two depend on the key).
KEYED = [("fp32,rounding=stochastic", True),
         ("bf16,state=fp32,m=mxfp8e4m3(rounding=stochastic),grads=mxfp4(rounding=stochastic)",
          True),
         ("fp32,grads=mxfp8e4m3(transform=rht),v=bnb8(block=64)", False)]  # fmt: skip


@pytest.mark.parametrize("prec, step_draws", KEYED)
def test_keyed_policies_replay_their_visits_with_the_runs_draws(prec, step_draws):
    r = train(LSQ, ADAM, precision=prec, visit_every=1, **{**RUN, "seeds": [3, 5]})
    every_step = r.visited[0]
    key = seed_keys(3).rounding  # the first seed's: visits are recorded from it
    for k, k1 in itertools.pairwise(range(5)):
        p, s, g = at(every_step, k)
        new_p, new_s = one_step(ADAM, prec, p, s, g, t=k, rounding_key=key)
        np.testing.assert_array_equal(flat(new_p), flat(at(every_step[0], k1)))
        np.testing.assert_array_equal(flat(new_s), flat(at(every_step[1], k1)))
    # Another seed's draws are another step: the replay above did use the key.
    p, s, g = at(every_step, 2)
    other = one_step(ADAM, prec, p, s, g, t=2, rounding_key=seed_keys(5).rounding)
    same = np.array_equal(flat(other), flat((at(every_step[0], 3), at(every_step[1], 3))))
    assert same != step_draws
    with pytest.raises(ValueError, match="draws random numbers.*rounding_key="):
        one_step(ADAM, prec, p, s, g)


def test_compare_replays_the_training_runs_states_without_running_them_again(monkeypatch):
    def second_run(*args, **kwargs):
        raise AssertionError("the visited states were trained a second time")

    monkeypatch.setattr(defect_lib, "_visit", second_run)
    c = compare("momentum(lr=0.05, beta=0.9)", "momentum(lr=0.05, beta=0.9, form='ema')",
                problem=LSQ, precision="fp32", seeds=2, steps=40, batch_size=8,
                progress=False)  # fmt: skip
    v = c.pairs["fp32"][0]
    assert v.map != "fitted" and 0 <= v.defect_ab < 1e-5 and 0 <= v.defect_ba < 1e-5


def test_a_keyed_policy_is_judged_with_common_random_numbers():
    # Adam and AdamW without decay are one computation: with the run's draws replayed for both,
    # the defect is exactly 0 under stochastic rounding of the gradient, as at round to nearest.
    prec = "bf16,state=fp32,grads=mxfp4(rounding=stochastic,transform=rht)"
    c = compare(ADAM, ADAM.replace("adam(", "adamw(weight_decay=0, "), problem=LSQ,
                precision=prec, seeds=2, steps=40, batch_size=8, progress=False)  # fmt: skip
    v = c.pairs[prec][0]
    assert v.equivalent and v.distance_ratio == 0
    assert v.defect_ab == 0 and v.defect_ba == 0
    assert 0 < v.intrinsic_error_a == v.intrinsic_error_b < 1


@pytest.mark.parametrize("prec", ["bf16,rounding=stochastic", "fp32,kahan=true"])
def test_compare_refuses_a_policy_without_a_noise_floor_before_training(prec, monkeypatch):
    monkeypatch.setattr("optimorph.equivalence.compare.measure", None)  # training would fail
    with pytest.raises(ValueError, match="rounding=nearest without kahan"):
        compare(ADAM, "sgd(lr=0.05)", problem=LSQ, precision=prec, seeds=2, steps=40)
