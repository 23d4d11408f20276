"""Lanes split over several devices: every device runs the single-device program on its share.

A program's lanes (configurations x seeds) are independent, so they can run on several devices
with no communication. The obvious way, one program partitioned by XLA over a lane-sharded
mesh (``jit`` with shardings, or ``shard_map``), compiles the whole program anew, and XLA's
partitioner fuses it differently: Adam's bias-correction scalars, a fusion of their own on one
device, were fused into every parameter update, so the last bits of a split run differed from
the same run on one device. Here each device runs the *same* single-device program on its
lanes, so a lane's bits are those of an unsplit run with as many lanes as each device holds.
The price is one compilation per device; the devices compile at the same time, one thread each.

>>> split = LaneSplit(jax.local_devices()[:1])
>>> double = split.program(jax.jit(jax.vmap(lambda x, y: 2 * x + y, in_axes=(0, None))), (0, None))
>>> double(jnp.arange(3.0), 1.0).tolist()
[1.0, 3.0, 5.0]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LaneSplit"]


class LaneSplit:
    """Lanes split evenly over ``devices``, in order: device i holds the i-th share. A lane
    count that does not divide is first padded (:meth:`padded`) with repeats of the last lane,
    whose results the caller drops: each device then holds as many lanes as the first."""

    def __init__(self, devices: Sequence):
        self.devices = list(devices)
        mesh = jax.sharding.Mesh(np.array(self.devices), ("lanes",))
        spec = jax.sharding.PartitionSpec
        self.lanes = jax.sharding.NamedSharding(mesh, spec("lanes"))  # leading axis split
        self.replicated = jax.sharding.NamedSharding(mesh, spec())  # a copy on every device

    def program(self, program: Callable, in_axes: Sequence[int | None]) -> Callable:
        """``program`` (a jitted, lane-vmapped function: every output has the lanes first) run
        by each device on its lanes. ``in_axes`` says per argument whether it has the lanes
        first (0) or is the same for every lane (None). Returns lane-split arrays."""

        def run(*args):
            shares: list[list] = [[] for _ in self.devices]
            for arg, axis in zip(args, in_axes, strict=True):
                placed = jax.device_put(arg, self.replicated if axis is None else self.lanes)
                for share, part in zip(shares, self._parts(placed), strict=True):
                    share.append(part)
            outs = list(_pool(len(self.devices)).map(lambda share: program(*share), shares))
            return jax.tree.map(self._joined, *outs)

        return run

    def padded(self, tree, lanes: int):
        """``tree`` (lanes first) with its last lane repeated up to a multiple of the devices."""
        extra = -lanes % len(self.devices)
        if not extra:
            return tree
        return jax.tree.map(
            lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], extra, axis=0)]), tree
        )

    def _parts(self, tree) -> list:
        """``tree`` split into one tree per device, each holding that device's shard."""
        flat, treedef = jax.tree.flatten(tree)
        by_device = [{s.device: s.data for s in leaf.addressable_shards} for leaf in flat]
        return [treedef.unflatten([d[dev] for d in by_device]) for dev in self.devices]

    def _joined(self, *parts) -> jax.Array:
        shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
        return jax.make_array_from_single_device_arrays(shape, self.lanes, list(parts))


@functools.cache
def _pool(n: int) -> ThreadPoolExecutor:
    # Threads, not a loop: a first call compiles, and XLA compiles outside the GIL, so the
    # devices' compilations overlap; later calls only dispatch.
    return ThreadPoolExecutor(n, thread_name_prefix="optimorph-lanes")
