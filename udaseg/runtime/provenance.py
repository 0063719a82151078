"""Where a result came from: the command, the code's commit, the seed and the machine. Written
into every result file (`<stage>_metrics.json`, key `provenance`) and a W&B run's config, so a
number in a table can be traced to the run that produced it and to the machine type whose
kernels rounded it (per-seed values differ between CPU types; means over seeds do not)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

import torch

from udaseg.runtime.hardware import cpu_info

PACKAGE = Path(__file__).resolve().parents[1]


def git_state(folder: Path = PACKAGE) -> dict[str, Optional[object]]:
    """{"git_commit": HEAD of the checkout `folder` is in, "git_dirty": uncommitted changes};
    None for both outside a git checkout (an installed wheel)."""
    def git(*arguments: str) -> Optional[str]:
        try:
            result = subprocess.run(["git", "-C", str(folder), *arguments], capture_output=True,
                                    text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def machine() -> dict[str, object]:
    """The CPU model, its native bf16 support, its logical cores and the threads PyTorch uses;
    the GPU model where the run can see one."""
    info = cpu_info()
    described: dict[str, object] = {
        "cpu": info.model, "cpu_native_bf16": info.native_bf16,
        "cpu_kernel_limits": list(info.limits),
        "cpu_cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        described["gpu"] = torch.cuda.get_device_name(0)
    return described


def provenance(command_line: Optional[str], seed: Optional[int]) -> dict[str, object]:
    """Everything above plus the command line and the seed, as one JSON-ready dict."""
    return {"command_line": command_line, "seed": seed, **git_state(), **machine()}
