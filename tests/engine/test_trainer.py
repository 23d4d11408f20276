"""The compiled trainer against a plain Python loop, and its grid, divergence and resume paths."""

import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimorph
from optimorph.engine import TrainingError, train, trainer
from optimorph.probes import Probe


def _reference_run(prob, spec, seed, steps, batch):
    """The same run written as the textbook loop: per-epoch permutation from the seed's key."""
    init_key, data_key, _ = jax.random.split(jax.random.key(seed), 3)
    params = prob.init(init_key)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    tx = optimorph.optimizer(spec)
    state = tx.init(params)
    x, y = (jnp.asarray(a, jnp.float64) for a in prob.train)
    n = x.shape[0]
    per_epoch = n // batch
    losses = []
    for t in range(steps):
        epoch, pos = divmod(t, per_epoch)
        if pos == 0:
            perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), n)
        idx = perm[pos * batch : (pos + 1) * batch]
        loss, g = jax.value_and_grad(prob.loss)(params, (x[idx], y[idx]))
        losses.append(float(loss))
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, np.array(losses)


def test_matches_a_python_loop_in_float64():
    prob = optimorph.problem("least-squares(n=40, d=5, hetero=10)")
    spec = "momentum(lr=0.02, beta=0.9)"
    result = train(
        prob,
        spec,
        seeds=[3],
        steps=30,
        batch_size=8,
        precision="fp64",
        eval_every=10,
        progress=False,
    )
    ref_params, ref_losses = _reference_run(prob, spec, seed=3, steps=30, batch=8)
    np.testing.assert_allclose(result.train_loss[0, 0], ref_losses, rtol=1e-12)
    for ours, ref in zip(jax.tree.leaves(result.final_params[0]), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(ours[0], ref, rtol=1e-12)


def test_grid_lanes_equal_separate_runs_and_compile_once(monkeypatch):
    builds = []
    original = trainer._build_programs
    monkeypatch.setattr(trainer, "_build_programs", lambda *a: builds.append(1) or original(*a))
    trainer._PROGRAMS.clear()
    prob = optimorph.problem("two-moons(n=100)")
    grid = [f"adam(lr={lr}, b1={b1})" for lr in (1e-3, 3e-3) for b1 in (0.8, 0.9)]
    kw = dict(seeds=2, steps=40, batch_size=10, precision="fp64", eval_every=20, progress=False)
    together = train(prob, grid, **kw)
    assert len(builds) == 1, "a grid of numbers must share one compiled program"
    for i, spec in enumerate(grid):
        alone = train(prob, spec, **kw)
        np.testing.assert_allclose(together.train_loss[i], alone.train_loss[0], rtol=1e-13)


def test_a_repeated_call_with_replicas_and_tracked_series_compiles_nothing(monkeypatch):
    """What measure() asks for (noise replicas, the trajectory, stagnation) adds the engine's
    own probes; a second identical call reuses the compiled programs (each new probe object
    used to make a new program: 6 s of compilation per call for the proposal16 CNN)."""
    builds = []
    original = trainer._build_programs
    monkeypatch.setattr(trainer, "_build_programs", lambda *a: builds.append(1) or original(*a))
    prob = optimorph.problem("two-moons(n=100)")
    kw = dict(seeds=2, steps=20, batch_size=10, replicas=1, record_params=True,
              track_stalled=True, progress=False)  # fmt: skip
    first = train(prob, "adam(lr=1e-3)", **kw)
    second = train(prob, "adam(lr=1e-3)", **kw)
    assert len(builds) == 1
    np.testing.assert_array_equal(first.trajectory, second.trajectory)


def test_seeds_pair_initialisation_and_batches_across_optimizers():
    r = train(
        "two-moons(n=100)",
        ["sgd(lr=0.1)", "adam(lr=1e-3)"],
        seeds=3,
        steps=10,
        batch_size=10,
        progress=False,
    )
    # Step-1 loss is taken before any update: same params and batch for both optimizers.
    np.testing.assert_array_equal(r.train_loss[0, :, 0], r.train_loss[1, :, 0])
    assert len(set(r.train_loss[0, :, 0].tolist())) == 3, "different seeds, different runs"


def test_divergence_is_reported_per_run_not_raised():
    r = train(
        "quadratic(dim=4, kappa=100)",
        ["sgd(lr=0.01)", "sgd(lr=5.0)"],
        seeds=2,
        steps=400,
        progress=False,
    )
    assert (r.diverged_at[0] == -1).all()
    assert (r.diverged_at[1] > 0).all() and (r.diverged_at[1] < 400).all()
    assert [d[0] for d in r.diverged()] == ["sgd(lr=5.0)"] * 2


def test_interrupted_run_resumes_to_the_same_result(tmp_path, interrupt_at_checkpoint):
    kw = dict(seeds=2, steps=60, batch_size=10, eval_every=10, chunk_steps=20, progress=False)
    full = train("two-moons(n=100)", "sgd(lr=0.1)", **kw)

    disarm = interrupt_at_checkpoint(2)
    with pytest.raises(KeyboardInterrupt):
        train("two-moons(n=100)", "sgd(lr=0.1)", checkpoint_dir=tmp_path, **kw)
    disarm()
    resumed = train("two-moons(n=100)", "sgd(lr=0.1)", checkpoint_dir=tmp_path, **kw)
    np.testing.assert_array_equal(resumed.train_loss, full.train_loss)
    for key in full.evals:
        np.testing.assert_array_equal(resumed.evals[key], full.evals[key])


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler for the test (a background job starts with SIGINT ignored)."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers live in the main thread")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_a_chunk_stops_after_it_with_a_checkpoint(tmp_path, python_sigint):
    """A SIGINT while a chunk runs takes effect when it ends: a checkpoint of that chunk, then
    KeyboardInterrupt; the resumed run is the uninterrupted one, and Python's handler is back."""
    kw = dict(seeds=2, steps=60, batch_size=10, eval_every=10, chunk_steps=20, progress=False)
    full = train("two-moons(n=100)", "sgd(lr=0.1)", **kw)
    fired = []

    def fire(t):  # from inside the compiled chunk, at step 25 of the chunk 20..40
        if int(t) == 25 and not fired:
            fired.append(int(t))
            os.kill(os.getpid(), signal.SIGINT)

    def update(values, state):
        jax.debug.callback(fire, values.t)
        return state, {}

    signaller = Probe("signaller", lambda params: (), update, outputs=("unused",))
    with pytest.raises(KeyboardInterrupt):
        train("two-moons(n=100)", "sgd(lr=0.1)", checkpoint_dir=tmp_path, probes=[signaller],
              **kw)  # fmt: skip
    assert fired == [25]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    (ckpt,) = tmp_path.glob("*.npz")
    with np.load(ckpt) as z:  # the chunk the signal landed in ran to its end and was saved
        assert int(z["done"]) == 40
    resumed = train("two-moons(n=100)", "sgd(lr=0.1)", checkpoint_dir=tmp_path,
                    probes=[signaller], **kw)  # fmt: skip
    np.testing.assert_array_equal(resumed.train_loss, full.train_loss)


