"""Precision as an input: number formats, rounding, block scaling, and per-role policies.

The package's parts, one file each:

* :mod:`~optimorph.precision.formats`: :class:`Format`, the native formats (fp64, fp32, bf16,
  fp16) and emulated ``eXmY`` formats, and :func:`parse_format`, which reads every format name;
* :mod:`~optimorph.precision.rounding`: round to nearest (ties to even) and stochastic rounding
  with explicit keys, the exact conversions XLA on CPU needs, the traced-width rounding;
* :mod:`~optimorph.precision.block`: block-scaled formats: OCP MX (``mxfp8e4m3`` ... ``mxfp4``,
  ``mxint8``), per-tensor scaled FP8 (``fp8e4m3``, ``fp8e5m2``), blockwise absmax code maps
  (``bnb8``, ``int8``, ``ao4``);
* :mod:`~optimorph.precision.products`: matrix products on quantized operands, blocked along
  their reduction dimension (a policy's ``forward`` and ``backward`` roles; MXFP4 training);
* :mod:`~optimorph.precision.policies`: :class:`Precision`, a format per role of a training step
  built from a spec string with :func:`precision`, e.g. ``precision("bf16,nu=fp32")`` or
  ``precision("fp32,m=mxfp8e4m3,v=bnb8(block=256)")``; :func:`state_bytes_per_param`.

>>> str(precision("fp32,m=mxfp8e4m3,v=bnb8(block=256)"))
'fp32,m=mxfp8e4m3,v=bnb8'
"""

from optimorph.precision.block import (
    BlockFormat,
    CodeMapFormat,
    ElementFormat,
    MXFormat,
    ScaledFP8,
    dynamic_map,
    parse_block_format,
)
from optimorph.precision.formats import BF16, FP16, FP32, FP64, Format, parse_format, require_x64
from optimorph.precision.policies import (
    Precision,
    PrecisionWarning,
    TracedBits,
    precision,
    state_bytes_per_param,
    storage_bits,
)
from optimorph.precision.rounding import round_in, round_to_bits, round_to_grid, stalled_fraction

__all__ = [
    "BF16",
    "FP16",
    "FP32",
    "FP64",
    "BlockFormat",
    "CodeMapFormat",
    "ElementFormat",
    "Format",
    "MXFormat",
    "Precision",
    "PrecisionWarning",
    "ScaledFP8",
    "TracedBits",
    "dynamic_map",
    "parse_block_format",
    "parse_format",
    "precision",
    "require_x64",
    "round_in",
    "round_to_bits",
    "round_to_grid",
    "stalled_fraction",
    "state_bytes_per_param",
    "storage_bits",
]
