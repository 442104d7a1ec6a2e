"""Which weight dtype an engine runs in: `dtype: auto | float32 | bfloat16` of an arm.

bf16 weights only pay off where the hardware has bf16 matmul: AVX512-BF16 or AMX on x86 CPUs (read from
/proc/cpuinfo), or a CUDA GPU that supports bf16. Elsewhere bf16 matmuls are emulated and slower than
fp32, so `auto` falls back to fp32 and logs why. The residual stream, norms, attention, KV cache and
LoRA always stay in fp32 (see extes.models.fastllama); only the base weights change dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Precision:
    name: str  # "float32" | "bfloat16"
    reason: str

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.name)


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[bool, str]:
    """(supported, reason) for bf16 matmuls on this CPU."""
    flags = cpu_flags(cpuinfo)
    found = [f for f in CPU_BF16_FLAGS if f in flags]
    if found:
        return True, f"CPU has {' and '.join(found)}"
    if not flags:
        return False, f"cannot read CPU flags from {cpuinfo}"
    return False, "CPU has neither avx512_bf16 nor amx_bf16 (bf16 matmuls would be emulated)"


def resolve_precision(requested: str, device: str = "cpu", cpuinfo: str | Path = "/proc/cpuinfo") -> Precision:
    """The dtype an engine uses for an arm's `dtype` option on `device`."""
    if requested not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"dtype {requested!r} must be one of auto, float32, bfloat16")
    if requested != "auto":
        return Precision(requested, "set in the arm")
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return Precision("bfloat16", "CUDA device supports bf16")
        return Precision("float32", "CUDA device without bf16 support")
    ok, why = cpu_bf16(cpuinfo)
    if ok:
        return Precision("bfloat16", why)
    log.info("dtype auto -> float32: %s", why)
    return Precision("float32", why)