def test_a_second_ctrl_c_stops_at_once(python_sigint):
    from optimorph.engine import interrupts

    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupts.requested()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # not reached: the second signal raises here
        pytest.fail("the second SIGINT did not raise")
    assert not interrupts.requested()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_dropped_in_a_del_still_stops_at_the_safe_point(python_sigint):
    """Its KeyboardInterrupt raised inside a ``__del__`` is printed and dropped by Python; the
    request stays recorded, so the chunk's end still stops the run."""
    import sys

    from optimorph.engine import interrupts

    class Interrupted:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    dropped, hook = [], sys.unraisablehook
    sys.unraisablehook = lambda unraisable: dropped.append(unraisable.exc_type)
    try:
        with pytest.raises(KeyboardInterrupt), interrupts.deferred():
            signal.raise_signal(signal.SIGINT)  # the first: recorded
            Interrupted()  # the second: raised in __del__ and dropped
            assert dropped == [KeyboardInterrupt]
            assert interrupts.requested()
            interrupts.raise_if_requested()  # the safe point
            pytest.fail("the request was lost")
    finally:
        sys.unraisablehook = hook
    assert not interrupts.requested()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_low_precision_parameters_stay_in_their_format():
    r = train(
        "two-moons(n=100)",
        "adam(lr=1e-2)",
        steps=20,
        batch_size=10,
        precision="params=bf16,state=fp32",
        progress=False,
    )
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(r.final_params[0]))
    assert np.isfinite(r.train_loss).all()


