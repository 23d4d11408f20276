"""Lanes split over several devices (``train(devices=N)``, ``optimorph train --devices N``).

JAX fixes its device count when it starts, so the two-device runs happen in a child process
whose XLA_FLAGS ask for two CPU devices (the command line sets that flag itself).
"""

import json
import os
import subprocess
import sys

import pytest

import optimorph
from optimorph.engine import TrainingError

TWO_DEVICES = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import optimorph

assert len(jax.devices()) == 2
kw = dict(steps=40, batch_size=32, eval_every=20, progress=False)


def run(seeds, **more):
    r = optimorph.train(optimorph.problem("two-moons(n=200)"), "adam(lr=1e-2)", seeds=seeds,
                        **kw, **more)
    return np.concatenate([np.asarray(x).reshape(len(r.seeds), -1)
                           for x in jax.tree.leaves(r.final_params)], axis=1), r


split, r = run([0, 1, 2, 3], devices=2)
again, _ = run([0, 1, 2, 3], devices=2)
other, _ = run([0, 1, 7, 8], devices=2)  # lanes 2, 3 on the second device change
single, _ = run([0, 1, 2, 3])
halves = np.concatenate([run([0, 1])[0], run([2, 3])[0]])  # as many lanes as each device holds
# Replicas, step probes and the recorded trajectory follow the same rule.
from optimorph.probes.trajectory import make_probes

more = dict(replicas=1, record_params=True, probes=make_probes("gap,corr"))
_, full = run([0, 1, 2, 3], devices=2, **more)
parts = [run(s, **more)[1] for s in ([0, 1], [2, 3])]
seeds = lambda f: np.concatenate([f(p) for p in parts], axis=1)  # noqa: E731
extras = (
    np.array_equal(full.replica_distance, seeds(lambda p: p.replica_distance))
    and np.array_equal(full.trajectory, seeds(lambda p: p.trajectory))
    and all(np.array_equal(full.probes[k], seeds(lambda p: p.probes[k]), equal_nan=True)
            for k in full.probes)
)
print(json.dumps({
    "repeat": bool(np.array_equal(split, again)),
    "independent": bool(np.array_equal(split[:2], other[:2])),
    "others_changed": bool(not np.array_equal(split[2:], other[2:])),
    "rel_to_single": float(np.linalg.norm(split - single) / np.linalg.norm(single)),
    "same_as_halves": bool(np.array_equal(split, halves)),
    "extras_as_halves": bool(extras),
    "config_devices": r.config.get("devices"),
    "evals_finite": bool(np.isfinite(r.evals["test/loss"]).all()),
}))
"""


def _child_env() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    return env


def test_lanes_split_over_two_devices_repeat_and_do_not_see_each_other():
    out = subprocess.run([sys.executable, "-c", TWO_DEVICES], env=_child_env(),
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["repeat"], "the same split run twice gave different bits"
    assert got["independent"], "a lane changed when the other device's lanes changed"
    assert got["others_changed"]  # the check above compared something
    # Each device runs the one-device program on its two lanes: every bit of a one-device run
    # of two lanes (XLA's partitioner, given the whole program, fused Adam's update otherwise).
    assert got["same_as_halves"], "a split lane differs from the one-device run of its share"
    assert got["extras_as_halves"], "replicas, probes or trajectory of a split run differ"
    # Four lanes on one device may differ from two in the last bits (docs/sweeps.md), not more.
    assert got["rel_to_single"] < 1e-4
    assert got["config_devices"] == 2 and got["evals_finite"]


def test_the_command_line_makes_the_devices_it_is_asked_for(tmp_path):
    cmd = [sys.executable, "-m", "optimorph.cli", "train", "--problem", "two-moons(n=100)",
           "--optimizer", "sgd(lr=0.1)", "--seeds", "2", "--steps", "20", "--devices", "2",
           "--quiet", "--out", str(tmp_path / "run")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["config"]["devices"] == 2
    assert written["environment"]["devices"] == ["cpu", "cpu"]


@pytest.mark.parametrize(
    "devices, seeds, message",
    [
        (4, 4, "JAX sees 1 .*--xla_force_host_platform_device_count=4"),
        (0, 2, "devices must be a whole number >= 1"),
        (True, 2, "devices must be a whole number >= 1"),
        (2.0, 2, "devices must be a whole number >= 1"),
    ],
)
def test_bad_device_counts_say_what_to_do(devices, seeds, message):
    with pytest.raises(TrainingError, match=message):
        optimorph.train("quadratic(dim=2)", "sgd(lr=0.1)", seeds=seeds, steps=2,
                        progress=False, devices=devices)  # fmt: skip


UNEVEN = r"""
import json
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import optimorph

