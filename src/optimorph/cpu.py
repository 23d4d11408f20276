"""The CPU a run computes on, and the one instruction-set choice optimorph makes for it.

XLA compiles its CPU kernels for the widest vector instructions the processor has. On an x86
CPU with AVX-512 it treats float16 as a native type and fuses ``a * b + c`` into one rounding;
compiling for AVX2 it computes each float16 operation in float32 and rounds after each one, as
NumPy, PyTorch eager and optimorph's emulated ``e5m10`` do. The same fp16 run was therefore a
different computation on two machines (proposal16's medium MLP: 7 and 5 classes at fp16).
:func:`per_operation_fp16` caps XLA at AVX2 on such CPUs; float32 and float64 results did not
change under the cap (the proposal16 medium suite's 84 fp32 and fp64 d/floor values and the
engine benchmark's runs, bit for bit), and the speed moved by -6% to +3%. The command line
applies it before JAX starts; ``OPTIMORPH_CPU_ISA=native`` keeps XLA's own choice. Importing
JAX is not needed here: the flag must be set before JAX starts its backends.
"""

from __future__ import annotations

import os
import platform

__all__ = ["cpu", "per_operation_fp16", "FP16_CAP"]

FP16_CAP = "--xla_cpu_max_isa=AVX2"

# The widest vector extension named first wins (/proc/cpuinfo's flag -> its name).
_ISA_FLAGS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2"),
              ("asimd", "NEON"))  # fmt: skip


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


def per_operation_fp16(environ: dict | None = None, isa: str | None = None) -> bool:
    """Cap XLA at AVX2 (``XLA_FLAGS``) on an AVX-512 CPU, so that float16 rounds after each
    operation as on every other x86 CPU; True when the cap was added. Nothing changes when
    ``XLA_FLAGS`` already names an instruction set, when ``OPTIMORPH_CPU_ISA=native``, on
    another CPU, or once JAX has started its backends in this process (XLA reads its flags
    then, and a run's record of ``XLA_FLAGS`` must say what was in force). ``environ``: a
    mapping to edit instead of the process's environment (for tests).

    >>> env = {}
    >>> per_operation_fp16(env, "AVX-512"), env
    (True, {'XLA_FLAGS': '--xla_cpu_max_isa=AVX2'})
    >>> per_operation_fp16(env, "AVX-512"), per_operation_fp16({}, "AVX2")
    (False, False)
    >>> per_operation_fp16({"OPTIMORPH_CPU_ISA": "native"}, "AVX-512")
    False
    """
    if environ is None:
        if _jax_started():  # too late: the flag would be recorded but not in force
            return False
        environ = os.environ
    flags = environ.get("XLA_FLAGS", "")
    if environ.get("OPTIMORPH_CPU_ISA", "").lower() == "native" or "xla_cpu_max_isa" in flags:
        return False
    if (isa or cpu()["vector_isa"]) != "AVX-512":
        return False
    environ["XLA_FLAGS"] = f"{flags} {FP16_CAP}".strip()
    return True


def _jax_started() -> bool:
    import sys

    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # another JAX: assume it has not started
        return False