def test_bf16_counter_stalls_bias_correction_at_256():
    """A bf16 step counter stops at 256; the run still completes and records it."""
    prob = optimorph.problem("quadratic(dim=2, kappa=2)")
    a = train(prob, "adam(lr=1e-3)", steps=400, precision="fp64", progress=False)
    b = train(prob, "adam(lr=1e-3)", steps=400, precision="fp64,count=bf16", progress=False)
    np.testing.assert_array_equal(a.train_loss[0, 0, :257], b.train_loss[0, 0, :257])
    assert not np.array_equal(a.train_loss[0, 0, 300:], b.train_loss[0, 0, 300:])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=0), "steps must be a positive integer"),
        (dict(steps=10, eval_every=3), "must divide steps"),
        (dict(steps=10, batch_size=-1), "batch_size must be a positive integer"),
        (dict(steps=10, seeds=[]), "at least one seed"),
    ],
)
def test_bad_arguments_get_one_clear_error(kwargs, match):
    with pytest.raises(TrainingError, match=match):
        train("quadratic(dim=2)", "sgd", progress=False, **kwargs)


def test_stochastic_rounding_is_seeded_and_kahan_beats_stagnation():
    """bf16 params with a tiny rate stall under round-to-nearest; Kahan and SR keep moving."""
    prob = optimorph.problem("quadratic(dim=16, kappa=10)")
    kw = dict(seeds=1, steps=300, progress=False)
    spec = "sgd(lr=1e-3)"
    exact = train(prob, spec, precision="fp32", **kw).train_loss[0, 0, -1]
    stalled_run = train(prob, spec, precision="bf16", track_stalled=True, **kw)
    nearest = stalled_run.train_loss[0, 0, -1]
    assert stalled_run.stalled[0, 0, -50:].mean() > 0.5, "bf16 absorbs most tiny updates"
    fp32 = train(prob, spec, precision="fp32", track_stalled=True, **kw)
    assert fp32.stalled[0, 0].mean() < 0.05
    kahan = train(prob, spec, precision="bf16,kahan=true", **kw).train_loss[0, 0, -1]
    sr1 = train(prob, spec, precision="bf16,rounding=stochastic", **kw).train_loss[0, 0]
    sr2 = train(prob, spec, precision="bf16,rounding=stochastic", **kw).train_loss[0, 0]
    np.testing.assert_array_equal(sr1, sr2)  # reproducible from the seed
    assert abs(kahan - exact) < 0.1 * abs(nearest - exact)
    assert abs(sr1[-1] - exact) < 0.5 * abs(nearest - exact)


def test_noise_replicas_give_a_rounding_sized_floor_and_trajectories():
    prob = optimorph.problem("least-squares(n=40, d=6, hetero=10)")
    kw = dict(seeds=2, steps=60, batch_size=8, eval_every=10, progress=False)
    plain = train(prob, "adam(lr=1e-2)", precision="fp64", **kw)
    floors = {}
    for p in ("fp64", "fp32", "e5m10"):
        r = train(prob, "adam(lr=1e-2)", precision=p, replicas=4, record_params=True, **kw)
        assert r.replica_distance.shape == (1, 2, 7, 4)
        final = np.concatenate([np.ravel(x[0]) for x in jax.tree.leaves(r.final_params[0])])
        assert r.trajectory.shape == (1, 2, 7, final.size)  # at 7 evaluations
        np.testing.assert_array_equal(r.trajectory[0, 0, -1], final)
        assert (r.replica_distance[..., 0, :] == 0).all(), "replicas start from the same point"
        floors[p] = np.median(r.noise_floor()[0, :, -1])
        if p == "fp64":  # the noise-free replica 0 is the plain run (to a few ulps: XLA may
            # fuse the vmapped replica program differently)
            np.testing.assert_allclose(r.train_loss, plain.train_loss, rtol=1e-14)
    assert 0 < floors["fp64"] < 1e-12 < floors["fp32"] < 1e-4 < floors["e5m10"]


