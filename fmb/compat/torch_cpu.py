"""torch's private CPU probes that fmb relies on (see fmb/compat/__init__.py)."""
from __future__ import annotations

import torch

# torch.cpu reports native bf16 only through private probes (torch 2.x).
_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def cpu_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 arithmetic in hardware rather than emulated through fp32."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in _BF16_PROBES)
