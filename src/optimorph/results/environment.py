"""What a run's numbers depend on besides its settings: versions, the device and the CPU.

XLA compiles its CPU kernels for the vector instructions the processor has and the flags allow
(:mod:`optimorph.cpu`: fp16 on AVX-512 was another computation than on AVX2), so a run records
its CPU's instruction set and ``XLA_FLAGS``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
from typing import Any

import jax

from optimorph.cpu import cpu


def environment() -> dict[str, Any]:
    """Versions, JAX backend and devices, the CPU and its vector instructions, XLA's flags, host
    and UTC time."""
    processor = cpu()
    return {
        "python": platform.python_version(),
        **{pkg: _version(pkg) for pkg in ("jax", "jaxlib", "optax", "numpy")},
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "cpu": processor["model"],
        "vector_isa": processor["vector_isa"],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "hostname": socket.gethostname(),
        "written_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