def test_a_single_optax_transformation_and_an_awkward_step_count():
    """An optax object is one optimizer (not a sequence of two functions); a prime step count
    gets a default evaluation interval that divides it."""
    r = train("quadratic(dim=4, kappa=10)", optax.sgd(0.05), steps=101, progress=False)
    assert r.train_loss.shape == (1, 1, 101)
    assert r.eval_steps[0] == 0 and r.eval_steps[-1] == 101  # the interval divides 101
    assert r.train_loss[0, 0, -1] < r.train_loss[0, 0, 0]


def test_a_blown_up_loss_is_divergence_and_nan_models_have_nan_metrics():
    prob = optimorph.problem("quadratic(dim=4, kappa=1)")
    # lr = 2.5 on curvature 1: the loss grows 2.25x per step, finite for hundreds of steps.
    kw = dict(steps=40, eval_every=10, precision="fp64", progress=False)
    r = train(prob, "sgd(lr=2.5)", **kw)
    first_over = int(np.argmax(r.train_loss[0, 0] > 1e4 * r.train_loss[0, 0, 0])) + 1
    assert np.isfinite(r.train_loss).all() and r.diverged_at[0, 0] == first_over
    assert train(prob, "sgd(lr=2.5)", divergence_factor=None, **kw).diverged_at[0, 0] == -1
    with pytest.raises(TrainingError, match="divergence_factor must be a number > 1"):
        train(prob, "sgd", divergence_factor=0.5, **kw)
    two = optimorph.problem("two-moons(n=64)")
    nan = train(two, "sgd(lr=1e300)", steps=4, eval_every=2, precision="fp64", progress=False)
    # Step 1 sends the weights to ~1e300 (finite); step 2's loss is not finite.
    assert nan.diverged_at[0, 0] == 2
    assert np.isnan(nan.evals["test/accuracy"][0, 0, 1:]).all()
    assert np.isfinite(nan.evals["test/accuracy"][0, 0, 0])


def test_adaptive_chunks_show_progress_and_do_not_change_the_result(monkeypatch, capsys):
    """Chunks adapt to the measured speed (a tiny target here forces many of them), progress
    counts the steps asked for and names the compilation, and chunking never changes a bit."""
    kw = dict(seeds=2, steps=400, batch_size=10, eval_every=100, log_every=4)
    fixed = train("two-moons(n=100)", "sgd(lr=0.1)", chunk_steps=400, progress=False, **kw)
    monkeypatch.setattr(trainer, "PROGRESS_EVERY_S", 1e-6)
    monkeypatch.setattr(trainer, "BLOCK_WORK", 1.0)  # blocks of log_every steps
    chunks = []
    original = trainer._save_checkpoint
    monkeypatch.setattr(trainer, "_save_checkpoint", lambda *a: chunks.append(a[2]) or original(*a))
    adaptive = train("two-moons(n=100)", "sgd(lr=0.1)", progress=True, checkpoint_every=0, **kw)
    assert len(chunks) > 3 and chunks[-1] == 400
    err = capsys.readouterr().err
    assert "train sgd(lr=0.1) 400/400 (100%)" in err and "(compiled and ran in" in err
    np.testing.assert_array_equal(adaptive.train_loss, fixed.train_loss)
    for key in fixed.evals:
        np.testing.assert_array_equal(adaptive.evals[key], fixed.evals[key])
    np.testing.assert_array_equal(adaptive.eval_steps, [0, 100, 200, 300, 400])


