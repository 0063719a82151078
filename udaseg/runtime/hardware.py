"""What the CPU can do for a run's precision: its model and whether it computes bf16 natively.

bf16 autocast pays on a CPU with native bf16 instructions (x86 AVX512-BF16 or AMX, Arm's BF16
extension), where oneDNN runs bf16 convolutions about twice as fast as fp32. Without them
(an AVX2-only x86 CPU) the bf16 kernels are emulated and an iteration is many times slower
than in fp32; docs/speed.md has the measurements.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

#: CPU flags (Linux /proc/cpuinfo names) of native bf16 arithmetic.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
#: Instruction sets without bf16 that oneDNN (`ONEDNN_MAX_CPU_ISA`) and ATen
#: (`ATEN_CPU_CAPABILITY`) can be limited to: PyTorch then computes as on such a CPU.
ISA_WITHOUT_BF16 = {"ONEDNN_MAX_CPU_ISA": ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE",
                                           "AVX512_CORE_VNNI"),
                    "ATEN_CPU_CAPABILITY": ("default", "avx2")}


@dataclass(frozen=True)
class CPUInfo:
    """The CPU's model name and the native-bf16 flags it has (empty: none)."""

    model: str
    bf16_flags: tuple[str, ...]
    #: `VARIABLE=value` settings that keep PyTorch's kernels from using the bf16 instructions.
    limits: tuple[str, ...] = ()

    @property
    def native_bf16(self) -> bool:
        return bool(self.bf16_flags) and not self.limits

    def describe(self) -> str:
        """One line for tables and warnings, e.g. "AMD EPYC, native bf16 (avx512_bf16)"."""
        if self.bf16_flags and self.limits:
            support = (f"bf16 instructions ({', '.join(self.bf16_flags)}) not used: kernels "
                       f"limited by {' '.join(self.limits)}")
        elif self.bf16_flags:
            support = f"native bf16 ({', '.join(self.bf16_flags)})"
        else:
            support = "no native bf16 (no avx512_bf16, no AMX)"
        return f"{self.model}, {support}"


@cache
def cpu_info() -> CPUInfo:
    """This machine's CPU, read from /proc/cpuinfo where there is one, else asked of PyTorch."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware") and value.strip():
                model = value.strip()
            elif key in ("flags", "features"):
                flags.update(value.split())
    elif getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        flags.add("avx512_bf16")
    limits = tuple(f"{variable}={os.environ[variable]}"
                   for variable, values in ISA_WITHOUT_BF16.items()
                   if os.environ.get(variable, "").strip().upper() in map(str.upper, values))
    return CPUInfo(model, tuple(flag for flag in NATIVE_BF16_FLAGS if flag in flags), limits)


def bf16_warning(precision: str, on_cpu: bool) -> str | None:
    """A one-line warning when a run asks for bf16 on a CPU without native bf16 (and fp16
    mixed precision, which Lightning runs as bf16 on a CPU); None when there is nothing to say."""
    runs_as_bf16 = "bf16" in str(precision) or str(precision) in ("16-mixed", "16")
    if not on_cpu or not runs_as_bf16:
        return None
    info = cpu_info()
    if info.native_bf16:
        return None
    return (f"trainer.precision {precision} on a CPU without native bf16 ({info.describe()}): "
            "bf16 is emulated there and an iteration runs many times slower than in fp32 "
            "(about 20x measured); use --trainer.precision 32-true on this machine")
