"""Deprecated import path, kept for one release: use udaseg.runtime.hardware."""

from udaseg.runtime.hardware import (
    ISA_WITHOUT_BF16,
    NATIVE_BF16_FLAGS,
    CPUInfo,
    bf16_warning,
    cpu_info,
)

__all__ = ["ISA_WITHOUT_BF16", "NATIVE_BF16_FLAGS", "bf16_warning", "cpu_info", "CPUInfo"]