def test_timed_checkpoints_wait_for_twenty_times_their_own_cost(monkeypatch, tmp_path):
    """A checkpoint that takes 0.2 s to write is not written again within 4 s, however short
    checkpoint_every is (large checkpoints cost at most ~1/20 of a run); the last chunk is
    always saved, and the run's result does not change."""
    kw = dict(seeds=2, steps=400, batch_size=10, eval_every=100, log_every=4, progress=False)
    fixed = train("two-moons(n=100)", "sgd(lr=0.1)", chunk_steps=400, **kw)
    monkeypatch.setattr(trainer, "PROGRESS_EVERY_S", 1e-6)  # a chunk per 4-step block
    monkeypatch.setattr(trainer, "BLOCK_WORK", 1.0)
    saved, original = [], trainer._save_checkpoint

    def slow_save(*a):
        time.sleep(0.2)
        saved.append((time.perf_counter(), a[2]))
        original(*a)

    monkeypatch.setattr(trainer, "_save_checkpoint", slow_save)
    started = time.perf_counter()
    timed = train("two-moons(n=100)", "sgd(lr=0.1)", checkpoint_dir=tmp_path,
                  checkpoint_every=1e-3, **kw)  # fmt: skip
    wall = time.perf_counter() - started
    assert saved[-1][1] == 400
    gaps = np.diff([t for t, _ in saved[:-1]])  # the last one is saved regardless
    assert (gaps >= 20 * 0.2).all(), gaps
    assert len(saved) <= wall / 4.0 + 2, (len(saved), wall)
    np.testing.assert_array_equal(timed.train_loss, fixed.train_loss)


def test_progress_time_left_excludes_the_warm_up():
    """A first chunk that compiles for 3 s, then 9 steps per 0.1 s: the ETA counts from the
    steady rate, not from the compilation spread over the run."""
    import io

    from optimorph.engine import progress as progress_mod

    clock = iter([0.0, 3.0, 3.1, 3.2])
    real = progress_mod.time.perf_counter
    progress_mod.time.perf_counter = lambda: next(clock)
    try:
        stream = io.StringIO()
        bar = progress_mod.Progress(100, "run", stream=stream, every_s=0.0)
        bar.advance(10, "(compiled)", warmup=True)  # t = 3.0
        bar.advance(9)  # t = 3.1: 90 steps/s
        bar.advance(9)  # t = 3.2
    finally:
        progress_mod.time.perf_counter = real
    lines = stream.getvalue().splitlines()
    assert "left" not in lines[0]  # no rate yet: nothing to project
    assert "90.0 steps/s" in lines[1] and "~1s left" in lines[1]  # 81 steps at 90/s
    assert "~1s left" in lines[2]


def test_final_metrics_only_skips_the_metrics_between_and_changes_no_bit(tmp_path,
                                                                        interrupt_at_checkpoint):
    """Metrics at step 0 and the last step only: everything else the run records (parameters
    at every evaluation, replicas, losses, stalled fractions) and the two metrics it computes
    are bit for bit those of the full run, also across an interrupted and resumed run."""
    prob = optimorph.problem("two-moons(n=100)")
    kw = dict(seeds=2, steps=60, batch_size=10, eval_every=10, chunk_steps=20, replicas=1,
              record_params=True, track_stalled=True, progress=False)  # fmt: skip
    specs = ["adam(lr=1e-2)", "sgd(lr=0.1)"]
    full = train(prob, specs, **kw)
    lean = train(prob, specs, final_metrics_only=True, **kw)
    disarm = interrupt_at_checkpoint(2)
    with pytest.raises(KeyboardInterrupt):
        train(prob, specs, final_metrics_only=True, checkpoint_dir=tmp_path, **kw)
    disarm()
    resumed = train(prob, specs, final_metrics_only=True, checkpoint_dir=tmp_path, **kw)
    assert lean.config["final_metrics_only"] and "final_metrics_only" not in full.config
    for r in (lean, resumed):
        for name in ("trajectory", "replica_distance", "train_loss", "stalled", "diverged_at"):
            np.testing.assert_array_equal(getattr(r, name), getattr(full, name), err_msg=name)
        assert set(r.evals) == set(full.evals) and len(r.eval_steps) == 7
        for key, values in full.evals.items():
            np.testing.assert_array_equal(r.evals[key][..., [0, -1]], values[..., [0, -1]])
            assert np.isnan(r.evals[key][..., 1:-1]).all(), key
            assert np.isfinite(values).all(), key