kw = dict(steps=40, batch_size=32, eval_every=20, progress=False)
moons = optimorph.problem("two-moons(n=200)")


def flat(r):
    return np.concatenate([np.asarray(x).reshape(len(r.seeds), -1)
                           for x in jax.tree.leaves(r.final_params)], axis=1)


split = optimorph.train(moons, "adam(lr=1e-2)", seeds=[0, 1, 2], devices=2, **kw)
first = optimorph.train(moons, "adam(lr=1e-2)", seeds=[0, 1], **kw)
last = optimorph.train(moons, "adam(lr=1e-2)", seeds=[2, 3], **kw)  # 2 lanes, as device 1
grid = optimorph.train(moons, "sgd(lr=[0.1, 0.2, 0.3])", seeds=1, devices=2, visit_every=20,
                       **kw)  # fmt: skip
alone = optimorph.train(moons, "sgd(lr=0.3)", seeds=[0, 1], visit_every=20, **kw)
print(json.dumps({
    "shapes": [list(split.train_loss.shape), list(split.evals["test/loss"].shape),
               list(split.diverged_at.shape), list(grid.train_loss.shape)],
    "first": bool(np.array_equal(flat(split)[:2], flat(first))),
    "last": bool(np.array_equal(flat(split)[2], flat(last)[0])),
    "loss": bool(np.array_equal(split.train_loss[:, 2], last.train_loss[:, 0])),
    "grid_finite": bool(np.isfinite(grid.train_loss).all()),
    # device 1 holds lr=0.3 and its repeat: its visits are a one-device 2-lane run's
    "visits": [len(grid.visited), list(map(int, grid.visit_steps))],
    "visited": all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                   zip(jax.tree.leaves(grid.visited[2]), jax.tree.leaves(alone.visited[0]))),
}))
"""


def test_lanes_that_do_not_split_evenly_run_padded_with_the_same_bits():
    # 3 lanes on 2 devices: the last lane is repeated on device 1 and its copy dropped, so
    # each device runs 2 lanes and each lane has the bits of a one-device run of 2 lanes.
    out = subprocess.run([sys.executable, "-c", UNEVEN], env=_child_env(),
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["shapes"] == [[1, 3, 40], [1, 3, 3], [1, 3], [3, 1, 40]], got
    assert got["first"] and got["last"] and got["loss"] and got["grid_finite"], got
    assert got["visits"] == [3, [0, 20]] and got["visited"], got


INTERRUPTED = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import optimorph
from optimorph.engine import trainer

folder = sys.argv[1]
kw = dict(seeds=4, steps=60, batch_size=32, eval_every=20, chunk_steps=20, progress=False,
          devices=2)


def run(**more):
    r = optimorph.train(optimorph.problem("two-moons(n=200)"), "adam(lr=1e-2)", **kw, **more)
    return r, [np.asarray(x) for x in jax.tree.leaves(r.final_params)]


original, saved, loaded = trainer._save_checkpoint, [], []


def save_then_interrupt(*args):  # the first checkpoint is written, then a Ctrl-C
    original(*args)
    saved.append(1)
    if len(saved) == 1:
        raise KeyboardInterrupt


trainer._save_checkpoint = save_then_interrupt
try:
    run(checkpoint_dir=folder)
    raise SystemExit("the run was not interrupted")
except KeyboardInterrupt:
    pass
trainer._save_checkpoint = original
load = trainer._load_checkpoint
trainer._load_checkpoint = lambda *a: loaded.append(load(*a)) or loaded[-1]
resumed, a = run(checkpoint_dir=folder)
whole, b = run()
print(json.dumps({
    "resumed": loaded[0] is not None and int(loaded[0][1]) == 20,
    "params": all(np.array_equal(x, y) for x, y in zip(a, b)),
    "evals": all(np.array_equal(resumed.evals[k], whole.evals[k]) for k in whole.evals),
    "loss": bool(np.array_equal(resumed.train_loss, whole.train_loss)),
}))
"""


@pytest.mark.parametrize("seeds", [4, 3])  # 3: padded to 4 lanes, the checkpoint holds them
def test_a_split_run_interrupted_after_a_checkpoint_resumes_to_the_same_bits(tmp_path, seeds):
    code = INTERRUPTED.replace("kw = dict(seeds=4,", f"kw = dict(seeds={seeds},")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=_child_env(),
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"resumed": True, "params": True, "evals": True, "loss": True}, got
