"""A cell's identity: the same in every process, the same for two spellings of one run, and
different whenever anything that could change its numbers changes."""

import dataclasses
import json
import os
import subprocess
import sys

from optimorph.sweeps import cells, loads

BASE = """\
problems = ["least-squares(n=40, d=5)"]
seeds = 2
[settings]
steps = 20
[[optimizers]]
spec = "sgd"
lr = [0.1, 0.2]
"""

# Python's own hash() of a string changes with PYTHONHASHSEED; an identity must not.
IN_A_PROCESS = """
import json, sys
from optimorph.sweeps.cells import Cell
print(json.dumps([Cell(**c).id for c in json.load(sys.stdin)]))
"""


def test_identities_agree_across_processes():
    sweep = loads(BASE)
    docs = [{f.name: getattr(c, f.name) for f in dataclasses.fields(c)} for c in sweep.cells]
    here = [c.id for c in sweep.cells]
    assert len(set(here)) == 4
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", IN_A_PROCESS], input=json.dumps(docs),
                              capture_output=True, text=True, env=env, timeout=120,
                              check=True)  # fmt: skip
        assert json.loads(done.stdout) == here


def test_two_spellings_of_one_run_are_one_cell():
    a = loads(BASE)
    explicit = "steps = 20\nbatch_size = 40\neval_every = 1\nlog_every = 1\ndivergence_factor = 1e4"
    b = loads(BASE.replace("[0.1, 0.2]", "[1e-1, 2e-1]").replace("steps = 20", explicit))
    assert [c.id for c in a.cells] == [c.id for c in b.cells]
    assert a.id == b.id


def test_everything_that_can_change_a_bit_changes_the_identity(monkeypatch):
    cell = loads(BASE).cells[0]
    changed = [
        dataclasses.replace(cell, seed=7),
        dataclasses.replace(cell, canonical="sgd(lr=0.10000000000000002)"),
        dataclasses.replace(cell, precision="bf16"),
        dataclasses.replace(cell, x64=False),
        dataclasses.replace(cell, settings={**cell.settings, "steps": 21}),
        dataclasses.replace(cell, problem="least-squares(n=41, d=5, hetero=1.0, noise=0.1)"),
    ]
    ids = {cell.id, *(c.id for c in changed)}
    assert len(ids) == 1 + len(changed)
    assert dataclasses.replace(cell, optimizer="a label").id == cell.id  # the label is no part
    monkeypatch.setattr(cells, "_versions", lambda: (("optimorph", "0.0.0"), ("jax", "0.0.0")))
    assert dataclasses.replace(cell).id not in ids  # a new version: new cells
