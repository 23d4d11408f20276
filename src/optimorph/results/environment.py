"""What a run's numbers depend on besides its settings: versions, the device and the CPU.

The CPU matters even for a CPU-independent program: XLA compiles its kernels for the widest
vector instructions the processor has (AVX-512 against AVX2, say), and the order of a product's
or a reduction's additions follows the vector width, so a float32 run's last bits, and a verdict
near its threshold, can differ from one machine to another (docs/reference.md, section 3).
``XLA_FLAGS=--xla_cpu_max_isa=AVX2`` pins the instruction set XLA compiles for.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
from typing import Any

import jax

# The widest vector extension named first wins (/proc/cpuinfo's flag -> its name).
_ISA_FLAGS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2"),
              ("asimd", "NEON"))  # fmt: skip


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


def cpu(cpuinfo: str | None = None) -> dict[str, str]:
    """The processor's model and its widest vector instruction set, from ``/proc/cpuinfo``
    (``cpuinfo``: its text, for tests) or, elsewhere, what :mod:`platform` says.

    >>> cpu("model name\\t: Some Xeon\\nflags\\t\\t: fpu sse4_2 avx avx2 fma\\n")
    {'model': 'Some Xeon', 'vector_isa': 'AVX2'}
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return {"model": platform.processor() or platform.machine(), "vector_isa": "unknown"}
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    isa = next((name for flag, name in _ISA_FLAGS if flag in flags), "unknown")
    model = fields.get("model name") or platform.processor() or platform.machine()
    return {"model": model, "vector_isa": isa}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
