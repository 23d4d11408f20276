"""Where a run's time went: phases, and the compilation inside them from JAX's own events."""

import jax
import jax.numpy as jnp

from optimorph.timing import Phases, compile_seconds


def test_phases_split_wall_time_and_count_compilation_where_it_happened():
    phases = Phases()
    before = compile_seconds()
    with phases("compile and run"):
        f = jax.jit(lambda x: jnp.sin(x) * 3.0 + x.sum())  # a program this process has not seen
        f(jnp.arange(17.0)).block_until_ready()
    with phases("run again"):
        f(jnp.arange(17.0)).block_until_ready()  # cached: nothing compiled
    got = phases.as_dict()
    assert compile_seconds() > before
    assert got["compile and run"]["compile_s"] > 0
    assert got["run again"]["compile_s"] == 0
    assert got["compile and run"]["wall_s"] >= got["compile and run"]["compile_s"]
    # phases measured elsewhere (a worker process) add up
    total = Phases()
    total.add(got)
    total.add(got)
    assert total.wall["run again"] == 2 * got["run again"]["wall_s"]
    assert "compile and run" in total.summary(1.0) and total.summary(1.0).endswith("1 s wall")
